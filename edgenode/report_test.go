package edgenode

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

// TestReporter checks that refusals of the edge itself reach every device
// of the route as wire.EdgeRefusal lines after the preface, and nothing
// else does.
func TestReporter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	target := netip.MustParseAddrPort("100.64.0.2:3000")
	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = append(dialed, addr) // only the sender goroutine dials
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}
	r := NewReporter(dial, nil)
	defer r.Close()
	r.SetRoutes([]edge.Route{
		{Host: "app.example.test", Proto: edge.ProtoHTTP, Targets: []netip.AddrPort{target}},
		{Proto: edge.ProtoTCP, PublicPort: 20000, Targets: []netip.AddrPort{netip.MustParseAddrPort("100.64.0.3:22")}},
	})
	now := time.Now().UTC().Round(time.Millisecond)
	client := netip.MustParseAddr("198.51.100.9")
	for _, l := range []edge.RequestLog{
		{Time: now, Host: "app.example.test", Method: "GET", Path: "/ok", Status: 200, Target: target},
		{Time: now, Host: "app.example.test", Method: "GET", Path: "/denied-by-app", Status: 403, Target: target},
		{Time: now, Host: "other.example.test", Method: "GET", Path: "/", Status: 401},
		{Time: now, Host: "app.example.test", Method: "GET", Path: "/gone", Status: 502},
		{Time: now, Host: "app.example.test", Method: "POST", Path: "/login", Status: 401, ClientIP: client},
		{Time: now, Host: "app.example.test", Method: "GET", Path: "/", Status: 429, ClientIP: client},
	} {
		r.Observe(l)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	pre := make([]byte, len(wire.EdgeReportPreface))
	if _, err := io.ReadFull(br, pre); err != nil || string(pre) != wire.EdgeReportPreface {
		t.Fatalf("preface %q, %v; want %q", pre, err, wire.EdgeReportPreface)
	}
	want := []wire.EdgeRefusal{
		{Time: now, Host: "app.example.test", Method: "POST", Path: "/login", Status: 401, Client: client.String()},
		{Time: now, Host: "app.example.test", Method: "GET", Path: "/", Status: 429, Client: client.String()},
	}
	dec := json.NewDecoder(br)
	for i, w := range want {
		var got wire.EdgeRefusal
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if !got.Time.Equal(w.Time) || got.Host != w.Host || got.Method != w.Method || got.Path != w.Path || got.Status != w.Status || got.Client != w.Client {
			t.Errorf("line %d = %+v, want %+v", i, got, w)
		}
	}
	r.Close()
	if len(dialed) != 1 || dialed[0] != target.String() {
		t.Errorf("dialed %v, want one connection to %v", dialed, target)
	}
}
