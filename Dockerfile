# The fanout binary in a small image: `fanout serve`, `fanout sink` and the
# other subcommands. The web UI is embedded (internal/admin/ui/dist is
# committed), so the build needs Go alone. docker-compose.yml builds it.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Pebble and pgx are pure Go: a static binary runs on any base.
RUN CGO_ENABLED=0 go build -trimpath -o /out/fanout ./cmd/fanout

FROM debian:bookworm-slim
# ca-certificates: destinations are HTTPS APIs.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
	&& rm -rf /var/lib/apt/lists/* \
	&& useradd --system --home-dir /var/lib/fanout --create-home fanout
COPY --from=build /out/fanout /usr/local/bin/fanout
USER fanout
WORKDIR /var/lib/fanout
# Tracking API, admin API (UI, /metrics, /debug/pprof), fanout sink.
EXPOSE 8080 8081 9090
ENTRYPOINT ["fanout"]
CMD ["serve", "--config", "/etc/fanout/fanout.yaml"]
