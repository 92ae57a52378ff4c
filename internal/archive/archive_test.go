package archive

import (
	"testing"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

func TestWriteScan(t *testing.T) {
	w := NewWriter(t.TempDir())
	q := jobstore.Queue{Source: "web/app", Destination: "hook"} // a name that needs escaping
	t0 := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	rec := func(id string, received time.Time) Record {
		return Record{Source: q.Source, Destination: q.Destination, MessageID: id, ReceivedAt: received,
			ArchivedAt: received.Add(4 * time.Hour), LastError: "HTTP 503", Event: []byte(`{"messageId":"` + id + `"}`)}
	}
	// Two calls into the same hour's file (two gzip members) and one into the next.
	if err := w.Write(q, t0.Add(4*time.Hour), []Record{rec("a", t0), rec("b", t0.Add(time.Minute))}); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(q, t0.Add(4*time.Hour+time.Minute), []Record{rec("c", t0.Add(20*time.Minute))}); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(q, t0.Add(5*time.Hour), []Record{rec("d", t0.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		from, to time.Time
		want     string
	}{
		{t0, t0.Add(2 * time.Hour), "abcd"},
		{t0.Add(time.Minute), t0.Add(time.Hour), "bc"},
		{t0.Add(time.Hour), t0.Add(2 * time.Hour), "d"},
		{t0.Add(-time.Hour), t0, ""},
	}
	for _, tt := range tests {
		recs, err := w.Scan(q, tt.from, tt.to)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		for _, r := range recs {
			got += r.MessageID
		}
		if got != tt.want {
			t.Errorf("Scan(%v, %v) = %q, want %q", tt.from, tt.to, got, tt.want)
		}
	}
}
