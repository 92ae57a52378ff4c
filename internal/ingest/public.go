package ingest

import (
	"encoding/json"
	"hash/fnv"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/fanout/fanout/internal/event"
)

// What the browser and mobile libraries need beyond the server libraries'
// API, all of it decided per source because their write keys are public:
//
//   - the short paths: analytics.js posts each call to /v1/<first letter of
//     its type> and its batches to /v1/b, as the mobile libraries do; its
//     performance metrics go to /v1/m;
//   - CORS, since the page that sends is on another origin than fanout;
//   - the settings document they load at start-up, which tells them where
//     to send (GET /v1/projects/{writeKey}/settings);
//   - an ingest rate limit, for a key anyone can read from a page.

// shortPaths maps the paths of analytics.js and the mobile libraries to the
// call types they stand for; "" is a batch.
var shortPaths = map[string]string{
	"t": event.Track, "i": event.Identify, "p": event.Page, "s": event.Screen,
	"g": event.Group, "a": event.Alias, "b": "",
}

// The CORS answers. The request headers are those the libraries set:
// analytics.js sends Content-Type text/plain, Authorization (Basic, its
// write key) and, on a retry, X-Retry-Count.
const (
	corsMethods = "GET, POST, OPTIONS"
	corsHeaders = "Authorization, Content-Type, Content-Encoding, X-Retry-Count"
	// corsMaxAge is how long, in seconds, a browser may reuse a preflight's
	// answer: a day (Chromium caps it at two hours).
	corsMaxAge = "86400"
)

// settingsCacheControl lets a CDN in front of fanout serve the settings
// document: libraries fetch it at every page load or app start. Five
// minutes bounds how long a changed public_url takes to reach clients.
const settingsCacheControl = "public, max-age=300, stale-while-revalidate=3600"

// DefaultRateBurst is the burst of a source whose rate_limit is set and
// rate_burst is not: one second of its rate, and never less than the
// largest batch, so that a batch the tracking API takes is never refused
// by the limit alone.
func DefaultRateBurst(limit float64) int {
	return max(int(math.Ceil(limit)), MaxBatchEvents)
}

// policy is what one source allows.
type policy struct {
	name      string
	anyOrigin bool
	origins   map[string]bool
	limiter   *rate.Limiter // nil without a rate_limit
	refused   *prometheus.CounterVec
	settings  []byte // the settings document
	etag      string
}

func (p *policy) allows(origin string) bool {
	return p.anyOrigin || p.origins[strings.ToLower(origin)]
}

// public is the Handler's state for the browser and mobile libraries.
type public struct {
	bySource map[string]*policy
	byKey    map[string]*policy
	// anyOrigin and origins are the union over sources: a preflight
	// carries no write key, so it is answered for any source's origins.
	anyOrigin bool
	origins   map[string]bool

	refused       *prometheus.CounterVec
	clientMetrics prometheus.Counter
}

func newPublic(opts Options) *public {
	p := &public{
		bySource: map[string]*policy{},
		byKey:    map[string]*policy{},
		origins:  map[string]bool{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fanout_ingest_refused_total",
			Help: "Tracking API requests refused before their events were stored, by source and reason (origin: CORS origin not allowed; rate_limit: the source's rate_limit was exceeded).",
		}, []string{"source", "reason"}),
		clientMetrics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fanout_ingest_client_metrics_total",
			Help: "Metric series the client libraries reported to /v1/m; counted, never stored as events.",
		}),
	}
	apiHost, protocol := apiHostOf(opts.PublicURL)
	for _, s := range opts.Sources {
		pol := &policy{name: s.Name, origins: map[string]bool{}, refused: p.refused}
		if len(s.AllowedOrigins) == 0 {
			pol.anyOrigin = true
		}
		for _, o := range s.AllowedOrigins {
			if o == "*" {
				pol.anyOrigin = true
			}
			pol.origins[strings.ToLower(o)] = true
			p.origins[strings.ToLower(o)] = true
		}
		p.anyOrigin = p.anyOrigin || pol.anyOrigin
		if s.RateLimit > 0 {
			burst := s.RateBurst
			if burst == 0 {
				burst = DefaultRateBurst(s.RateLimit)
			}
			pol.limiter = rate.NewLimiter(rate.Limit(s.RateLimit), burst)
		}
		if s.WriteKey != "" {
			pol.settings = settingsDocument(s.WriteKey, apiHost, protocol)
			sum := fnv.New64a()
			sum.Write(pol.settings)
			pol.etag = `"` + strconv.FormatUint(sum.Sum64(), 36) + `"`
			p.byKey[s.WriteKey] = pol
		}
		for _, reason := range []string{"origin", "rate_limit"} {
			p.refused.WithLabelValues(s.Name, reason)
		}
		p.bySource[s.Name] = pol
	}
	return p
}

// Collectors are the tracking API's Prometheus metrics, for the server to
// register beside its own.
func (h *Handler) Collectors() []prometheus.Collector {
	return []prometheus.Collector{h.pub.refused, h.pub.clientMetrics}
}

// routePublic registers the endpoints of the browser and mobile libraries.
func (h *Handler) routePublic() {
	for path, typ := range shortPaths {
		h.mux.HandleFunc("POST /v1/"+path, func(w http.ResponseWriter, r *http.Request) { h.serve(w, r, typ) })
	}
	h.mux.HandleFunc("POST /v1/m", h.clientMetrics)
	h.mux.HandleFunc("GET /v1/projects/{writeKey}/settings", h.settings)
}

// cors answers for the request's Origin before it is routed: it lets the
// page read the answer when some source allows the origin, refuses the
// request with a 403 when none does, and answers preflights. A request
// without Origin is not from a page and passes. It returns false when it
// answered.
//
// Preflights are answered here rather than through a mux pattern, for
// which OPTIONS /v1/ would turn the 404 of an unknown path into a 405.
func (h *Handler) cors(w http.ResponseWriter, r *http.Request) bool {
	// Every answer depends on Origin, those to requests without one
	// included: a CDN must not hand a page an answer cached without it.
	w.Header().Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if !h.pub.anyOrigin && !h.pub.origins[strings.ToLower(origin)] {
		h.fail(w, r, "", forbiddenOrigin(origin))
		return false
	}
	w.Header().Set("Access-Control-Allow-Origin", origin)
	// analytics.js reads Retry-After of a 429 to schedule its retry.
	w.Header().Set("Access-Control-Expose-Headers", "Retry-After")
	if r.Method == http.MethodOptions && strings.HasPrefix(r.URL.Path, "/v1/") {
		h.preflight(w)
		return false
	}
	return true
}

func forbiddenOrigin(origin string) *requestError {
	return &requestError{status: http.StatusForbidden,
		message: "origin " + strconv.Quote(origin) + " is not in the source's allowed_origins"}
}

// preflight answers a CORS preflight; cors has already checked the origin.
func (h *Handler) preflight(w http.ResponseWriter) {
	hd := w.Header()
	hd.Add("Vary", "Access-Control-Request-Method")
	hd.Add("Vary", "Access-Control-Request-Headers")
	hd.Set("Access-Control-Allow-Methods", corsMethods)
	hd.Set("Access-Control-Allow-Headers", corsHeaders)
	hd.Set("Access-Control-Max-Age", corsMaxAge)
	w.WriteHeader(http.StatusNoContent)
}

// admit checks, once the source is known, that its allowed_origins hold
// the request's Origin.
func (h *Handler) admit(r *http.Request, source string) *requestError {
	origin := r.Header.Get("Origin")
	p := h.pub.bySource[source]
	if origin == "" || p == nil || p.allows(origin) {
		return nil
	}
	p.refused.WithLabelValues(source, "origin").Inc()
	return forbiddenOrigin(origin)
}

// limit takes n events from the source's rate limit. Beyond it, the answer
// is a 429 whose Retry-After says when n events will be allowed, and
// nothing of the request is stored.
func (h *Handler) limit(source string, n int) *requestError {
	p := h.pub.bySource[source]
	if p == nil || p.limiter == nil {
		return nil
	}
	now := h.now()
	res := p.limiter.ReserveN(now, n)
	if !res.OK() {
		p.refused.WithLabelValues(source, "rate_limit").Inc()
		return badRequest("request holds %d events, more than the source's rate_burst of %d: send smaller batches", n, p.limiter.Burst())
	}
	wait := res.DelayFrom(now)
	if wait == 0 {
		return nil
	}
	res.CancelAt(now)
	p.refused.WithLabelValues(source, "rate_limit").Inc()
	secs := int(math.Ceil(wait.Seconds()))
	return &requestError{status: http.StatusTooManyRequests, retryAfter: strconv.Itoa(secs),
		message: "the source's rate_limit is exceeded; retry after " + strconv.Itoa(secs) + "s"}
}

// errorHeaders sets the headers an error answer needs beyond its body.
func errorHeaders(w http.ResponseWriter, e *requestError) {
	if e.retryAfter != "" {
		w.Header().Set("Retry-After", e.retryAfter)
	}
	if e.status == http.StatusForbidden {
		// Not for this origin: the page must not read the answer.
		w.Header().Del("Access-Control-Allow-Origin")
		w.Header().Del("Access-Control-Expose-Headers")
	}
}

// clientMetrics takes analytics.js's performance metrics ({"series":
// [...]}): counted, never stored. Whatever the body, the answer is a 200,
// so that a library never retries or logs an error over its telemetry.
func (h *Handler) clientMetrics(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Series []json.RawMessage `json:"series"`
	}
	// The body is small; a larger one is cut short and counted as none.
	json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&body)
	h.pub.clientMetrics.Add(float64(len(body.Series)))
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"success":true}`)
}

// settings serves the settings document of a write key.
func (h *Handler) settings(w http.ResponseWriter, r *http.Request) {
	p := h.pub.byKey[r.PathValue("writeKey")]
	if p == nil {
		w.Header().Set("Cache-Control", "no-store")
		h.fail(w, r, "", &requestError{status: http.StatusNotFound, message: "unknown write key: no configured source has it"})
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && !p.allows(origin) {
		p.refused.WithLabelValues(p.name, "origin").Inc()
		h.fail(w, r, p.name, forbiddenOrigin(origin))
		return
	}
	hd := w.Header()
	hd.Set("Cache-Control", settingsCacheControl)
	hd.Set("ETag", p.etag)
	if r.Header.Get("If-None-Match") == p.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hd.Set("Content-Type", "application/json")
	w.Write(p.settings)
}

// apiHostOf splits a public URL into the apiHost and protocol the libraries
// take: host, optional path prefix and /v1, without scheme.
func apiHostOf(publicURL string) (apiHost, protocol string) {
	u, err := url.Parse(publicURL)
	if err != nil || u.Host == "" {
		return "", "https"
	}
	return u.Host + strings.TrimSuffix(u.Path, "/") + "/v1", u.Scheme
}

// settingsDocument is the start-up settings of a write key, in the shape
// analytics.js (browser/index.ts, plugins/segmentio) and the mobile
// libraries (Settings.kt, Settings.swift) read: the Segment.io
// integration's apiKey, apiHost and protocol tell them where to send;
// the rest is what they read before sending, set so that they load no
// other code and call no other host.
func settingsDocument(writeKey, apiHost, protocol string) []byte {
	// analytics.js sends its metrics to https://<metrics.host>/m whatever
	// the protocol of apiHost, so over plain http they are turned off
	// rather than sent to a port that does not speak TLS.
	sampleRate := 0.1
	if protocol != "https" {
		sampleRate = 0
	}
	enabled := map[string]any{"__default": map[string]any{"enabled": true, "integrations": map[string]any{}}}
	doc := map[string]any{
		"integrations": map[string]any{
			"Segment.io": map[string]any{
				"apiKey":                writeKey,
				"apiHost":               apiHost,
				"protocol":              protocol,
				"unbundledIntegrations": []string{},
				"addBundledMetadata":    true,
				"maybeBundledConfigIds": map[string]any{},
			},
		},
		"plan":                      map[string]any{"track": enabled, "identify": enabled, "group": enabled},
		"edgeFunction":              map[string]any{},
		"analyticsNextEnabled":      true,
		"middlewareSettings":        map[string]any{},
		"enabledMiddleware":         map[string]any{},
		"metrics":                   map[string]any{"sampleRate": sampleRate, "host": apiHost},
		"legacyVideoPluginsEnabled": false,
		"remotePlugins":             []any{},
		"consentSettings":           map[string]any{"allCategories": []string{}},
	}
	b, _ := json.Marshal(doc)
	return b
}
