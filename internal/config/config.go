// Package config loads fanout's YAML configuration file: it interpolates
// ${VAR} from the environment, fills defaults and validates every key, so
// that a bad file stops start-up with a message naming the file, the key path
// and the problem.
package config

import (
	"time"

	"github.com/fanout/fanout/internal/delivery"
)

// Config is the whole configuration file.
type Config struct {
	// Path is the file the configuration was read from.
	Path string `yaml:"-"`
	// Listen is the tracking API's address. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// PublicURL is how browsers and phones reach the tracking API, such as
	// https://t.example.com: the settings document the client libraries
	// load at start-up points them at it. Default http:// and Listen.
	PublicURL string `yaml:"public_url"`
	// AdminListen is the admin API, UI, /metrics and /debug/pprof address.
	// Default 127.0.0.1:8081.
	AdminListen string `yaml:"admin_listen"`
	// AdminToken is required when AdminListen is not a loopback address.
	AdminToken string `yaml:"admin_token"`
	// DataDir holds the embedded store and the archive. Default ./fanout-data.
	DataDir string  `yaml:"data_dir"`
	Storage Storage `yaml:"storage"`
	Cluster Cluster `yaml:"cluster"`
	Network Network `yaml:"network"`
	// DedupeWindow is how long a (source, messageId) is remembered. Default
	// jobstore.DefaultDedupeWindow (24h), the stores'.
	DedupeWindow time.Duration `yaml:"dedupe_window"`
	Sources      []Source      `yaml:"sources"`
	Destinations []Destination `yaml:"destinations"`
}

// Storage selects the job store.
type Storage struct {
	// Postgres lists the PostgreSQL servers, each as a DSN: a URL
	// (postgres://user:password@host:5432/db?sslmode=require) or key=value
	// pairs (host=... dbname=...). In the file it is one DSN or a list of
	// them. When set, jobs, stats and the archive are stored there instead
	// of DataDir, and the nodes that list the same servers form a cluster.
	// With several servers, partition p of the cluster lives on server p
	// mod len(Postgres): every node must list the same servers in the same
	// order (see package jobstore/shard), and the stats and the archive
	// live on the first. Default empty: the embedded store. A DSN may hold
	// a password: it appears in no log line, error or admin view.
	Postgres []string `yaml:"postgres"`
	// MinFree is the free disk space, in bytes, below which the tracking
	// API answers 503 (written 256MB, 1GB, ...). Zero: the default,
	// diskspace.DefaultMinFree.
	MinFree int64 `yaml:"min_free"`
}

// Cluster configures this node's membership of a cluster: the nodes whose
// storage.postgres names the same database. Unused without
// storage.postgres.
type Cluster struct {
	// NodeName names the node in the cluster view (GET /api/v1/cluster)
	// and its log lines. Default: the host name and a random suffix. Names
	// are for people: a node restarted under the same name is a new member.
	NodeName string `yaml:"node_name"`
}

// Network controls outbound connections.
type Network struct {
	// AllowPrivate permits outbound connections to loopback, private and
	// link-local addresses. Default false (the SSRF guard).
	AllowPrivate bool `yaml:"allow_private"`
}

// Source is one sender of events, identified by its write key.
type Source struct {
	Name     string `yaml:"name"`
	WriteKey string `yaml:"write_key"`
	// AllowedOrigins are the web origins (scheme://host[:port]) whose pages
	// may send with this source's write key, for CORS. Empty or "*" means
	// any origin, the default: write keys are public.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// RateLimit is how many events per second the tracking API accepts
	// from this source; beyond it, requests get a 429 with Retry-After.
	// 0, the default, means no limit.
	RateLimit float64 `yaml:"rate_limit"`
	// RateBurst is how many events the source may send at once above
	// RateLimit. 0, the default, lets ingest choose (see ingest.Options).
	RateBurst int `yaml:"rate_burst"`
}

// Destination is one configured destination.
type Destination struct {
	Name string `yaml:"name"`
	// Type is the integration's type name, such as "webhook".
	Type string `yaml:"type"`
	// Sources are the names of the sources connected to this destination.
	Sources []string `yaml:"sources"`
	// Settings are validated against the integration's schema; after Load
	// they hold the normalized values with defaults filled in.
	Settings map[string]any `yaml:"settings"`
	// Delivery is the destination's "delivery" section: concurrency,
	// rate_limit, retry_window and timeout, whose defaults and meanings
	// delivery.Limits documents.
	Delivery delivery.Limits `yaml:"delivery"`
}
