package admin

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// The web UI is a static page built from web/ by Vite (`make ui`) into
// ui/dist, which is committed: `go build` alone yields a binary that
// serves it. It talks to the admin API from the browser, so it needs no
// handler of its own beyond the files.
//
//go:embed ui/dist
var uiFiles embed.FS

// uiHandler serves the built UI: index.html at / and the hashed bundles
// under /assets/.
var uiHandler http.Handler = newUIHandler()

func newUIHandler() http.Handler {
	dist, err := fs.Sub(uiFiles, "ui/dist")
	if err != nil {
		panic(err) // the embed pattern names the directory: it exists
	}
	files := http.FileServerFS(dist)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		// The page loads only its own scripts and styles and talks only to
		// this listener; uPlot and Preact set style properties, not
		// style attributes, but inline styles are allowed for the charts'
		// legends all the same.
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		if r.URL.Path != "/" && strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		if strings.HasPrefix(r.URL.Path, "/assets/") {
			// Vite puts a content hash in every asset's name.
			hd.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			hd.Set("Cache-Control", "no-cache")
		}
		files.ServeHTTP(w, r)
	})
}
