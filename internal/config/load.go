package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/jobstore"
)

// The defaults of the settings this package owns, each documented on its
// Config field. The others belong to the component they configure: the
// dedupe window to the store (jobstore.DefaultDedupeWindow), a destination's
// delivery section to the engine (delivery.Limits).
const (
	DefaultListen      = "127.0.0.1:8080"
	DefaultAdminListen = "127.0.0.1:8081"
	DefaultDataDir     = "./fanout-data"
)

// Error is a problem with a configuration file. Its message has the form
// "<file>:<line>: <key path>: <problem>", for example
// "fanout.yaml:14: destinations[1].settings.url: required setting is missing";
// the line or the key path is left out when it is not known.
type Error struct {
	// File is the path of the configuration file, as given to Load.
	File string
	// Line is the 1-based line the problem is on, or 0 when unknown.
	Line int
	// Path is the key path, such as "destinations[1].delivery.timeout", or
	// empty when the problem concerns the whole file.
	Path string
	// Problem says what is wrong.
	Problem string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	if e.Path != "" {
		b.WriteString(": ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Problem)
	return b.String()
}

// Load reads the configuration file at path, interpolates ${VAR} from the
// environment, fills defaults and validates it, checking each destination's
// settings against its integration's schema in reg. After Load, each
// Destination.Settings holds the normalized settings and DataDir is resolved
// against the directory of path. Every problem with the file is reported as
// an *Error; the first one found stops the load.
func Load(path string, reg destinations.Registry) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parse(path, data, reg, os.LookupEnv)
}

// parse is Load without the file system, with the environment injected so
// that tests run in parallel.
func parse(path string, data []byte, reg destinations.Registry, env func(string) (string, bool)) (*Config, error) {
	d := &decoder{file: path, env: env, lines: map[string]int{}, interpolated: map[*yaml.Node]bool{}}

	// The file is parsed to a node tree and decoded by hand below, rather than
	// with yaml.Decoder.KnownFields, for three reasons: ${VAR} is replaced in
	// scalar values after parsing, so an environment value can never change the
	// structure of the file (a secret containing ": " or "#" stays one string);
	// each error names its key path, which yaml's errors do not; and the first
	// problem is reported alone instead of a list of them.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, d.errorf(nil, "", "the file is empty")
		}
		return nil, d.syntaxError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, d.syntaxError(err)
		}
		return nil, d.errorf(&extra, "", "the file holds more than one YAML document")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}

	cfg := &Config{
		Path:         path,
		Listen:       DefaultListen,
		AdminListen:  DefaultAdminListen,
		DataDir:      DefaultDataDir,
		DedupeWindow: jobstore.DefaultDedupeWindow,
	}
	if err := d.config(root, cfg); err != nil {
		return nil, err
	}
	if err := d.validate(cfg, reg); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(cfg.DataDir) {
		cfg.DataDir = filepath.Join(filepath.Dir(path), cfg.DataDir)
	}
	return cfg, nil
}

// decoder walks the node tree. It remembers the line of every key path it
// decodes so that validation, which runs on the decoded values, can still
// point at the line.
type decoder struct {
	file  string
	env   func(string) (string, bool)
	lines map[string]int
	// interpolated holds the scalars whose value came from ${VAR}. Their
	// type is resolved from the value after interpolation, so that
	// `concurrency: ${CONCURRENCY}` decodes as a number.
	interpolated map[*yaml.Node]bool
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) error {
	e := &Error{File: d.file, Path: path, Problem: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line = n.Line
	}
	return e
}

// syntaxError turns yaml's *yaml.LoadError into an *Error, at the line
// where the construct that failed starts, as yaml's own message puts it.
func (d *decoder) syntaxError(err error) error {
	var le *yaml.LoadError
	if !errors.As(err, &le) {
		return &Error{File: d.file, Problem: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	line := le.Mark.Line
	if le.ContextMsg != "" {
		line = le.ContextMark.Line
	}
	return &Error{File: d.file, Line: line, Problem: le.Message}
}

// lineOf returns the line recorded for path, or for its closest recorded
// parent: a missing key is reported at the mapping that should hold it.
func (d *decoder) lineOf(path string) int {
	for {
		if l, ok := d.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			return 0
		}
		path = path[:i]
	}
}

// invalid reports a problem found by validation, after decoding.
func (d *decoder) invalid(path, format string, args ...any) error {
	return &Error{File: d.file, Line: d.lineOf(path), Path: path, Problem: fmt.Sprintf(format, args...)}
}

// field decodes the value of one key; path is the key's full path.
type field func(n *yaml.Node, path string) error

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// resolve follows aliases and records the line of path.
func (d *decoder) resolve(n *yaml.Node, path string) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if _, ok := d.lines[path]; !ok && path != "" {
		d.lines[path] = n.Line
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// mapping decodes a mapping whose keys must all be in fields. A null value
// (an empty mapping written as `key:`) decodes as an empty mapping.
func (d *decoder) mapping(n *yaml.Node, path string, fields map[string]field) error {
	n = d.resolve(n, path)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return d.errorf(n, path, "expected a mapping, found %s", describe(n))
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		kp := join(path, key)
		if prev, ok := seen[key]; ok {
			return d.errorf(k, kp, "key is repeated (first at line %d)", prev)
		}
		seen[key] = k.Line
		f, ok := fields[key]
		if !ok {
			known := make([]string, 0, len(fields))
			for name := range fields {
				known = append(known, name)
			}
			slices.Sort(known)
			return d.errorf(k, kp, "unknown key (known keys: %s)", strings.Join(known, ", "))
		}
		d.lines[kp] = k.Line
		if err := f(v, kp); err != nil {
			return err
		}
	}
	return nil
}

// sequence decodes each item of a sequence with item. A null value decodes
// as an empty sequence.
func (d *decoder) sequence(n *yaml.Node, path string, item func(n *yaml.Node, path string) error) error {
	n = d.resolve(n, path)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return d.errorf(n, path, "expected a list, found %s", describe(n))
	}
	for i, v := range n.Content {
		ip := fmt.Sprintf("%s[%d]", path, i)
		d.lines[ip] = v.Line
		if err := item(v, ip); err != nil {
			return err
		}
	}
	return nil
}

// scalar returns the scalar at n, interpolated, or nil for a null value,
// which leaves the field at its default.
func (d *decoder) scalar(n *yaml.Node, path string) (*yaml.Node, error) {
	n = d.resolve(n, path)
	if n.Kind != yaml.ScalarNode {
		return nil, d.errorf(n, path, "expected a single value, found %s", describe(n))
	}
	if isNull(n) {
		return nil, nil
	}
	if d.interpolated[n] || !strings.Contains(n.Value, "$") {
		return n, nil
	}
	v, err := interpolate(n.Value, d.env)
	if err != nil {
		return nil, d.errorf(n, path, "%v", err)
	}
	if v != n.Value {
		n.Value = v
		d.interpolated[n] = true
	}
	return n, nil
}

// typed returns n ready to be decoded into a non-string Go value. A value
// that came from ${VAR} was a string in the file, so its type is resolved
// again from the text it became.
func (d *decoder) typed(n *yaml.Node) *yaml.Node {
	if !d.interpolated[n] {
		return n
	}
	c := *n
	c.Tag, c.Style = "", 0
	return &c
}

func (d *decoder) str(p *string) field {
	return func(n *yaml.Node, path string) error {
		s, err := d.scalar(n, path)
		if s == nil || err != nil {
			return err
		}
		// Any scalar is taken as its text: `listen: 8080` is a string here.
		*p = s.Value
		return nil
	}
}

func (d *decoder) boolean(p *bool) field {
	return func(n *yaml.Node, path string) error {
		s, err := d.scalar(n, path)
		if s == nil || err != nil {
			return err
		}
		if err := d.typed(s).Decode(p); err != nil {
			return d.errorf(s, path, "expected true or false, found %q", s.Value)
		}
		return nil
	}
}

func (d *decoder) integer(p *int) field {
	return func(n *yaml.Node, path string) error {
		s, err := d.scalar(n, path)
		if s == nil || err != nil {
			return err
		}
		if err := d.typed(s).Decode(p); err != nil {
			return d.errorf(s, path, "expected an integer, found %q", s.Value)
		}
		return nil
	}
}

func (d *decoder) number(p *float64) field {
	return func(n *yaml.Node, path string) error {
		s, err := d.scalar(n, path)
		if s == nil || err != nil {
			return err
		}
		if err := d.typed(s).Decode(p); err != nil || math.IsNaN(*p) || math.IsInf(*p, 0) {
			return d.errorf(s, path, "expected a number, found %q", s.Value)
		}
		return nil
	}
}

func (d *decoder) duration(p *time.Duration) field {
	return func(n *yaml.Node, path string) error {
		s, err := d.scalar(n, path)
		if s == nil || err != nil {
			return err
		}
		// Only Go duration strings: a bare number would be ambiguous
		// (seconds? nanoseconds?), so `timeout: 10` is an error.
		v, err := time.ParseDuration(s.Value)
		if err != nil {
			return d.errorf(s, path, "expected a duration such as 10s or 4h, found %q", s.Value)
		}
		*p = v
		return nil
	}
}

// size reads a byte size: a whole number of bytes, or a number with one
// of the units KB, MB, GB, TB (powers of 1024, as for memory sizes).
func (d *decoder) size(p *int64) field {
	return func(n *yaml.Node, path string) error {
		s, err := d.scalar(n, path)
		if s == nil || err != nil {
			return err
		}
		v, ok := parseSize(s.Value)
		if !ok {
			return d.errorf(s, path, "expected a size such as 256MB or 1GB, found %q", s.Value)
		}
		*p = v
		return nil
	}
}

func parseSize(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for i, unit := range []string{"KB", "MB", "GB", "TB"} {
		if u, ok := strings.CutSuffix(strings.ToUpper(s), unit); ok {
			s, mult = strings.TrimSpace(u), int64(1)<<(10*(i+1))
			break
		}
	}
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "b")
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || v*float64(mult) >= math.MaxInt64 {
		return 0, false
	}
	return int64(v * float64(mult)), true
}

func (d *decoder) stringList(p *[]string) field {
	return func(n *yaml.Node, path string) error {
		return d.sequence(n, path, func(n *yaml.Node, path string) error {
			var s string
			if err := d.str(&s)(n, path); err != nil {
				return err
			}
			*p = append(*p, s)
			return nil
		})
	}
}

// describe names a node's kind for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "nothing"
}

func (d *decoder) config(n *yaml.Node, c *Config) error {
	if n.Kind == 0 {
		return d.errorf(nil, "", "the file is empty")
	}
	return d.mapping(n, "", map[string]field{
		"listen":        d.str(&c.Listen),
		"public_url":    d.str(&c.PublicURL),
		"admin_listen":  d.str(&c.AdminListen),
		"admin_token":   d.str(&c.AdminToken),
		"data_dir":      d.str(&c.DataDir),
		"dedupe_window": d.duration(&c.DedupeWindow),
		"storage": func(n *yaml.Node, path string) error {
			return d.mapping(n, path, map[string]field{
				"postgres": d.postgres(&c.Storage.Postgres),
				"min_free": d.size(&c.Storage.MinFree),
			})
		},
		"cluster": func(n *yaml.Node, path string) error {
			return d.mapping(n, path, map[string]field{
				"node_name": d.str(&c.Cluster.NodeName),
			})
		},
		"network": func(n *yaml.Node, path string) error {
			return d.mapping(n, path, map[string]field{
				"allow_private": d.boolean(&c.Network.AllowPrivate),
			})
		},
		"sources": func(n *yaml.Node, path string) error {
			return d.sequence(n, path, func(n *yaml.Node, path string) error {
				var s Source
				err := d.mapping(n, path, map[string]field{
					"name":      d.str(&s.Name),
					"write_key": d.str(&s.WriteKey),

					// For the browser and mobile libraries (public.go).
					"allowed_origins": d.stringList(&s.AllowedOrigins),
					"rate_limit":      d.number(&s.RateLimit),
					"rate_burst":      d.integer(&s.RateBurst),
				})
				c.Sources = append(c.Sources, s)
				return err
			})
		},
		"destinations": func(n *yaml.Node, path string) error {
			return d.sequence(n, path, func(n *yaml.Node, path string) error {
				dst := Destination{Delivery: delivery.Limits{}.WithDefaults()}
				err := d.mapping(n, path, map[string]field{
					"name":     d.str(&dst.Name),
					"type":     d.str(&dst.Type),
					"sources":  d.stringList(&dst.Sources),
					"settings": d.settings(&dst.Settings),
					"delivery": func(n *yaml.Node, path string) error {
						return d.mapping(n, path, map[string]field{
							"concurrency":  d.integer(&dst.Delivery.Concurrency),
							"rate_limit":   d.number(&dst.Delivery.RateLimit),
							"retry_window": d.duration(&dst.Delivery.RetryWindow),
							"timeout":      d.duration(&dst.Delivery.Timeout),
						})
					},
				})
				c.Destinations = append(c.Destinations, dst)
				return err
			})
		},
	})
}

// settings decodes a destination's settings as plain values; their keys and
// types are checked later against the integration's schema, which knows them.
func (d *decoder) settings(p *map[string]any) field {
	return func(n *yaml.Node, path string) error {
		n = d.resolve(n, path)
		if isNull(n) {
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return d.errorf(n, path, "expected a mapping, found %s", describe(n))
		}
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := join(path, k.Value)
			if _, ok := m[k.Value]; ok {
				return d.errorf(k, kp, "key is repeated (first at line %d)", d.lines[kp])
			}
			d.lines[kp] = k.Line
			if err := d.interpolateAll(v, kp); err != nil {
				return err
			}
			var val any
			if err := v.Decode(&val); err != nil {
				return d.errorf(v, kp, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
			}
			m[k.Value] = val
		}
		*p = m
		return nil
	}
}

// interpolateAll interpolates every scalar below n, for settings, whose
// shape only the integration's schema knows.
func (d *decoder) interpolateAll(n *yaml.Node, path string) error {
	n = d.resolve(n, path)
	switch n.Kind {
	case yaml.ScalarNode:
		_, err := d.scalar(n, path)
		return err
	case yaml.SequenceNode:
		for i, v := range n.Content {
			if err := d.interpolateAll(v, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := d.interpolateAll(n.Content[i+1], join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	}
	return nil
}

// validate checks what the decoder cannot see key by key: required keys,
// uniqueness, references between sources and destinations, settings against
// their schema, and ranges.
func (d *decoder) validate(c *Config, reg destinations.Registry) error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return d.invalid("listen", "expected host:port, found %q", c.Listen)
	}
	host, _, err := net.SplitHostPort(c.AdminListen)
	if err != nil {
		return d.invalid("admin_listen", "expected host:port, found %q", c.AdminListen)
	}
	if !isLoopback(host) && c.AdminToken == "" {
		return d.invalid("admin_listen", "%q is not a loopback address, so admin_token is required", c.AdminListen)
	}
	if c.DataDir == "" {
		return d.invalid("data_dir", "must not be empty")
	}
	if c.DedupeWindow <= 0 {
		return d.invalid("dedupe_window", "must be greater than zero, found %s", c.DedupeWindow)
	}

	if err := d.validatePostgres(c.Storage.Postgres); err != nil {
		return err
	}

	if len(c.Sources) == 0 {
		return d.invalid("sources", "at least one source is required")
	}
	sourceAt := make(map[string]int, len(c.Sources))
	keyAt := make(map[string]int, len(c.Sources))
	for i, s := range c.Sources {
		path := fmt.Sprintf("sources[%d]", i)
		if s.Name == "" {
			return d.invalid(path+".name", "required key is missing")
		}
		if s.WriteKey == "" {
			return d.invalid(path+".write_key", "required key is missing")
		}
		if j, ok := sourceAt[s.Name]; ok {
			return d.invalid(path+".name", "source %q is already defined at sources[%d]", s.Name, j)
		}
		sourceAt[s.Name] = i
		// The write key itself is a credential: name the other source, not the key.
		if j, ok := keyAt[s.WriteKey]; ok {
			return d.invalid(path+".write_key", "same write key as sources[%d] (%s)", j, c.Sources[j].Name)
		}
		keyAt[s.WriteKey] = i
		if err := d.validatePublic(&c.Sources[i], path); err != nil {
			return err
		}
	}
	if err := d.publicURL(c); err != nil {
		return err
	}

	destAt := make(map[string]int, len(c.Destinations))
	for i := range c.Destinations {
		dst := &c.Destinations[i]
		path := fmt.Sprintf("destinations[%d]", i)
		if dst.Name == "" {
			return d.invalid(path+".name", "required key is missing")
		}
		if j, ok := destAt[dst.Name]; ok {
			return d.invalid(path+".name", "destination %q is already defined at destinations[%d]", dst.Name, j)
		}
		destAt[dst.Name] = i
		if dst.Type == "" {
			return d.invalid(path+".type", "required key is missing")
		}
		integ, ok := reg[dst.Type]
		if !ok || integ == nil {
			return d.invalid(path+".type", "unknown destination type %q (known types: %s)", dst.Type, knownTypes(reg))
		}
		listed := make(map[string]bool, len(dst.Sources))
		for j, s := range dst.Sources {
			sp := fmt.Sprintf("%s.sources[%d]", path, j)
			if _, ok := sourceAt[s]; !ok {
				return d.invalid(sp, "unknown source %q", s)
			}
			if listed[s] {
				return d.invalid(sp, "source %q is listed twice", s)
			}
			listed[s] = true
		}
		if err := d.validateSettings(dst, integ.Settings, path+".settings"); err != nil {
			return err
		}
		if err := d.checkIntegration(dst, integ, path+".settings"); err != nil {
			return err
		}
		dp := path + ".delivery"
		if dst.Delivery.Concurrency <= 0 {
			return d.invalid(dp+".concurrency", "must be greater than zero, found %d", dst.Delivery.Concurrency)
		}
		if dst.Delivery.RateLimit < 0 {
			return d.invalid(dp+".rate_limit", "must not be negative (0 means no limit), found %v", dst.Delivery.RateLimit)
		}
		if dst.Delivery.RetryWindow <= 0 {
			return d.invalid(dp+".retry_window", "must be greater than zero, found %s", dst.Delivery.RetryWindow)
		}
		if dst.Delivery.Timeout <= 0 {
			return d.invalid(dp+".timeout", "must be greater than zero, found %s", dst.Delivery.Timeout)
		}
	}
	return nil
}

// validateSettings runs the integration's schema over the settings and maps
// its "key: problem" errors onto the settings' key paths.
func (d *decoder) validateSettings(dst *Destination, schema destinations.Schema, path string) error {
	settings := dst.Settings
	if settings == nil {
		settings = map[string]any{}
	}
	// A number or boolean written as ${VAR} (or quoted) arrives as a string;
	// give the schema the type it expects when the text reads as one.
	for _, f := range schema {
		s, ok := settings[f.Name].(string)
		if !ok {
			continue
		}
		switch f.Type {
		case destinations.Int:
			if n, err := strconv.Atoi(s); err == nil {
				settings[f.Name] = n
			}
		case destinations.Bool:
			if b, err := strconv.ParseBool(s); err == nil {
				settings[f.Name] = b
			}
		}
	}
	norm, err := schema.Validate(settings)
	if err == nil {
		dst.Settings = norm
		return nil
	}
	msg := err.Error()
	keys, problem, ok := strings.Cut(msg, ": ")
	if !ok {
		return d.invalid(path, "%s", msg)
	}
	names := strings.Split(keys, ", ")
	if problem != "unknown setting" {
		return d.invalid(path+"."+keys, "%s", problem)
	}
	known := make([]string, 0, len(schema))
	for _, f := range schema {
		known = append(known, f.Name)
	}
	if len(names) == 1 {
		return d.invalid(path+"."+keys, "unknown setting (known settings: %s)", strings.Join(known, ", "))
	}
	// Several unknown settings: point at the first, name them all.
	return &Error{
		File:    d.file,
		Line:    d.lineOf(path + "." + names[0]),
		Path:    path,
		Problem: fmt.Sprintf("unknown settings %s (known settings: %s)", keys, strings.Join(known, ", ")),
	}
}

// checkIntegration builds the destination once, without sending anything,
// so that the checks its integration makes beyond the schema (one setting
// that depends on another, a region name, a URL's shape) stop start-up
// with the same kind of message as a schema error. Integrations word those
// errors "key: problem", or "key, key: problem" for several keys.
func (d *decoder) checkIntegration(dst *Destination, integ *destinations.Integration, path string) error {
	if integ.New == nil {
		return nil
	}
	_, err := integ.New(destinations.Config{Name: dst.Name, Settings: dst.Settings, Client: &http.Client{}})
	if err == nil {
		return nil
	}
	msg := err.Error()
	keys, problem, ok := strings.Cut(msg, ": ")
	first, _, _ := strings.Cut(keys, ",")
	first, _, _ = strings.Cut(first, " and ")
	if !ok || strings.ContainsAny(first, " \"") {
		return d.invalid(path, "%s", msg)
	}
	return &Error{File: d.file, Line: d.lineOf(path + "." + first), Path: path + "." + keys, Problem: problem}
}

func knownTypes(reg destinations.Registry) string {
	names := make([]string, 0, len(reg))
	for name := range reg {
		names = append(names, name)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return "none registered"
	}
	return strings.Join(names, ", ")
}

// isLoopback reports whether host names only the local machine. An empty
// host (":8081") listens on every interface, so it is not loopback.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
