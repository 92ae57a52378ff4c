package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// adminAPI is the admin API of a running server, for the commands that
// call it (replay, tail): its address and token come from their --admin
// and --token flags.
type adminAPI struct {
	url   string
	token string
}

// adminFlags defines --admin and --token on fs and returns where they are
// parsed to.
func adminFlags(fs *flag.FlagSet) *adminAPI {
	a := &adminAPI{}
	fs.StringVar(&a.url, "admin", "http://127.0.0.1:8081", "admin API address")
	fs.StringVar(&a.token, "token", os.Getenv("FANOUT_ADMIN_TOKEN"), "admin token (default $FANOUT_ADMIN_TOKEN)")
	return a
}

// request builds a request for path (with its query) on the admin API,
// with the token as a bearer token when one is set.
func (a *adminAPI) request(ctx context.Context, method, path string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(a.url, "/")+path, nil)
	if err != nil {
		return nil, fmt.Errorf("--admin: %w", err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	return req, nil
}
