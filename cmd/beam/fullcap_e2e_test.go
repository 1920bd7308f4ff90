package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// The floods of this file fill a listener's connection cap from a few
// loopback addresses and hold it, as anyone could without a key: a full
// cap must not lock out the addresses that hold less.

// fullCapSources is the number of addresses a flood fills the cap from;
// each opens fullCapMax/fullCapSources connections, as many as one
// address could hold when each got an eighth of the cap.
const (
	fullCapSources = 8
	fullCapMax     = 160
)

// capSource returns the i-th address of flood f: 127.0.f.1, 127.0.f.2, ...
// (never 127.0.0.1, where the test's devices and clients are).
func capSource(f, i int) net.IP { return net.IPv4(127, 0, byte(f), byte(1+i)) }

// keepAliveFlood holds keep-alive HTTP connections: each sent one
// request, read the answer, and sits idle.
type keepAliveFlood struct {
	mu    sync.Mutex
	conns []net.Conn
}

// open opens per connections from each of the addresses of flood f,
// round robin, to addr, each sending GET path with host, and keeps those
// answered. It returns how many were answered.
func (k *keepAliveFlood) open(t *testing.T, f int, addr, host, path string, per int) int {
	t.Helper()
	answered := 0
	for range per {
		for i := range fullCapSources {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: capSource(f, i)}, Timeout: 2 * time.Second}
			c, err := d.DialContext(t.Context(), "tcp", addr)
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
				c.Close()
				continue
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				c.Close()
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.SetDeadline(time.Time{})
			answered++
			k.mu.Lock()
			k.conns = append(k.conns, c)
			k.mu.Unlock()
		}
	}
	return answered
}

// held counts the flood's connections the server still holds open.
func (k *keepAliveFlood) held() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.conns {
		if stillOpen(c, time.Millisecond) {
			n++
		}
	}
	return n
}

func (k *keepAliveFlood) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

// stillOpen reports whether the server still holds c open: a read waits
// d rather than failing. It must not be used on a connection that may
// have bytes to read.
func stillOpen(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// answersNew asks url with host on a new connection, reporting whether
// it answered 200 with want (if not empty) within 3 seconds.
func answersNew(url, host, want string) (bool, string) {
	start := time.Now()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return false, err.Error()
	}
	req.Host = host
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return false, fmt.Sprintf("%v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	how := fmt.Sprintf("%s %.40q in %v", resp.Status, b, time.Since(start).Round(time.Millisecond))
	return resp.StatusCode == 200 && (want == "" || string(b) == want), how
}

// TestFullConnCapFlood fills both connection caps of a beam server
// (--max-conns and --edge-max-conns 160) with keep-alive connections,
// 20 from each of 8 loopback addresses, as many as one address could
// hold when each got an eighth of the cap. The coordinator still answers
// a new connection, a device joins, the route answers at the edge, and
// the flood's reconnects push out only its own connections: one held
// from the devices' address before the flood stays open.
func TestFullConnCapFlood(t *testing.T) {
	capFlag := strconv.Itoa(fullCapMax)
	c, httpPort := startDevServerWith(t, 0, "--max-conns", capFlag, "--edge-max-conns", capFlag)
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp()
	host := exposeApp(t, c, alpha, httpPort, "hello from alpha")
	edgeAddr := "127.0.0.1:" + strconv.Itoa(httpPort)

	// One idle keep-alive connection of each listener from 127.0.0.1,
	// held from before the flood.
	var mine keepAliveFlood
	defer mine.close()
	for _, target := range []struct{ addr, host, path string }{{c.addr, "beam", "/key"}, {edgeAddr, host, "/"}} {
		nc, err := net.Dial("tcp", target.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", target.path, target.host)
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil {
			t.Fatalf("keep-alive request to %s: %v", target.addr, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		nc.SetDeadline(time.Time{})
		mine.conns = append(mine.conns, nc)
	}

	var flood keepAliveFlood
	defer flood.close()
	per := fullCapMax / fullCapSources
	t0 := time.Now()
	coordHeld := flood.open(t, 4, c.addr, "beam", "/key", per)
	edgeHeld := flood.open(t, 5, edgeAddr, "nosuch.localhost", "/", per)
	t.Logf("flood: %d connections answered by the coordinator's listener, %d by the edge's, from %d addresses each in %v; %d still held",
		coordHeld, edgeHeld, fullCapSources, time.Since(t0).Round(time.Millisecond), flood.held())
	if coordHeld < fullCapMax*3/4 || edgeHeld < fullCapMax*3/4 {
		t.Fatalf("the flood got %d and %d connections answered, want about the caps of %d: the test did not load the server", coordHeld, edgeHeld, fullCapMax)
	}

	// The coordinator answers new connections, on and on, and the route
	// answers at the edge.
	for i := range 5 {
		if ok, how := answersNew(c.url+"/key", "", ""); !ok {
			t.Errorf("GET /key on a new connection under the flood (try %d): %s", i, how)
			break
		}
	}
	for i := range 3 {
		if ok, how := answersNew("http://"+edgeAddr+"/", host, "hello from alpha"); !ok {
			t.Errorf("the route on a new connection under the flood (try %d): %s", i, how)
			break
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// A device joins and sees alpha.
	beta.mustUp()
	waitFor(t, 20*time.Second, "beta sees alpha online under the flood", func() bool {
		p := peerByName(beta.status(), "alpha")
		return p != nil && p.Online
	})

	// The flood reconnects, as much again: it pushes out its own.
	flood.open(t, 4, c.addr, "beam", "/key", per)
	flood.open(t, 5, edgeAddr, "nosuch.localhost", "/", per)
	for i, nc := range mine.conns {
		if !stillOpen(nc, 100*time.Millisecond) {
			t.Errorf("the keep-alive connection %d from 127.0.0.1, held from before the flood, was closed", i)
		}
	}
	if ok, how := answersNew(c.url+"/key", "", ""); !ok {
		t.Errorf("GET /key after the flood reconnected: %s", how)
	}
	if ok, how := answersNew("http://"+edgeAddr+"/", host, "hello from alpha"); !ok {
		t.Errorf("the route after the flood reconnected: %s", how)
	}
	if ok, why := ncEcho(beta, "alpha", echoServer(t), 15*time.Second); !ok {
		t.Fatalf("beta -> alpha under the flood: %s", why)
	}
}

// TestRelayFullConnCapFlood fills the connection cap of a beam derp
// (--max-conns 160) with relay connections, 20 from each of 8 loopback
// addresses, each with a new key. Two clients connected before keep
// relaying; a new client connects, pushing out one of the flood's
// connections (a connection taken over from HTTP, which must really be
// closed); and the flood's reconnects push out only its own.
func TestRelayFullConnCapFlood(t *testing.T) {
	relayURL := "http://" + startDerp(t, buildBeam(t), t.TempDir(), "derp", "--max-conns", strconv.Itoa(fullCapMax)).addr

	// dial connects a relay client from src (nil: the kernel's choice)
	// with a new key.
	dial := func(src net.IP) (*derp.Client, key.NodePrivate, error) {
		k := key.NewNode()
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		d := &net.Dialer{}
		if src != nil {
			d.LocalAddr = &net.TCPAddr{IP: src}
		}
		dc, err := derp.Dial(ctx, relayURL, k, derp.ClientOptions{DialContext: d.DialContext})
		return dc, k, err
	}
	a, _, err := dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, bKey, err := dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	relays := relayProbe(t, a, b, bKey)
	relays("before the flood")

	// The flood: relay clients that read until their connection ends.
	var (
		wg             sync.WaitGroup
		mu             sync.Mutex
		flood          []*derp.Client
		connected, cut atomic.Int64
	)
	defer func() {
		mu.Lock()
		for _, dc := range flood {
			dc.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	openFlood := func() {
		for range fullCapMax / fullCapSources {
			for i := range fullCapSources {
				dc, _, err := dial(capSource(6, i))
				if err != nil {
					continue
				}
				connected.Add(1)
				mu.Lock()
				flood = append(flood, dc)
				mu.Unlock()
				wg.Go(func() {
					for {
						if _, err := dc.Recv(); err != nil {
							cut.Add(1)
							return
						}
					}
				})
			}
		}
	}
	openFlood()
	t.Logf("flood: %d relay connections from %d addresses, %d cut so far", connected.Load(), fullCapSources, cut.Load())
	if connected.Load() < fullCapMax*3/4 {
		t.Fatalf("the flood connected %d relay clients, want about the cap of %d: the test did not load the relay", connected.Load(), fullCapMax)
	}
	relays("under the flood")

	// New clients connect, each pushing out one of the flood's.
	cutBefore := cut.Load()
	for i := range 3 {
		dc, _, err := dial(nil)
		if err != nil {
			t.Fatalf("a new relay client under the flood (try %d): %v", i, err)
		}
		defer dc.Close()
	}
	waitFor(t, 10*time.Second, "flood connections pushed out and closed", func() bool { return cut.Load() >= cutBefore+3 })

	// The flood reconnects, as much again: it pushes out its own.
	openFlood()
	t.Logf("after the flood reconnected: %d relay connections made, %d cut", connected.Load(), cut.Load())
	relays("after the flood reconnected")
	dc, _, err := dial(nil)
	if err != nil {
		t.Fatalf("a new relay client after the flood reconnected: %v", err)
	}
	dc.Close()
}
