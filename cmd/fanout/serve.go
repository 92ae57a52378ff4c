package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/fanout/fanout/destinations/registry"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/server"
)

func runServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", "fanout.yaml", "configuration file")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	noVisibility := fs.Bool("no-visibility", false, "do not feed stats, the debugger and metrics (to measure their cost)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger, err := newLogger(*logFormat, *logLevel)
	if err != nil {
		return err
	}
	slog.SetDefault(logger)
	reg := registry.All()
	cfg, err := config.Load(*path, reg)
	if err != nil {
		return err
	}
	srv, err := server.New(server.Options{Config: cfg, Registry: reg, Logger: logger, NoVisibility: *noVisibility})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: expected text or json, found %q", format)
}
