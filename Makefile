# fanout: the two commands of the README.
#
#   make run    builds fanout, starts `fanout sink` (a stand-in destination on
#               127.0.0.1:9090) in the background and `fanout serve` with
#               fanout.example.yaml in the foreground; Ctrl-C stops both.
#   make test   installs what the tests need when it is missing (the Node
#               packages of test/compat, test/ui and test/browser; Debian's chromium for the
#               browser tests and Debian's postgresql for the PostgreSQL store's, with
#               apt-get, as root or through sudo),
#               then checks gofmt and runs go vet and go test -race over every package.
#   make ui     rebuilds the web UI (web/) into internal/admin/ui/dist, which
#               is committed and embedded: run it after changing web/.
#   make fmt-check  lists the tracked Go files gofmt would change.

SHELL := /bin/bash
GO    ?= go
NPM   ?= npm
BIN   := bin/fanout
NODE_DIR := test/compat/node
UI_TEST_DIR := test/ui
BROWSER_TEST_DIR := test/browser

.PHONY: run test build vet fmt-check go-test ui postgresql

build:
	$(GO) build -o $(BIN) ./cmd/fanout

run: build
	@$(BIN) sink & sink=$$!; \
	trap 'kill $$sink 2>/dev/null; wait $$sink' EXIT; \
	trap 'exit 130' INT TERM; \
	$(BIN) serve --config fanout.example.yaml

test: $(NODE_DIR)/node_modules $(UI_TEST_DIR)/node_modules $(BROWSER_TEST_DIR)/node_modules /usr/bin/chromium postgresql fmt-check vet go-test

# The PostgreSQL server binaries, where internal/pgtest looks for them
# (/usr/local/bin or Debian's /usr/lib/postgresql/*/bin); installed only when
# no initdb is found there.
postgresql:
	@if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && [ ! -x /usr/local/bin/initdb ]; then \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

/usr/bin/chromium:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| { $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && $$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# npm ci recreates node_modules, so the directory is newer than the lock file
# until the lock file changes.
$(NODE_DIR)/node_modules: $(NODE_DIR)/package-lock.json
	$(NPM) ci --prefix $(NODE_DIR) --no-audit --no-fund

$(UI_TEST_DIR)/node_modules: $(UI_TEST_DIR)/package-lock.json
	$(NPM) ci --prefix $(UI_TEST_DIR) --no-audit --no-fund

$(BROWSER_TEST_DIR)/node_modules: $(BROWSER_TEST_DIR)/package-lock.json
	$(NPM) ci --prefix $(BROWSER_TEST_DIR) --no-audit --no-fund

# The built UI is committed, so `go build` needs no Node; this rebuilds it.
ui:
	$(NPM) ci --prefix web --no-audit --no-fund
	$(NPM) run build --prefix web

fmt-check:
	@out=$$(git ls-files -z '*.go' | xargs -0 -r gofmt -l); \
	if [ -n "$$out" ]; then echo "gofmt: these files need formatting:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# -race: the delivery engine and the store are concurrent code; the whole
# suite takes a few minutes with it on two cores.
go-test:
	$(GO) test -race ./...
