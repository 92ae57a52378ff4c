package config

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v4"
)

// postgres decodes storage.postgres: one DSN, or a list of them. An empty
// string is no server, the embedded store.
func (d *decoder) postgres(p *[]string) field {
	return func(n *yaml.Node, path string) error {
		if r := d.resolve(n, path); r != nil && r.Kind == yaml.SequenceNode {
			return d.stringList(p)(n, path)
		}
		var dsn string
		if err := d.str(&dsn)(n, path); err != nil {
			return err
		}
		if dsn != "" {
			*p = []string{dsn}
		}
		return nil
	}
}

// validatePostgres checks that every DSN of storage.postgres parses and
// that no database is listed twice, naming the entry at fault
// (storage.postgres[i] when the file gives a list). The messages never hold
// a password: pgconn masks it in its parse errors, and a duplicate is
// named by its index, not its text.
func (d *decoder) validatePostgres(dsns []string) error {
	type place struct {
		host     string
		port     uint16
		database string
	}
	seen := map[place]int{}
	_, list := d.lines["storage.postgres[0]"]
	for i, dsn := range dsns {
		path := "storage.postgres"
		if list {
			path = fmt.Sprintf("storage.postgres[%d]", i)
		}
		if dsn == "" {
			return d.invalid(path, "expected a DSN, found an empty string")
		}
		cfg, err := pgconn.ParseConfig(dsn)
		if err != nil {
			return d.invalid(path, "%v", err)
		}
		at := place{cfg.Host, cfg.Port, cfg.Database}
		if j, ok := seen[at]; ok {
			return d.invalid(path, "names the same database as storage.postgres[%d]: list each server once", j)
		}
		seen[at] = i
	}
	return nil
}
