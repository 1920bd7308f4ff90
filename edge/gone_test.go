package edge

import (
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// TestRequestToRemovedTargetFails checks that a request under way to a
// device whose route is withdrawn fails at once rather than hanging on a
// peer that may be gone for good.
func TestRequestToRemovedTargetFails(t *testing.T) {
	// An origin that accepts and never answers: a device that went away.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	ov := newOverlay()
	target := ov.add(ln.Addr().String())
	e := newTestEdge(t, ov, Options{})
	if err := e.SetRoutes([]Route{{Host: "gone." + testDomain, Proto: ProtoHTTP, Targets: []netip.AddrPort{target}}}); err != nil {
		t.Fatal(err)
	}
	addr := serveHTTP(t, e)
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := clientTo(addr).Get("http://gone." + testDomain + "/")
		if err != nil {
			done <- result{err: err}
			return
		}
		resp.Body.Close()
		done <- result{code: resp.StatusCode}
	}()
	var oc net.Conn
	select {
	case oc = <-accepted:
		defer oc.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the edge never connected to the origin")
	}
	start := time.Now()
	if err := e.SetRoutes(nil); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err == nil && r.code != http.StatusBadGateway {
			t.Fatalf("request after its route was withdrawn: status %d, want 502", r.code)
		}
		t.Logf("request ended %v after the route was withdrawn (status %d, err %v)", time.Since(start), r.code, r.err)
	case <-time.After(5 * time.Second):
		t.Fatal("request still hanging 5 s after its route was withdrawn")
	}
}

// TestSetRoutesKeepsIdleConns checks that a change to other routes keeps
// the idle connections to the targets it leaves alone: the next request
// to them reuses its connection instead of dialing the device again.
func TestSetRoutesKeepsIdleConns(t *testing.T) {
	ov := newOverlay()
	a, _ := origin(t, ov, nameHandler("a"))
	b, _ := origin(t, ov, nameHandler("b"))
	c, _ := origin(t, ov, nameHandler("c"))
	e := newTestEdge(t, ov, Options{})
	client := clientTo(serveHTTP(t, e))
	limited := httpRoute("beta", b)
	limited.Policy.DenyCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	for _, tc := range []struct {
		name   string
		before []Route
		after  []Route
	}{
		{"route added", []Route{httpRoute("alpha", a)}, []Route{httpRoute("alpha", a), httpRoute("beta", b)}},
		{"route removed", []Route{httpRoute("alpha", a), httpRoute("beta", b)}, []Route{httpRoute("alpha", a)}},
		{"other route's policy changed", []Route{httpRoute("alpha", a), httpRoute("beta", b)}, []Route{httpRoute("alpha", a), limited}},
		{"other route's target changed", []Route{httpRoute("alpha", a), httpRoute("beta", b)}, []Route{httpRoute("alpha", a), httpRoute("beta", c)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setRoutes(t, e, tc.before...)
			if code, _, _ := get(t, client, "http://alpha."+testDomain+"/"); code != http.StatusOK {
				t.Fatalf("GET alpha: status %d, want 200", code)
			}
			dials := ov.dials.Load()
			setRoutes(t, e, tc.after...)
			if code, _, _ := get(t, client, "http://alpha."+testDomain+"/"); code != http.StatusOK {
				t.Fatalf("GET alpha after SetRoutes: status %d, want 200", code)
			}
			if got := ov.dials.Load() - dials; got != 0 {
				t.Errorf("dials to the devices after a change to other routes: got %d, want 0 (the idle connection to alpha's target was dropped)", got)
			}
		})
	}
}
