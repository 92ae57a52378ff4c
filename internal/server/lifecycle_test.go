package server_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/server"
)

// TestNewFailureClosesWhatItOpened makes New fail at its last step, binding
// the admin listener, and checks that it let go of everything it had opened
// before: the same data directory and tracking address open again at once.
func TestNewFailureClosesWhatItOpened(t *testing.T) {
	reg := testRegistry()
	cfg, err := config.Load(writeConfig(t, t.TempDir(), "", "http://127.0.0.1:1/hook", "http://127.0.0.1:1", "http://127.0.0.1:1"), reg)
	if err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = free.Addr().String()
	free.Close()
	cfg.AdminListen = busy.Addr().String()
	opts := server.Options{Config: cfg, Registry: reg, Logger: quietLogger()}
	if _, err := server.New(opts); err == nil || !strings.Contains(err.Error(), "admin_listen") {
		t.Fatalf("New with a busy admin address = %v, want an admin_listen error", err)
	}
	cfg.AdminListen = "127.0.0.1:0"
	srv, err := server.New(opts)
	if err != nil {
		t.Fatalf("New after a failed New on the same data and address: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := srv.Run(ctx); err != nil {
		t.Fatal(err)
	}
}
