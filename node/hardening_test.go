package node

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"beam.dev/beam/wire"
)

// A policy that lets nothing reach this node arrives as an absent
// packet_filter field; it must deny new inbound flows, not open them all.
func TestEmptyFilterDenies(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	b, err := json.Marshal(&wire.MapResponse{PacketFilter: []wire.FilterRule{}, PacketFilterSet: true})
	if err != nil {
		t.Fatal(err)
	}
	var resp wire.MapResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	nm := testNetMap(now).Apply(&resp, now)
	cfg := engineConfig(nm, now, false, nil)
	if cfg.Filter == nil || len(cfg.Filter.Rules) != 0 {
		t.Fatalf("filter for an empty policy = %+v, want a filter with no rules (deny)", cfg.Filter)
	}
}

func TestProxyRefusesOtherSites(t *testing.T) {
	for _, tc := range []struct {
		name    string
		method  string
		target  string
		headers map[string]string
		want    bool
	}{
		{"no headers", "GET", "http://beta:8000/", nil, true},
		{"loopback origin", "GET", "http://beta:8000/", map[string]string{"Origin": "http://127.0.0.1:3000"}, true},
		{"ipv6 loopback referer", "GET", "http://beta:8000/", map[string]string{"Referer": "http://[::1]:3000/a"}, true},
		{"localhost origin", "GET", "http://beta:8000/", map[string]string{"Origin": "http://localhost:3000"}, true},
		{"same host page", "GET", "http://beta:8000/app.js", map[string]string{"Referer": "http://beta:8000/"}, true},
		{"foreign origin", "GET", "http://beta:8000/", map[string]string{"Origin": "https://evil.example"}, false},
		{"foreign referer", "POST", "http://beta:8000/", map[string]string{"Referer": "https://evil.example/x"}, false},
		{"null origin", "GET", "http://beta:8000/", map[string]string{"Origin": "null"}, false},
		{"loopback-looking name", "GET", "http://beta:8000/", map[string]string{"Origin": "http://127.0.0.1.evil.example"}, false},
		{"connect, foreign origin", "CONNECT", "beta:443", map[string]string{"Origin": "https://evil.example"}, false},
		{"connect, no origin", "CONNECT", "beta:443", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			if tc.method == http.MethodConnect {
				r = httptest.NewRequest(tc.method, "http://"+tc.target, nil)
				r.Host = tc.target
			}
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			if got := sameSiteOrLoopback(r); got != tc.want {
				t.Fatalf("sameSiteOrLoopback = %v, want %v", got, tc.want)
			}
		})
	}
}
