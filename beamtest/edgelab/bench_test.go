package edgelab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// Helpers of the throughput comparison.
const (
	// helperSink serves TCP on ADDR; on each connection it reads until
	// EOF, then writes "SHA256HEX LENGTH\n" and closes. It prints
	// "listening ADDR".
	helperSink = "edgelab.sink"
	// helperSend connects to ADDR, sends SIZE bytes of testStream, and
	// checks the sink's answer; it prints "sent SIZE MS".
	helperSend = "edgelab.send"
)

var (
	_ = nslab.RegisterHelper(helperSink, runSink)
	_ = nslab.RegisterHelper(helperSend, runSend)
)

const sinkPort = 7001

func runSink(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return errors.New("want ADDR")
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			cancel := context.AfterFunc(ctx, func() { c.Close() })
			defer cancel()
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%x %d\n", h.Sum(nil), n)
		})
	}
}

// sinkAnswer is what the sink says after size bytes of testStream.
func sinkAnswer(size int64) string {
	h := sha256.New()
	io.Copy(h, testStream(size))
	return fmt.Sprintf("%x %d", h.Sum(nil), size)
}

func runSend(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return errors.New("want ADDR SIZE")
	}
	size, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return err
	}
	want := sinkAnswer(size)
	start := time.Now()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", args[0])
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := io.Copy(c, testStream(size)); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(got)) != want {
		return fmt.Errorf("sink answered %q, want %q", got, want)
	}
	fmt.Printf("sent %d %d\n", size, time.Since(start).Milliseconds())
	return nil
}

// wrkResult is what one wrk run measured.
type wrkResult struct {
	rps     float64
	p99     time.Duration
	non2xx  int // responses that were not 2xx or 3xx
	sockErr int // connect, read, write errors and timeouts
	total   int
}

// bad reports whether the run failed: any error status, or socket errors
// on more than 1% of requests.
func (r wrkResult) bad() bool { return r.total == 0 || r.non2xx > 0 || r.sockErr*100 > r.total }

var (
	wrkRPS   = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkP99   = regexp.MustCompile(`(?m)^\s+99%\s+([\d.]+)(us|ms|s)\b`)
	wrkTotal = regexp.MustCompile(`(\d+) requests in`)
	wrkNon2  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSock  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// runWrk runs wrk on h with 50 keep-alive connections for 4 s.
func runWrk(ctx context.Context, h *nslab.Host, url string, extra ...string) (wrkResult, string, error) {
	args := append([]string{"-t2", "-c50", "-d4s", "--timeout", "10s", "--latency"}, extra...)
	out, err := h.Run(ctx, "wrk", append(args, url)...)
	s := string(out)
	if err != nil {
		return wrkResult{}, s, err
	}
	var r wrkResult
	m := wrkRPS.FindStringSubmatch(s)
	p := wrkP99.FindStringSubmatch(s)
	tot := wrkTotal.FindStringSubmatch(s)
	if m == nil || p == nil || tot == nil {
		return r, s, fmt.Errorf("wrk output not understood:\n%s", s)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	v, _ := strconv.ParseFloat(p[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[p[2]]
	r.p99 = time.Duration(v * float64(unit))
	r.total, _ = strconv.Atoi(tot[1])
	if e := wrkNon2.FindStringSubmatch(s); e != nil {
		n, _ := strconv.Atoi(e[1])
		r.non2xx = n
	}
	if e := wrkSock.FindStringSubmatch(s); e != nil {
		for _, x := range e[1:] {
			n, _ := strconv.Atoi(x)
			r.sockErr += n
		}
	}
	return r, s, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestEdgeBench measures the edge against baselines in the same run:
// HTTP keep-alive requests per second and p99 latency through the edge
// and straight at the origin (wrk, 50 connections); TCP throughput
// through a --tcp route and over the plain overlay (beam nc); and the
// memory of the edge process holding 1,000 WebSockets.
func TestEdgeBench(t *testing.T) {
	w := newWorld(t, worldConfig{clients: 2})
	ctx := t.Context()
	alpha := w.addDevice("alpha", nslab.NATEasy, "")
	pub := w.addDevice("pub", nslab.NATNone, "")
	if err := upAll(ctx, alpha, pub); err != nil {
		t.Fatal(err)
	}
	waitOut(t, alpha.host.StartHelper(ctx, helperSink, "127.0.0.1:"+strconv.Itoa(sinkPort)), "listening", 10*time.Second)
	url, err := alpha.expose(ctx, strconv.Itoa(appPort))
	if err != nil {
		t.Fatal(err)
	}
	if url != "http://alpha."+domain {
		t.Fatalf("expose printed %q", url)
	}
	if err := retry(ctx, 10*time.Second, func() error {
		body, err := w.curl(ctx, 0, url+"/")
		if err == nil && !strings.HasPrefix(body, "hello from alpha") {
			err = fmt.Errorf("GET %s: %q", url, body)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// Memory: 1,000 WebSockets through the edge, 500 from each of two
	// clients (the edge caps one client IP at 512 connections).
	base, err := rssKiB(w.server.PID())
	if err != nil {
		t.Fatal(err)
	}
	baseDev, _ := rssKiB(alpha.daemon.PID())
	const perClient = 500
	var holds []*nslab.Proc
	for i := range 2 {
		holds = append(holds, w.clients[i].StartHelper(ctx, helperClient, "-zone", hostPort(w.srv.Addr(), 53), "wshold", "ws://alpha."+domain+"/ws", strconv.Itoa(perClient)))
	}
	for _, p := range holds {
		line := waitOut(t, p, "open ", 90*time.Second)
		if !strings.HasPrefix(line, fmt.Sprintf("open %d failed 0", perClient)) {
			t.Fatalf("wshold: %s", line)
		}
	}
	held, err := rssKiB(w.server.PID())
	if err != nil {
		t.Fatal(err)
	}
	heldDev, _ := rssKiB(alpha.daemon.PID())
	perWS := float64(held-base) * 1024 / (2 * perClient)
	t.Logf("memory: edge process (beam server) RSS %d KiB idle, %d KiB with %d WebSockets open: %.1f KiB per WebSocket; device daemon %d -> %d KiB",
		base, held, 2*perClient, perWS/1024, baseDev, heldDev)
	for _, p := range holds {
		p.Stop()
	}
	if perWS > 200<<10 {
		t.Errorf("the edge holds %.0f KiB per open WebSocket; want under 200 KiB", perWS/1024)
	}

	// HTTP keep-alive: through the edge from a public client, and at the
	// origin from the device itself, interleaved.
	var edgeRPS, originRPS, edgeP99, originP99 []float64
	for range 2 {
		er, out, err := runWrk(ctx, w.clients[0], "http://"+w.srv.Addr().String()+"/", "-H", "Host: alpha."+domain)
		if err != nil || er.bad() {
			t.Fatalf("wrk through the edge: %+v, %v\n%s", er, err, out)
		}
		or, out, err := runWrk(ctx, alpha.host, "http://127.0.0.1:"+strconv.Itoa(appPort)+"/")
		if err != nil || or.bad() {
			t.Fatalf("wrk at the origin: %+v, %v\n%s", or, err, out)
		}
		edgeRPS, originRPS = append(edgeRPS, er.rps), append(originRPS, or.rps)
		edgeP99, originP99 = append(edgeP99, float64(er.p99)), append(originP99, float64(or.p99))
	}
	t.Logf("HTTP keep-alive, 50 connections: edge %.0f req/s p99 %v; origin %.0f req/s p99 %v; edge/origin throughput %.2f, p99 %.1fx",
		median(edgeRPS), time.Duration(median(edgeP99)).Round(time.Microsecond), median(originRPS), time.Duration(median(originP99)).Round(time.Microsecond),
		median(edgeRPS)/median(originRPS), median(edgeP99)/median(originP99))

	// TCP throughput: a public client through the --tcp route, and pub
	// over the plain overlay with beam nc, to the same sink on alpha.
	tcpURL, err := alpha.expose(ctx, "--tcp", strconv.Itoa(sinkPort))
	if err != nil {
		t.Fatal(err)
	}
	edgeAddr := hostPort(w.srv.Addr(), mustAtoi(t, publicPort(t, tcpURL)))
	const size = 64 << 20
	want := sinkAnswer(size)
	var viaEdge, viaOverlay []float64
	for range 3 {
		out, err := w.clients[0].RunHelper(ctx, helperSend, edgeAddr, strconv.Itoa(size))
		f := strings.Fields(string(out))
		if err != nil || len(f) != 3 {
			t.Fatalf("send through %s: %q, %v", tcpURL, out, err)
		}
		viaEdge = append(viaEdge, mbps(size, mustAtoi(t, f[2])))

		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		cmd := exec.CommandContext(cctx, w.bin, "--socket", pub.socket, "--state", pub.state, "nc", "alpha", strconv.Itoa(sinkPort))
		cmd.Stdin = testStream(size)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		got, err := cmd.Output()
		cancel()
		if err != nil || strings.TrimSpace(string(got)) != want {
			t.Fatalf("beam nc alpha after %v: %q, %v (stderr %q); want %q", time.Since(start).Round(time.Millisecond), got, err, stderr.String(), want)
		}
		viaOverlay = append(viaOverlay, mbps(size, int(time.Since(start).Milliseconds())))
	}
	path, _ := pub.beam(ctx, "status")
	t.Logf("TCP, 64 MiB, median of 3: through the edge (--tcp) %.0f Mbit/s, plain overlay (beam nc) %.0f Mbit/s, ratio %.2f; pub's view:\n%s",
		median(viaEdge), median(viaOverlay), median(viaEdge)/median(viaOverlay), path)
}

func mbps(size, ms int) float64 { return float64(size) * 8 / (float64(max(ms, 1)) / 1000) / 1e6 }

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
