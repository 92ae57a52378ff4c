package browser_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/test/fanouttest"
)

// TestMobile sends what analytics-kotlin and analytics-swift send, as
// their public source builds it (HTTPClient.kt, HTTPClient.swift, their
// storage's batch files): first the settings request of cdnHost, then a
// batch to apiHost's /b. The libraries add https:// to both hosts; this
// test speaks plain http to the same paths.
//
//	analytics-kotlin  POST /v1/b, Content-Type text/plain, Content-Encoding
//	                  gzip, chunked, User-Agent analytics-kotlin/<version>,
//	                  the write key in the body; userId "" until identify
//	analytics-swift   POST /v1/b, Content-Type application/json;
//	                  charset=utf-8, Accept-Encoding gzip, User-Agent
//	                  analytics-ios/<version>, the write key in the body
func TestMobile(t *testing.T) {
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{KeepBodies: true})
	srv := fanouttest.Start(t, bin, fanouttest.Config{YAML: fmt.Sprintf(`public_url: https://t.example.com
sources:
  - name: android
    write_key: wk_android
  - name: ios
    write_key: wk_ios
destinations:
  - name: hook
    type: webhook
    sources: [android, ios]
    settings:
      url: %q
`, recv.URL)})

	sent := time.Now().UTC().Add(-time.Hour) // the phone's clock is an hour behind
	ts := sent.Add(-30 * time.Second).Format("2006-01-02T15:04:05.000Z")
	sentAt := sent.Format("2006-01-02T15:04:05.000Z")

	tests := []struct {
		name, key, library string
		headers            map[string]string
		gzip, chunked      bool
		event              string
	}{
		{
			name: "analytics-kotlin", key: "wk_android", library: "analytics-kotlin",
			headers: map[string]string{"Content-Type": "text/plain", "Content-Encoding": "gzip", "User-Agent": "analytics-kotlin/1.19.1"},
			gzip:    true, chunked: true,
			event: `{"properties":{"sku":"A-1","price":9.99},"event":"Product Viewed","type":"track",` +
				`"messageId":"6a2a6b1e-kotlin-0001","anonymousId":"2b0b3b6c-anon","integrations":{},` +
				`"context":{"app":{"name":"Shop","version":"3.2.0","namespace":"com.example.shop","build":"320"},` +
				`"device":{"id":"d-1","manufacturer":"Google","model":"Pixel 8","name":"husky","type":"android"},` +
				`"library":{"name":"analytics-kotlin","version":"1.19.1"},"os":{"name":"Android","version":"14"},` +
				`"screen":{"density":2.625,"height":2400,"width":1080},"network":{"wifi":true},"locale":"en-US",` +
				`"timezone":"Europe/Paris","userAgent":"Dalvik/2.1.0","instanceId":"i-1"},` +
				`"userId":"","timestamp":"` + ts + `","_metadata":{"bundled":[],"unbundled":[],"bundledIds":[]}}`,
		},
		{
			name: "analytics-swift", key: "wk_ios", library: "analytics-ios",
			headers: map[string]string{"Content-Type": "application/json; charset=utf-8", "Accept-Encoding": "gzip", "User-Agent": "analytics-ios/1.7.3"},
			event: `{"type":"screen","name":"Cart","category":"Checkout","properties":{"items":2},` +
				`"messageId":"F1E2D3C4-swift-0001","anonymousId":"A1B2C3D4-anon","userId":"u-ios","integrations":{},` +
				`"context":{"app":{"name":"Shop","version":"3.2.0","build":"320","namespace":"com.example.shop"},` +
				`"device":{"manufacturer":"Apple","type":"ios","model":"iPhone15,2","id":"d-2"},` +
				`"library":{"name":"analytics-ios","version":"1.7.3"},"os":{"name":"iOS","version":"17.4"},` +
				`"screen":{"width":393,"height":852},"network":{"cellular":false,"wifi":true},"locale":"en-US","timezone":"UTC"},` +
				`"timestamp":"` + ts + `","_metadata":{"bundled":[],"unbundled":[],"bundledIds":[]}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The settings request, to cdnHost = <public host>/v1.
			res, err := http.Get(srv.TrackingURL + "/v1/projects/" + tt.key + "/settings")
			if err != nil {
				t.Fatal(err)
			}
			var settings struct {
				Integrations map[string]struct{ APIKey, APIHost string }
			}
			json.NewDecoder(res.Body).Decode(&settings)
			res.Body.Close()
			if seg := settings.Integrations["Segment.io"]; res.StatusCode != 200 || seg.APIKey != tt.key || seg.APIHost != "t.example.com/v1" {
				t.Fatalf("settings: %d %+v", res.StatusCode, settings)
			}

			body := []byte(`{"batch":[` + tt.event + `],"sentAt":"` + sentAt + `","writeKey":"` + tt.key + `"}`)
			if tt.gzip {
				var buf bytes.Buffer
				zw := gzip.NewWriter(&buf)
				zw.Write(body)
				zw.Close()
				body = buf.Bytes()
			}
			var rd io.Reader = bytes.NewReader(body)
			if tt.chunked {
				rd = io.MultiReader(rd) // no length: sent chunked
			}
			req, _ := http.NewRequest("POST", srv.TrackingURL+"/v1/b", rd)
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			res, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			answer, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(answer) != `{"success":true}` {
				t.Fatalf("POST /v1/b: %d %s", res.StatusCode, answer)
			}

			var ev map[string]any
			json.Unmarshal([]byte(tt.event), &ev)
			id := ev["messageId"].(string)
			if !fanouttest.Eventually(context.Background(), 20*time.Second, func() bool { return recv.Count(id) > 0 }) {
				t.Fatalf("%s not delivered within 20s", id)
			}
			var got map[string]any
			for _, d := range recv.Deliveries() {
				if d.MessageID == id {
					json.Unmarshal(d.Body, &got)
				}
			}
			if n := recv.Count(id); n != 1 {
				t.Errorf("delivered %d times, want once", n)
			}
			for _, k := range []string{"type", "event", "name", "properties", "anonymousId", "userId"} {
				if w, ok := ev[k]; ok && fmt.Sprint(got[k]) != fmt.Sprint(w) {
					t.Errorf("%s = %v, want %v", k, got[k], w)
				}
			}
			lib, _ := got["context"].(map[string]any)["library"].(map[string]any)
			if lib["name"] != tt.library {
				t.Errorf("context.library = %v", lib)
			}
			// The phone's clock is an hour behind; its event happened 30 s
			// before it was sent.
			at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(got["timestamp"]))
			if age := time.Since(at); err != nil || age < 29*time.Second || age > 2*time.Minute {
				t.Errorf("timestamp %v: want the skew-corrected time, about 30s ago", got["timestamp"])
			}
		})
	}
	if strings.Contains(fmt.Sprint(recv.Bad()), "{") {
		t.Errorf("bad deliveries: %v", recv.Bad())
	}
}
