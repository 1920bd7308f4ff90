package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The benchmarks in this file measure what users run: the real beam
// binary as separate processes (`beam server --dev`, daemons started by
// `beam up`), each against a baseline on raw loopback measured in the
// same run. Baseline and Beam take turns in short rounds, so load on a
// shared machine, which comes and goes within a run, falls on both.
//
// Each reports its throughput (Gbit/s or req/s), the baseline's, their
// ratio, and the CPU the Beam processes spent per GiB (or per request),
// read from /proc before and after each Beam round.

// procStatusMiB returns the value of a kB field of /proc/PID/status
// ("VmRSS", "VmHWM") in MiB.
func procStatusMiB(tb testing.TB, pid int, field string) float64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			kb, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb / 1024
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux ABI Go supports).
const clockTick = 10 * time.Millisecond

// procCPU returns the CPU time (user and system) the processes pids used
// so far.
func procCPU(tb testing.TB, pids ...int) time.Duration {
	tb.Helper()
	var sum time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			tb.Fatal(err)
		}
		// The command name (field 2) may hold spaces; the fields after
		// its closing parenthesis start at field 3 (state).
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		if i < 0 || len(f) < 13 {
			tb.Fatalf("/proc/%d/stat: %q", pid, b)
		}
		for _, s := range f[11:13] { // utime, stime: fields 14 and 15
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				tb.Fatalf("/proc/%d/stat: %v", pid, err)
			}
			sum += time.Duration(n) * clockTick
		}
	}
	return sum
}

// daemonPID returns the PID of d's daemon, from the file it writes.
func daemonPID(tb testing.TB, d *device) int {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(d.state, "daemon.pid"))
	if err != nil {
		tb.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatalf("daemon.pid: %v", err)
	}
	return pid
}

// countSink counts the bytes that arrive on the connections a listener
// accepts, so a sender can wait until all it sent has arrived.
type countSink struct {
	ln    net.Listener
	mu    sync.Mutex
	moved sync.Cond // broadcast (with mu) after each read
	total int64
	err   error // the first read error other than EOF
}

// newCountSink listens on host loopback and counts what arrives until tb
// is cleaned up.
func newCountSink(tb testing.TB) *countSink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return serveCountSink(tb, ln)
}

// serveCountSink counts what arrives on the connections ln accepts until
// tb is cleaned up.
func serveCountSink(tb testing.TB, ln net.Listener) *countSink {
	k := &countSink{ln: ln}
	k.moved.L = &k.mu
	var wg sync.WaitGroup
	var cmu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cmu.Lock()
			conns[c] = true
			cmu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 256<<10)
				for {
					n, err := c.Read(buf)
					k.mu.Lock()
					k.total += int64(n)
					if err != nil && !errors.Is(err, io.EOF) && k.err == nil {
						k.err = err
					}
					k.moved.Broadcast()
					k.mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		cmu.Lock()
		for c := range conns {
			c.Close()
		}
		cmu.Unlock()
		wg.Wait()
	})
	return k
}

func (k *countSink) port() int { return k.ln.Addr().(*net.TCPAddr).Port }

// reached blocks until at least n bytes have arrived in total and
// reports whether they did within timeout (false also if a connection
// failed).
func (k *countSink) reached(n int64, timeout time.Duration) bool {
	timedOut := false
	timer := time.AfterFunc(timeout, func() {
		k.mu.Lock()
		timedOut = true
		k.moved.Broadcast()
		k.mu.Unlock()
	})
	defer timer.Stop()
	k.mu.Lock()
	defer k.mu.Unlock()
	for k.total < n && k.err == nil && !timedOut {
		k.moved.Wait()
	}
	return k.total >= n
}

// wait blocks until at least n bytes have arrived in total, or fails tb
// after timeout.
func (k *countSink) wait(tb testing.TB, n int64, timeout time.Duration) {
	tb.Helper()
	if !k.reached(n, timeout) {
		k.mu.Lock()
		defer k.mu.Unlock()
		tb.Fatalf("sink counted %d bytes within %v, want %d (connection error: %v)", k.total, timeout, n, k.err)
	}
}

// bulkStream is one connection that sends to a countSink.
type bulkStream struct {
	c    net.Conn
	k    *countSink
	sent int64 // sent by all streams to k, before this one's latest send
	buf  []byte
}

// bulkTimeout bounds the wait for bytes already sent to arrive: far above
// any round (a 16 MiB round at 10 Mbit/s takes 13 s).
const bulkTimeout = 60 * time.Second

func newBulkStream(c net.Conn, k *countSink) *bulkStream {
	k.mu.Lock()
	defer k.mu.Unlock()
	return &bulkStream{c: c, k: k, sent: k.total, buf: make([]byte, 64<<10)}
}

// sendBytes writes n bytes in 64 KiB writes and returns how long it took
// until the sink had counted them all.
func (s *bulkStream) sendBytes(tb testing.TB, n int64) time.Duration {
	tb.Helper()
	start := time.Now()
	for end := s.sent + n; s.sent < end; {
		m := min(int64(len(s.buf)), end-s.sent)
		if _, err := s.c.Write(s.buf[:m]); err != nil {
			tb.Fatalf("write: %v", err)
		}
		s.sent += m
	}
	s.k.wait(tb, s.sent, bulkTimeout)
	return time.Since(start)
}

// sendFor writes in 64 KiB writes until d has passed, and returns the
// bytes written and how long it took until the sink had counted them.
func (s *bulkStream) sendFor(tb testing.TB, d time.Duration) (int64, time.Duration) {
	tb.Helper()
	start := time.Now()
	from := s.sent
	for time.Since(start) < d {
		if _, err := s.c.Write(s.buf); err != nil {
			tb.Fatalf("write: %v", err)
		}
		s.sent += int64(len(s.buf))
	}
	s.k.wait(tb, s.sent, bulkTimeout)
	return s.sent - from, time.Since(start)
}

// dialSOCKS5 connects to host:port through the SOCKS5 proxy at proxy.
func dialSOCKS5(proxy, host string, port int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxy, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(socks5Connect(host, port, "")); err != nil {
		c.Close()
		return nil, fmt.Errorf("socks5 request: %w", err)
	}
	// Method choice (2 bytes), then the reply: VER REP RSV ATYP, the
	// bound address and port.
	hdr := make([]byte, 6)
	if _, err := io.ReadFull(c, hdr); err != nil {
		c.Close()
		return nil, fmt.Errorf("socks5 reply: %w", err)
	}
	if hdr[0] != 5 || hdr[1] != 0 || hdr[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks5: method reply %x, connect reply code %d", hdr[:2], hdr[3])
	}
	var rest int
	switch hdr[5] {
	case 1:
		rest = 4 + 2
	case 4:
		rest = 16 + 2
	case 3:
		l := make([]byte, 1)
		if _, err := io.ReadFull(c, l); err != nil {
			c.Close()
			return nil, fmt.Errorf("socks5 reply: %w", err)
		}
		rest = int(l[0]) + 2
	default:
		c.Close()
		return nil, fmt.Errorf("socks5: reply address type %d", hdr[5])
	}
	if _, err := io.ReadFull(c, make([]byte, rest)); err != nil {
		c.Close()
		return nil, fmt.Errorf("socks5 reply: %w", err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// overlayPair is a dev server and two daemons: alpha with a SOCKS5 proxy,
// and beta, whose inbound forward delivers to its host's loopback.
type overlayPair struct {
	c           *cluster
	alpha, beta *device
	socks       string // alpha's SOCKS5 proxy
	pids        []int  // the daemons
	serverPID   int
}

// newOverlayPair starts the server and both daemons, with env added to
// the daemons' environment. The server's relay does not limit its
// clients' rate (--relay-rate off): the pair measures the daemons' data
// path, relay included, not the relay's per-client limit.
func newOverlayPair(tb testing.TB, env ...string) *overlayPair {
	c, _ := startDevServerWith(tb, 0, "--relay-rate", "off")
	return overlayPairOn(tb, c, env...)
}

// overlayPairOn starts both daemons on the server of c, with env added
// to their environment.
func overlayPairOn(tb testing.TB, c *cluster, env ...string) *overlayPair {
	p := &overlayPair{c: c, serverPID: c.coord.Process.Pid}
	p.socks = "127.0.0.1:" + strconv.Itoa(freePort(tb))
	p.alpha, p.beta = c.device("alpha"), c.device("beta")
	for _, d := range []*device{p.alpha, p.beta} {
		args := []string{"up", "--coordinator", c.url, "--hostname", d.name}
		if d == p.alpha {
			args = append(args, "--socks5", p.socks)
		}
		if out, errOut, err := c.beam(env, d.args(args...)...); err != nil {
			logb, _ := os.ReadFile(filepath.Join(d.state, "beam.log"))
			tb.Fatalf("beam up %s: %v\nstdout: %s\nstderr: %s\ndaemon log:\n%s", d.name, err, out, errOut, logb)
		}
		p.pids = append(p.pids, daemonPID(tb, d))
	}
	waitFor(tb, 30*time.Second, "alpha sees beta online", func() bool { return p.path() != "" })
	return p
}

// path returns alpha's path to beta ("direct", "relay", "none"), or ""
// while beta is not an online peer.
func (p *overlayPair) path() string {
	for _, peer := range p.alpha.status().Peers {
		if peer.Name == "beta" && peer.Online {
			return peer.Path
		}
	}
	return ""
}

// dialBeta connects through alpha's proxy to port on beta's host.
func (p *overlayPair) dialBeta(tb testing.TB, port int) net.Conn {
	tb.Helper()
	var c net.Conn
	var err error
	// Name and path may take a moment after beta comes online.
	waitFor(tb, 30*time.Second, "SOCKS5 connect to beta", func() bool {
		c, err = dialSOCKS5(p.socks, "beta", port)
		return err == nil
	})
	return c
}

// namedStream is a bulk stream of another path that bulkRounds measures
// s against, besides raw loopback.
type namedStream struct {
	name string
	s    *bulkStream
	n    int64
	d    time.Duration
}

// bulkRounds measures bulk TCP over s against raw loopback TCP: each
// iteration of b.Loop sends roundBytes over s (timed), then as long again
// over each of others and over raw (not timed). cpuPIDs and serverPID are
// the Beam processes whose CPU is read around each timed round. Besides
// the ratio to raw it reports one to each of others (NAME-ratio).
func bulkRounds(b *testing.B, s, raw *bulkStream, cpuPIDs []int, serverPID int, others ...*namedStream) {
	const roundBytes = 16 << 20
	// Warm up all: handshakes, windows.
	raw.sendBytes(b, 8<<20)
	for _, o := range others {
		o.s.sendBytes(b, 8<<20)
	}
	s.sendBytes(b, 8<<20)
	b.SetBytes(roundBytes)
	var od, rd, dcpu, scpu time.Duration
	var ob, rb int64
	b.ResetTimer()
	for b.Loop() {
		d0, s0 := procCPU(b, cpuPIDs...), procCPU(b, serverPID)
		d := s.sendBytes(b, roundBytes)
		dcpu += procCPU(b, cpuPIDs...) - d0
		scpu += procCPU(b, serverPID) - s0
		od += d
		ob += roundBytes
		b.StopTimer()
		for _, o := range others {
			n, od := o.s.sendFor(b, d)
			o.n += n
			o.d += od
		}
		n, d := raw.sendFor(b, d)
		rb += n
		rd += d
		b.StartTimer()
	}
	b.StopTimer()
	gbit := func(n int64, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e9 }
	gib := float64(ob) / (1 << 30)
	b.ReportMetric(gbit(ob, od), "Gbit/s")
	b.ReportMetric(gbit(rb, rd), "raw-Gbit/s")
	b.ReportMetric(gbit(ob, od)/gbit(rb, rd), "ratio")
	for _, o := range others {
		b.ReportMetric(gbit(o.n, o.d), o.name+"-Gbit/s")
		b.ReportMetric(gbit(ob, od)/gbit(o.n, o.d), o.name+"-ratio")
	}
	b.ReportMetric(dcpu.Seconds()/gib, "daemon-cpu-s/GiB")
	b.ReportMetric(scpu.Seconds()/gib, "server-cpu-s/GiB")
	var hwm float64
	for _, pid := range cpuPIDs {
		hwm = max(hwm, procStatusMiB(b, pid, "VmHWM"))
	}
	b.ReportMetric(hwm, "daemon-peak-RSS-MiB")
}

// benchOverlay measures bulk TCP from a client through alpha's SOCKS5
// proxy to beta by name, which forwards it to a sink on its host's
// loopback, against raw loopback TCP; wantPath is the path alpha must use.
func benchOverlay(b *testing.B, wantPath string, env ...string) {
	p := newOverlayPair(b, env...)
	rawSink, sink := newCountSink(b), newCountSink(b)
	rc, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(rawSink.port()))
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	oc := p.dialBeta(b, sink.port())
	defer oc.Close()
	s := newBulkStream(oc, sink)
	s.sendBytes(b, 1<<20)
	waitFor(b, 30*time.Second, "a "+wantPath+" path to beta", func() bool { return p.path() == wantPath })
	bulkRounds(b, s, newBulkStream(rc, rawSink), p.pids, p.serverPID)
	if got := p.path(); got != wantPath {
		b.Fatalf("after the rounds alpha reaches beta over %q, want %q", got, wantPath)
	}
}

// BenchmarkDaemonDirect measures the direct path between two daemons:
// bulk TCP through alpha's SOCKS5 proxy to beta's forward to its
// loopback, against raw loopback TCP.
func BenchmarkDaemonDirect(b *testing.B) { benchOverlay(b, "direct") }

// BenchmarkDaemonRelay is BenchmarkDaemonDirect over the relay of `beam
// server` (the daemons run with BEAM_DEBUG_ALWAYS_RELAY=1).
func BenchmarkDaemonRelay(b *testing.B) {
	benchOverlay(b, "relay", "BEAM_DEBUG_ALWAYS_RELAY=1")
}

// exposeTCP runs `beam expose --tcp port --bg` on d and returns the edge
// port it was given.
func exposeTCP(tb testing.TB, c *cluster, d *device, port int) int {
	tb.Helper()
	out := strings.TrimSpace(c.mustBeam(d.args("expose", "--tcp", strconv.Itoa(port), "--bg")...))
	m := regexp.MustCompile(`^tcp://[^:]+:(\d+)$`).FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("beam expose --tcp printed %q, want tcp://HOST:PORT", out)
	}
	edge, _ := strconv.Atoi(m[1])
	return edge
}

// BenchmarkExposeTCP measures bulk TCP through `beam server`'s edge port
// for `beam expose --tcp` to a sink on the device's loopback, against raw
// loopback TCP and against the plain overlay path to the same device in
// the same rounds: another daemon's SOCKS5 proxy to the device's forward
// to its loopback (overlay-Gbit/s; overlay-ratio is the edge's share of
// it).
func BenchmarkExposeTCP(b *testing.B) {
	p := newOverlayPair(b)
	c, beta := p.c, p.beta
	rawSink, sink, ovSink := newCountSink(b), newCountSink(b), newCountSink(b)
	edge := exposeTCP(b, c, beta, sink.port())
	rc, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(rawSink.port()))
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	oc := p.dialBeta(b, ovSink.port())
	defer oc.Close()
	ov := newBulkStream(oc, ovSink)
	ov.sendBytes(b, 1<<20)
	waitFor(b, 30*time.Second, "a direct path to beta", func() bool { return p.path() == "direct" })
	// The edge opens the port when it learns the route; a connection it
	// accepts before it can reach the device ends without delivering.
	var s *bulkStream
	waitFor(b, 30*time.Second, "bytes through the edge port", func() bool {
		ec, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(edge))
		if err != nil {
			return false
		}
		st := newBulkStream(ec, sink)
		if _, err := ec.Write([]byte("x")); err != nil || !sink.reached(st.sent+1, 2*time.Second) {
			ec.Close()
			return false
		}
		st.sent++
		s = st
		return true
	})
	defer s.c.Close()
	bulkRounds(b, s, newBulkStream(rc, rawSink), []int{daemonPID(b, beta)}, c.coord.Process.Pid,
		&namedStream{name: "overlay", s: ov})
}

// httpLoad runs conns keep-alive clients that GET url through a client
// dialing addr, for d, and returns the requests that succeeded.
func httpLoad(tb testing.TB, client *http.Client, url string, conns int, d time.Duration) int64 {
	var n atomic.Int64
	var failed atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed.CompareAndSwap(nil, err.Error())
					}
					return
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					if ctx.Err() == nil {
						failed.CompareAndSwap(nil, fmt.Sprintf("status %d, %v", resp.StatusCode, err))
					}
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f != nil {
		tb.Fatalf("GET %s: %v", url, f)
	}
	return n.Load()
}

// httpLatencies sends GETs of url one after another on one keep-alive
// connection of client for d, and appends the time each took to lat.
func httpLatencies(tb testing.TB, client *http.Client, url string, d time.Duration, lat []time.Duration) []time.Duration {
	tb.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); {
		start := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			tb.Fatalf("GET %s: %v", url, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			tb.Fatalf("GET %s: status %d, %v", url, resp.StatusCode, err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

// median returns the middle of ds, which it sorts.
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// httpClient returns a client with room for conns idle keep-alive
// connections, which dials addr whatever the URL's host.
func httpClient(addr string, conns int) *http.Client {
	var dialer net.Dialer
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
	}}
}

// BenchmarkExposeHTTP measures requests per second through `beam
// server`'s edge to an app published with `beam expose`, with 50
// keep-alive clients, against the same clients on the app directly: each
// iteration is a timed half second through the edge, then an untimed
// half second direct. Then, untimed, it measures the latency of one
// client's requests on one keep-alive connection (the median, edge and
// direct taking turns in short rounds) and reports their ratio.
func BenchmarkExposeHTTP(b *testing.B) {
	const conns = 50
	const round = 500 * time.Millisecond
	x := newExposedApp(b)
	url, httpPort, aln := x.url, x.httpPort, x.app
	edge := httpClient("127.0.0.1:"+strconv.Itoa(httpPort), conns)
	direct := httpClient(aln.Addr().String(), conns)
	pids := []int{x.daemonPID}
	server := x.serverPID
	httpLoad(b, edge, url+"/", conns, round)
	httpLoad(b, direct, "http://"+aln.Addr().String()+"/", conns, round)
	var ed, dd, dcpu, scpu time.Duration
	var en, dn int64
	b.ResetTimer()
	for b.Loop() {
		d0, s0 := procCPU(b, pids...), procCPU(b, server)
		start := time.Now()
		en += httpLoad(b, edge, url+"/", conns, round)
		ed += time.Since(start)
		dcpu += procCPU(b, pids...) - d0
		scpu += procCPU(b, server) - s0
		b.StopTimer()
		start = time.Now()
		dn += httpLoad(b, direct, "http://"+aln.Addr().String()+"/", conns, round)
		dd += time.Since(start)
		b.StartTimer()
	}
	b.StopTimer()
	edge1, direct1 := httpClient("127.0.0.1:"+strconv.Itoa(httpPort), 1), httpClient(aln.Addr().String(), 1)
	var elat, dlat []time.Duration
	for range 5 {
		elat = httpLatencies(b, edge1, url+"/", round/5, elat)
		dlat = httpLatencies(b, direct1, "http://"+aln.Addr().String()+"/", round/5, dlat)
	}
	e50, d50 := median(elat), median(dlat)
	b.ReportMetric(float64(e50.Microseconds())/1000, "c1-p50-ms")
	b.ReportMetric(float64(d50.Microseconds())/1000, "direct-c1-p50-ms")
	b.ReportMetric(float64(e50)/float64(d50), "c1-p50-ratio")
	rps, drps := float64(en)/ed.Seconds(), float64(dn)/dd.Seconds()
	b.ReportMetric(rps, "req/s")
	b.ReportMetric(drps, "direct-req/s")
	b.ReportMetric(rps/drps, "ratio")
	b.ReportMetric(float64(dcpu.Microseconds())/float64(en), "daemon-cpu-us/req")
	b.ReportMetric(float64(scpu.Microseconds())/float64(en), "server-cpu-us/req")
}

// exposedApp is an HTTP app on host loopback that answers every request
// with 64 bytes, published by `beam expose` on a daemon of `beam server
// --dev`.
type exposedApp struct {
	url       string       // the public URL, http://alpha.localhost:PORT
	httpPort  int          // the edge's HTTP port on 127.0.0.1
	app       net.Listener // the app's own
	body      string
	daemonPID int
	serverPID int
}

// newExposedApp starts the server, the daemon and the app, publishes the
// app and waits until the edge reaches it.
func newExposedApp(b *testing.B) *exposedApp {
	c, httpPort := startDevServer(b)
	alpha := c.device("alpha")
	alpha.mustUp()
	x := &exposedApp{httpPort: httpPort, body: strings.Repeat("b", 64), serverPID: c.coord.Process.Pid}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, x.body) })}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go app.Serve(aln)
	b.Cleanup(func() { app.Close() })
	x.app = aln
	appPort := aln.Addr().(*net.TCPAddr).Port
	x.url = strings.TrimSpace(c.mustBeam(alpha.args("expose", strconv.Itoa(appPort), "--bg")...))
	if want := fmt.Sprintf("http://alpha.localhost:%d", httpPort); x.url != want {
		b.Fatalf("beam expose printed %q, want %q", x.url, want)
	}
	edge := httpClient("127.0.0.1:"+strconv.Itoa(httpPort), 1)
	waitFor(b, 30*time.Second, "the app through the edge", func() bool {
		resp, err := edge.Get(x.url + "/")
		if err != nil {
			return false
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200 && string(got) == x.body
	})
	x.daemonPID = daemonPID(b, alpha)
	return x
}

// wrkResult is what one wrk run reports.
type wrkResult struct {
	requests int64
	rps      float64
	p50      time.Duration // with --latency only
}

var (
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s*([0-9.]+)`)
	wrkP50      = regexp.MustCompile(`(?m)^\s*50%\s+([0-9.]+(?:us|ms|s))`)
	wrkErrors   = regexp.MustCompile(`(?m)^\s*(Non-2xx or 3xx responses|Socket errors):.*$`)
)

// duration is how long wrk sent requests, by its own clock.
func (r wrkResult) duration() time.Duration {
	return time.Duration(float64(r.requests) / r.rps * float64(time.Second))
}

// runWrk runs wrk with conns connections (and as many threads, at most
// 2) for d against url, sending host as the Host header if not empty.
func runWrk(b *testing.B, url, host string, conns int, d time.Duration, latency bool) wrkResult {
	b.Helper()
	args := []string{"-t", strconv.Itoa(min(conns, 2)), "-c", strconv.Itoa(conns), "-d", d.String()}
	if host != "" {
		args = append(args, "-H", "Host: "+host)
	}
	if latency {
		args = append(args, "--latency")
	}
	out, err := exec.Command("wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk %v: %v\n%s", args, err, out)
	}
	if m := wrkErrors.FindString(string(out)); m != "" {
		b.Fatalf("wrk %s: %s\n%s", url, strings.TrimSpace(m), out)
	}
	var r wrkResult
	m, m2 := wrkRequests.FindSubmatch(out), wrkRPS.FindSubmatch(out)
	if m == nil || m2 == nil {
		b.Fatalf("wrk printed no request count:\n%s", out)
	}
	r.requests, _ = strconv.ParseInt(string(m[1]), 10, 64)
	r.rps, _ = strconv.ParseFloat(string(m2[1]), 64)
	if latency {
		m := wrkP50.FindSubmatch(out)
		if m == nil {
			b.Fatalf("wrk printed no median latency:\n%s", out)
		}
		if r.p50, err = time.ParseDuration(string(m[1])); err != nil {
			b.Fatalf("wrk median %q: %v", m[1], err)
		}
	}
	return r
}

// BenchmarkExposeHTTPWrk is BenchmarkExposeHTTP driven by wrk, as the
// edge is measured against other tunnels: each iteration is a timed
// second of wrk with 50 connections through the edge, then an untimed
// second on the app directly. Then, untimed, it takes the median latency
// of wrk with one connection (c1-p50-ms), edge and direct taking turns in
// five rounds, and reports the median of the rounds' medians and its
// ratio to direct. wrk is needed (.ci/run installs it).
func BenchmarkExposeHTTPWrk(b *testing.B) {
	if _, err := exec.LookPath("wrk"); err != nil {
		b.Fatalf("wrk is needed: %v", err)
	}
	const round = time.Second
	x := newExposedApp(b)
	edgeURL := "http://127.0.0.1:" + strconv.Itoa(x.httpPort) + "/"
	host := strings.TrimPrefix(x.url, "http://")
	directURL := "http://" + x.app.Addr().String() + "/"
	runWrk(b, edgeURL, host, 50, round, false)
	runWrk(b, directURL, "", 50, round, false)
	var ed, dd, dcpu, scpu time.Duration
	var en, dn int64
	b.ResetTimer()
	for b.Loop() {
		d0, s0 := procCPU(b, x.daemonPID), procCPU(b, x.serverPID)
		r := runWrk(b, edgeURL, host, 50, round, false)
		dcpu += procCPU(b, x.daemonPID) - d0
		scpu += procCPU(b, x.serverPID) - s0
		en += r.requests
		ed += r.duration()
		b.StopTimer()
		r = runWrk(b, directURL, "", 50, round, false)
		dn += r.requests
		dd += r.duration()
		b.StartTimer()
	}
	b.StopTimer()
	var elat, dlat []time.Duration
	for range 5 {
		elat = append(elat, runWrk(b, edgeURL, host, 1, round, true).p50)
		dlat = append(dlat, runWrk(b, directURL, "", 1, round, true).p50)
	}
	e50, d50 := median(elat), median(dlat)
	b.ReportMetric(float64(e50.Microseconds())/1000, "c1-p50-ms")
	b.ReportMetric(float64(d50.Microseconds())/1000, "direct-c1-p50-ms")
	b.ReportMetric(float64(e50)/float64(d50), "c1-p50-ratio")
	rps, drps := float64(en)/ed.Seconds(), float64(dn)/dd.Seconds()
	b.ReportMetric(rps, "req/s")
	b.ReportMetric(drps, "direct-req/s")
	b.ReportMetric(rps/drps, "ratio")
	b.ReportMetric(float64(dcpu.Microseconds())/float64(en), "daemon-cpu-us/req")
	b.ReportMetric(float64(scpu.Microseconds())/float64(en), "server-cpu-us/req")
}
