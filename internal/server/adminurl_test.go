package server

import (
	"net"
	"os"
	"strings"
	"testing"
)

// A node advertises the address its admin listener bound, with the host
// name in place of an address that means every interface.
func TestAdminURL(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no host name")
	}
	cases := []struct{ listen, host string }{
		{"127.0.0.1:0", "127.0.0.1"},
		{"0.0.0.0:0", host},
		{":0", host},
	}
	for _, c := range cases {
		ln, err := net.Listen("tcp", c.listen)
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		got := adminURL(ln)
		ln.Close()
		if want := "http://" + net.JoinHostPort(c.host, port); got != want || strings.Contains(got, "0.0.0.0") {
			t.Errorf("admin_listen %s: advertised %s, want %s", c.listen, got, want)
		}
	}
}
