package coordinator_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
)

// headerRewriter sends every request with Host set to host (when not
// empty) and the headers in set added, as a browser does for a page that
// reached the coordinator's loopback port through DNS rebinding.
type headerRewriter struct {
	host string
	set  http.Header
}

func (h headerRewriter) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if h.host != "" {
		r.Host = h.host
	}
	for k, vs := range h.set {
		r.Header[k] = vs
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestDevModeTrustsOnlyLoopbackHost checks that dev mode lets a node
// register without an auth key only when its request, besides coming
// over loopback, names a loopback Host and is not a browser's request
// for another site: a page that rebinds its own name to 127.0.0.1 must
// not join the network.
func TestDevModeTrustsOnlyLoopbackHost(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.DevMode = true })
	port := c.addr[strings.LastIndex(c.addr, ":")+1:]
	tests := []struct {
		name string
		host string
		set  http.Header
		ok   bool
	}{
		{name: "loopback", host: "127.0.0.1:" + port, ok: true},
		{name: "localhost", host: "localhost:" + port, ok: true},
		{name: "localhost-subdomain", host: "dev.localhost:" + port, ok: true},
		{name: "ipv6-loopback", host: "[::1]:" + port, ok: true},
		{name: "same-origin", host: "127.0.0.1:" + port, set: http.Header{"Origin": {"http://127.0.0.1:" + port}, "Sec-Fetch-Site": {"same-origin"}}, ok: true},
		{name: "rebound-host", host: "rebind.example:" + port},
		{name: "rebound-host-no-port", host: "rebind.example"},
		{name: "foreign-origin", host: "127.0.0.1:" + port, set: http.Header{"Origin": {"http://rebind.example:" + port}}},
		{name: "other-local-origin", host: "127.0.0.1:" + port, set: http.Header{"Origin": {"http://localhost:1"}}},
		{name: "null-origin", host: "127.0.0.1:" + port, set: http.Header{"Origin": {"null"}}},
		{name: "cross-site", host: "127.0.0.1:" + port, set: http.Header{"Sec-Fetch-Site": {"cross-site"}}},
		{name: "same-site", host: "127.0.0.1:" + port, set: http.Header{"Sec-Fetch-Site": {"same-site"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			before, err := c.Server.Nodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cl, err := coordclient.New(coordclient.Options{
				ServerURL:  c.URL,
				PrivateKey: key.NewNode(),
				DiscoKey:   key.NewDisco().Public(),
				HTTPClient: &http.Client{Transport: headerRewriter{host: tc.host, set: tc.set}},
			})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := cl.Register(ctx, coordclient.RegisterParams{Hostname: tc.name, OS: "linux"})
			after, nerr := c.Server.Nodes(ctx)
			if nerr != nil {
				t.Fatal(nerr)
			}
			if tc.ok {
				if err != nil {
					t.Fatalf("keyless registration with Host %q: %v, want success", tc.host, err)
				}
				if resp.Node.Name != tc.name || len(after) != len(before)+1 {
					t.Fatalf("registered %+v; nodes %d -> %d, want one more", resp.Node, len(before), len(after))
				}
				return
			}
			if err == nil {
				t.Fatalf("keyless registration with Host %q, headers %v succeeded as %q, want refused", tc.host, tc.set, resp.Node.Name)
			}
			if len(after) != len(before) {
				t.Fatalf("nodes %d -> %d after a refused registration, want unchanged", len(before), len(after))
			}
		})
	}
}
