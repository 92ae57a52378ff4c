// Package deploy_test checks docker-compose.yml without a docker daemon:
// every fanout node it declares must start from a configuration that
// fanout's own loader accepts, and the nodes must form one cluster.
package deploy_test

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v4"

	"github.com/fanout/fanout/destinations/registry"
	"github.com/fanout/fanout/internal/config"
)

// root is the repository root, where docker-compose.yml and the build
// context are.
const root = "../.."

// compose is the part of the Compose file format the checks read.
type compose struct {
	Services map[string]service `yaml:"services"`
}

type service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
}

// composeVar is compose's own interpolation: ${NAME}, ${NAME:-default},
// ${NAME:?message}.
var composeVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}`)

// interpolate replaces compose's variables as `docker compose up` would
// with env set: a default when the variable is unset, the variable's value
// otherwise.
func interpolate(s string, env map[string]string) string {
	return composeVar.ReplaceAllStringFunc(s, func(m string) string {
		g := composeVar.FindStringSubmatch(m)
		if v, ok := env[g[1]]; ok {
			return v
		}
		if strings.HasSuffix(g[2], "-") {
			return g[3]
		}
		return ""
	})
}

func load(t *testing.T) compose {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

// flag returns the value of --name in args.
func flag(args []string, name string) string {
	if i := slices.Index(args, name); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// mounted returns the file on the host that s mounts at target.
func mounted(s service, target string) (string, bool) {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target && strings.HasPrefix(parts[0], ".") {
			return filepath.Join(root, parts[0]), true
		}
	}
	return "", false
}

// TestCompose loads each node's configuration with the environment compose
// gives it, and checks that the nodes are a cluster of three on the
// compose file's PostgreSQL, delivering to its sink.
func TestCompose(t *testing.T) {
	c := load(t)
	shell := map[string]string{"FANOUT_ADMIN_TOKEN": "test-admin-token"}

	var nodes []string
	for name, s := range c.Services {
		if len(s.Command) > 0 && s.Command[0] == "serve" {
			nodes = append(nodes, name)
		}
	}
	slices.Sort(nodes)
	if len(nodes) != 3 {
		t.Fatalf("services running `fanout serve`: %v, want three", nodes)
	}

	pg, ok := c.Services["postgres"]
	if !ok {
		t.Fatal("no postgres service")
	}
	sink, ok := c.Services["sink"]
	if !ok || len(sink.Command) == 0 || sink.Command[0] != "sink" {
		t.Fatalf("no sink service running `fanout sink`: %+v", sink)
	}
	_, sinkPort, err := net.SplitHostPort(flag(sink.Command, "--listen"))
	if err != nil {
		t.Fatalf("sink --listen: %v", err)
	}

	dsns, names, published := map[string]bool{}, map[string]bool{}, map[string]string{}
	for _, name := range nodes {
		s := c.Services[name]
		if s.Build == nil {
			t.Errorf("%s: no build: the image is built from the Dockerfile", name)
		}
		for _, p := range s.Ports {
			host := strings.Join(strings.Split(p, ":")[:2], ":")
			if other, dup := published[host]; dup {
				t.Errorf("%s and %s both publish %s", other, name, host)
			}
			published[host] = name
		}
		path, ok := mounted(s, flag(s.Command, "--config"))
		if !ok {
			t.Fatalf("%s: --config %s is not a file mounted from the repository", name, flag(s.Command, "--config"))
		}
		for k, v := range s.Environment {
			t.Setenv(k, interpolate(v, shell))
		}
		cfg, err := config.Load(path, registry.All())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for k := range s.Environment {
			os.Unsetenv(k) // the next node gets only its own environment
		}

		if cfg.Cluster.NodeName == "" || names[cfg.Cluster.NodeName] {
			t.Errorf("%s: node_name %q is empty or another node's", name, cfg.Cluster.NodeName)
		}
		names[cfg.Cluster.NodeName] = true
		if len(cfg.Storage.Postgres) != 1 {
			t.Fatalf("%s: storage.postgres lists %d servers, want the postgres service alone", name, len(cfg.Storage.Postgres))
		}
		dsn := cfg.Storage.Postgres[0]
		dsns[dsn] = true

		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("%s: storage.postgres: %v", name, err)
		}
		pw, _ := u.User.Password()
		if u.Hostname() != "postgres" || u.User.Username() != pg.Environment["POSTGRES_USER"] ||
			pw != pg.Environment["POSTGRES_PASSWORD"] || strings.TrimPrefix(u.Path, "/") != pg.Environment["POSTGRES_DB"] {
			t.Errorf("%s: storage.postgres %s is not the postgres service's database (user %s, database %s)",
				name, u.Redacted(), pg.Environment["POSTGRES_USER"], pg.Environment["POSTGRES_DB"])
		}
		for _, d := range cfg.Destinations {
			raw, _ := d.Settings["url"].(string)
			du, err := url.Parse(raw)
			if err != nil || du.Hostname() != "sink" || du.Port() != sinkPort {
				t.Errorf("%s: destination %s delivers to %q, not the sink service on port %s", name, d.Name, raw, sinkPort)
			}
		}
	}
	if len(dsns) != 1 {
		t.Errorf("the nodes' storage.postgres differ (%d DSNs): they would not form one cluster", len(dsns))
	}
}
