package postgres

import (
	"fmt"
	"testing"
)

// TestReadsPlan: what a queue's reads remember decides which ends move its
// watermark and which need finished rows. Each step is a read (Pending's
// result), a plan for ended Seqs, or a committed update.
func TestReadsPlan(t *testing.T) {
	type read struct {
		wm, last, after int64
		seqs            []int64
		full            bool
	}
	tests := []struct {
		name    string
		reads   []read
		ended   []int64
		wantWM  int64
		wantRow []int64
	}{
		{
			name:   "nothing read: every end is a row",
			ended:  []int64{5, 6},
			wantWM: 0, wantRow: []int64{5, 6},
		},
		{
			name:   "the first jobs end in order: the watermark moves, no rows",
			reads:  []read{{wm: 0, last: 9, after: 0, seqs: []int64{2, 4, 6}, full: true}},
			ended:  []int64{2, 4},
			wantWM: 6,
		},
		{
			name:   "all read jobs end, page not full: the watermark passes the counter",
			reads:  []read{{wm: 0, last: 9, after: 0, seqs: []int64{2, 4, 6}}},
			ended:  []int64{2, 4, 6},
			wantWM: 10,
		},
		{
			name:   "all read jobs end, page full: nothing is known past the last one",
			reads:  []read{{wm: 0, last: 9, after: 0, seqs: []int64{2, 4, 6}, full: true}},
			ended:  []int64{2, 4, 6},
			wantWM: 7,
		},
		{
			name:   "out of order: a row for each job after the first still pending",
			reads:  []read{{wm: 0, last: 9, after: 0, seqs: []int64{2, 4, 6, 8}}},
			ended:  []int64{2, 6, 8},
			wantWM: 4, wantRow: []int64{6, 8},
		},
		{
			name:   "first job still pending: the watermark moves up to it only",
			reads:  []read{{wm: 0, last: 9, after: 0, seqs: []int64{2, 4, 6}}},
			ended:  []int64{4},
			wantWM: 2, wantRow: []int64{4},
		},
		{
			name: "pages read in a row extend what is known",
			reads: []read{
				{wm: 0, last: 20, after: 0, seqs: []int64{2, 4}, full: true},
				{wm: 0, last: 20, after: 4, seqs: []int64{7, 9}, full: true},
			},
			ended:  []int64{2, 4, 7},
			wantWM: 9,
		},
		{
			name: "a read past a gap teaches nothing",
			reads: []read{
				{wm: 0, last: 20, after: 0, seqs: []int64{2, 4}, full: true},
				{wm: 0, last: 20, after: 7, seqs: []int64{9, 11}, full: true},
			},
			ended:  []int64{2, 4, 9},
			wantWM: 5, wantRow: []int64{9},
		},
		{
			name:   "ends beyond what was read get rows",
			reads:  []read{{wm: 0, last: 20, after: 0, seqs: []int64{2, 4}, full: true}},
			ended:  []int64{2, 4, 30},
			wantWM: 5, wantRow: []int64{30},
		},
		{
			name:   "ends below the watermark need nothing",
			reads:  []read{{wm: 10, last: 20, after: 0, seqs: []int64{12}, full: true}},
			ended:  []int64{3, 12},
			wantWM: 13,
		},
		{
			name: "a watermark moved elsewhere is taken up",
			reads: []read{
				{wm: 0, last: 20, after: 0, seqs: []int64{2, 4}, full: true},
				{wm: 6, last: 30, after: 0, seqs: []int64{8}},
			},
			ended:  []int64{8},
			wantWM: 31,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReads()
			for _, rd := range tt.reads {
				r.read(1, r.generation(1), rd.wm, rd.last, rd.after, rd.seqs, rd.full)
			}
			wm, rows := r.plan(1, tt.ended)
			if wm != tt.wantWM || fmt.Sprint(rows) != fmt.Sprint(tt.wantRow) && !(len(rows) == 0 && len(tt.wantRow) == 0) {
				t.Errorf("plan(%v) = watermark %d, rows %v; want %d, %v", tt.ended, wm, rows, tt.wantWM, tt.wantRow)
			}
		})
	}
}

// TestReadsStaleRead: a read whose snapshot may predate an update of the
// same queue is not remembered, so an ended job cannot come back as open
// (which would hold the watermark behind it for good).
func TestReadsStaleRead(t *testing.T) {
	r := newReads()
	r.read(1, r.generation(1), 0, 9, 0, []int64{2, 4}, true)
	gen := r.generation(1) // a Pending call starts...
	wm, rows := r.plan(1, []int64{2, 4, 6})
	r.applied(1, []int64{2, 4, 6}, wm) // ...an update ends 6 meanwhile...
	if wm != 5 || fmt.Sprint(rows) != "[6]" {
		t.Fatalf("plan = %d, %v; want 5, [6]", wm, rows)
	}
	r.read(1, gen, 0, 9, 4, []int64{6, 8}, false) // ...and its snapshot still had 6
	if wm, rows := r.plan(1, []int64{8}); wm != 0 || fmt.Sprint(rows) != "[8]" {
		t.Errorf("after a stale read, plan([8]) = %d, %v; want no move and a row: nothing past 4 is known", wm, rows)
	}
	// A fresh read picks up from there.
	r.read(1, r.generation(1), 5, 9, 4, []int64{8}, false)
	if wm, rows := r.plan(1, []int64{8}); wm != 10 || len(rows) != 0 {
		t.Errorf("after a fresh read, plan([8]) = %d, %v; want 10 and no rows", wm, rows)
	}
}
