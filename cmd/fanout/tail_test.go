package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestFollowPretty(t *testing.T) {
	in := ": following source web\n\n" +
		"event: nodes\nid: 0\ndata: [{\"id\":1,\"name\":\"a\",\"self\":true,\"reachable\":true},{\"id\":2,\"name\":\"b\",\"reachable\":false,\"error\":\"no heartbeat\"}]\n\n" +
		"event: event\nid: 1\ndata: {\"seq\":1,\"source\":\"web\",\"message_id\":\"m1\",\"type\":\"track\",\"received_at\":\"2026-03-01T12:00:01Z\",\"payload\":{\"event\":\"Order Completed\",\"userId\":\"u1\"},\"destinations\":[{\"destination\":\"local-sink\",\"status\":\"pending\",\"attempts\":0}]}\n\n" +
		"event: outcome\nid: 1\ndata: {\"seq\":1,\"source\":\"web\",\"message_id\":\"m1\",\"type\":\"track\",\"received_at\":\"2026-03-01T12:00:01Z\",\"payload\":{\"event\":\"Order Completed\",\"userId\":\"u1\"},\"destinations\":[{\"destination\":\"local-sink\",\"status\":\"delivered\",\"attempts\":1}]}\n\n"
	var out bytes.Buffer
	if err := follow(strings.NewReader(in), &out, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || lines[0] != "nodes: a; unreachable: b (no heartbeat)" ||
		!strings.HasSuffix(lines[1], ` track "Order Completed" user=u1 -> local-sink pending`) ||
		!strings.HasSuffix(lines[2], ` track "Order Completed" user=u1 (update) -> local-sink delivered`) {
		t.Errorf("pretty:\n%s", out.String())
	}
	out.Reset()
	follow(strings.NewReader(in), &out, true)
	if !strings.Contains(out.String(), "\n"+`{"kind":"event","event":{"seq":1`) {
		t.Errorf("raw:\n%s", out.String())
	}
}
