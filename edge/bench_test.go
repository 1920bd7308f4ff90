package edge

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkProxyHTTPKeepAlive measures keep-alive GETs per second straight
// at the origin and through the edge in the same run, and reports both and
// their ratio. b.N counts requests of each kind. The edge's overlay dial
// is the tests' stand-in, which maps overlay addresses to loopback: the
// figure is the edge's own proxying cost, without WireGuard or a device
// (edgenode's BenchmarkEdgeKeepAlive measures that path).
func BenchmarkProxyHTTPKeepAlive(b *testing.B) {
	ov := newOverlay()
	e := newTestEdge(b, ov, Options{})
	a, srv := origin(b, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	}))
	setRoutes(b, e, httpRoute("bench", a))
	viaEdge := clientTo(serveHTTP(b, e))
	direct := clientTo(srv.Listener.Addr().String())

	run := func(c *http.Client) time.Duration {
		start := time.Now()
		for range b.N {
			resp, err := c.Get("http://bench.example.test/")
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
		return time.Since(start)
	}
	b.ResetTimer()
	d := run(direct)
	p := run(viaEdge)
	b.StopTimer()
	directRPS := float64(b.N) / d.Seconds()
	edgeRPS := float64(b.N) / p.Seconds()
	b.ReportMetric(directRPS, "direct-req/s")
	b.ReportMetric(edgeRPS, "edge-req/s")
	b.ReportMetric(edgeRPS/directRPS, "edge/direct")
}

// BenchmarkProxyTCPThroughput moves b.N chunks of 64 KiB over loopback TCP
// straight to a sink and through a tcp route of the edge, and reports both
// throughputs and their ratio. As in BenchmarkProxyHTTPKeepAlive, the
// overlay is the loopback stand-in: this is the edge's copy cost alone.
func BenchmarkProxyTCPThroughput(b *testing.B) {
	const chunk = 64 << 10
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c)
				c.Close() // signals the sender that everything arrived
			}()
		}
	}()
	ov := newOverlay()
	e := newTestEdge(b, ov, Options{})
	target := ov.add(sink.Addr().String())
	setRoutes(b, e, Route{Proto: ProtoTCP, PublicPort: 9, Targets: []netip.AddrPort{target}})
	edgeAddr := serve(b, "tcp", func(ctx context.Context, ln net.Listener) error { return e.ServeTCP(ctx, 9, ln) })

	buf := make([]byte, chunk)
	run := func(addr string) time.Duration {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c) // returns when the sink has read everything
		return time.Since(start)
	}
	b.SetBytes(chunk)
	b.ResetTimer()
	d := run(sink.Addr().String())
	p := run(edgeAddr)
	b.StopTimer()
	mb := float64(b.N) * chunk / 1e6
	b.ReportMetric(mb/d.Seconds(), "direct-MB/s")
	b.ReportMetric(mb/p.Seconds(), "edge-MB/s")
	b.ReportMetric(d.Seconds()/p.Seconds(), "edge/direct")
}
