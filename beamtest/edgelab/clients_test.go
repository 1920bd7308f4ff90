package edgelab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"

	"beam.dev/beam/beamtest/nslab"
	_ "beam.dev/beam/internal/h2xconnect" // wsh2's extended CONNECT
)

// helperClient is the public client written in Go. It resolves every name
// through the zone DNS server of flag -zone (Beam's authoritative zone)
// and trusts the PEM roots of flag -ca. Its first argument is a command:
//
//	ws URL N              send N messages over a WebSocket, check the echoes
//	grpc URL              a gRPC health check (gRPC wire format over h2)
//	sse URL               time the events of a server-sent event stream
//	upload URL SIZE       stream SIZE bytes of testStream, check the SHA-256
//	download URL SIZE     stream SIZE bytes back, check the SHA-256
//	wsh2 URL N            open a WebSocket over HTTP/2 (RFC 8441 extended CONNECT) to https URL, echo N messages
//	tlsinfo URL           print the server certificate's issuer, names and SHA-256, the body and the ALPN protocol
//	raw ADDR REQUEST      send REQUEST (Go-quoted) on TCP, print the first line back
//	load URL DUR RATE     GET URL RATE times a second for DUR; one line per request
//	wshold URL N          open N WebSockets, echo once on each, hold them until stopped
const helperClient = "edgelab.client"

var _ = nslab.RegisterHelper(helperClient, runClient)

type client struct {
	dialer *net.Dialer
	roots  *x509.CertPool
	out    io.Writer
}

func runClient(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	zone := fs.String("zone", "", "DNS server to resolve names with (ip:port)")
	caFile := fs.String("ca", "", "PEM roots to trust")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := &client{dialer: &net.Dialer{Timeout: 10 * time.Second}, out: os.Stdout}
	if *zone != "" {
		c.dialer.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, *zone)
		}}
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		c.roots = x509.NewCertPool()
		if !c.roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s holds no certificate", *caFile)
		}
	}
	a := fs.Args()
	if len(a) < 2 {
		return errors.New("want COMMAND ARGS")
	}
	num := func(i int) (int64, error) {
		if len(a) <= i {
			return 0, fmt.Errorf("%s: missing argument %d", a[0], i)
		}
		return strconv.ParseInt(a[i], 10, 64)
	}
	switch a[0] {
	case "ws":
		n, err := num(2)
		if err != nil {
			return err
		}
		return c.ws(ctx, a[1], int(n))
	case "grpc":
		return c.grpc(ctx, a[1])
	case "sse":
		return c.sse(ctx, a[1])
	case "upload":
		n, err := num(2)
		if err != nil {
			return err
		}
		return c.upload(ctx, a[1], n)
	case "download":
		n, err := num(2)
		if err != nil {
			return err
		}
		return c.download(ctx, a[1], n)
	case "tlsinfo":
		return c.tlsinfo(ctx, a[1])
	case "raw":
		if len(a) != 3 {
			return errors.New("raw: want ADDR REQUEST")
		}
		req, err := strconv.Unquote(a[2])
		if err != nil {
			return fmt.Errorf("raw: request: %w", err)
		}
		return c.raw(ctx, a[1], req)
	case "load":
		if len(a) != 4 {
			return errors.New("load: want URL DURATION RATE")
		}
		d, err := time.ParseDuration(a[2])
		if err != nil {
			return err
		}
		n, err := num(3)
		if err != nil {
			return err
		}
		return c.load(ctx, a[1], d, int(n))
	case "wsh2":
		n, err := num(2)
		if err != nil {
			return err
		}
		return c.wsh2(ctx, a[1], int(n))
	case "wshold":
		n, err := num(2)
		if err != nil {
			return err
		}
		return c.wshold(ctx, a[1], int(n))
	}
	return fmt.Errorf("unknown command %q", a[0])
}

func (c *client) tlsConfig() *tls.Config { return &tls.Config{RootCAs: c.roots} }

// httpClient returns a client that speaks HTTP/1.1, or HTTP/2 if h2.
func (c *client) httpClient(h2 bool) *http.Client {
	tr := &http.Transport{
		DialContext:         c.dialer.DialContext,
		TLSClientConfig:     c.tlsConfig(),
		ForceAttemptHTTP2:   h2,
		MaxIdleConnsPerHost: 64,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr}
}

func (c *client) ws(ctx context.Context, url string, n int) error {
	conn, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: c.httpClient(false)})
	if err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	defer conn.CloseNow()
	start := time.Now()
	for i := range n {
		msg := fmt.Sprintf("message %d of %d", i, n)
		if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			return err
		}
		_, b, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		if string(b) != msg {
			return fmt.Errorf("echo %q, want %q", b, msg)
		}
	}
	rtt := time.Since(start) / time.Duration(max(n, 1))
	conn.Close(websocket.StatusNormalClosure, "")
	fmt.Fprintf(c.out, "ws echoed %d messages status=%d mean_rtt=%v\n", n, resp.StatusCode, rtt)
	return nil
}

func (c *client) grpc(ctx context.Context, url string) error {
	tr := &http2.Transport{
		TLSClientConfig: c.tlsConfig(),
		DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
			d := tls.Dialer{NetDialer: c.dialer, Config: cfg}
			return d.DialContext(ctx, network, addr)
		},
	}
	// An empty HealthCheckRequest: no compression, length 0.
	req, err := http.NewRequestWithContext(ctx, "POST", url+"/grpc.health.v1.Health/Check", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || len(body) < 5 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
		return fmt.Errorf("gRPC answer: %s, body %x", resp.Status, body)
	}
	status := "UNKNOWN"
	if bytes.Equal(body[5:], []byte{0x08, 0x01}) {
		status = "SERVING"
	}
	fmt.Fprintf(c.out, "grpc proto=%s health=%s grpc-status=%q\n", resp.Proto, status, resp.Trailer.Get("Grpc-Status"))
	return nil
}

func (c *client) sse(ctx context.Context, url string) error {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.httpClient(true).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var times []time.Duration
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			times = append(times, time.Since(start))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	total := time.Since(start)
	if len(times) == 0 {
		return errors.New("no events")
	}
	fmt.Fprintf(c.out, "sse events=%d first_ms=%d last_ms=%d end_ms=%d proto=%s\n", len(times), times[0].Milliseconds(), times[len(times)-1].Milliseconds(), total.Milliseconds(), resp.Proto)
	return nil
}

func (c *client) upload(ctx context.Context, url string, size int64) error {
	h := sha256.New()
	body := io.TeeReader(testStream(size), h)
	req, err := http.NewRequestWithContext(ctx, "POST", url, body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	start := time.Now()
	resp, err := c.httpClient(false).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	d := time.Since(start)
	want := fmt.Sprintf("%x %d", h.Sum(nil), size)
	if strings.TrimSpace(string(got)) != want {
		return fmt.Errorf("upload: app saw %q, sent %q (%s)", got, want, resp.Status)
	}
	fmt.Fprintf(c.out, "upload ok bytes=%d sha256=%x ms=%d mbps=%.1f\n", size, h.Sum(nil), d.Milliseconds(), float64(size)*8/d.Seconds()/1e6)
	return nil
}

func (c *client) download(ctx context.Context, url string, size int64) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url+"?size="+strconv.FormatInt(size, 10), nil)
	if err != nil {
		return err
	}
	start := time.Now()
	resp, err := c.httpClient(false).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return err
	}
	d := time.Since(start)
	want := sha256.New()
	io.Copy(want, testStream(size))
	if n != size || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("download: got %d bytes sha256 %x, want %d bytes %x", n, h.Sum(nil), size, want.Sum(nil))
	}
	fmt.Fprintf(c.out, "download ok bytes=%d sha256=%x ms=%d mbps=%.1f\n", n, h.Sum(nil), d.Milliseconds(), float64(size)*8/d.Seconds()/1e6)
	return nil
}

func (c *client) tlsinfo(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := c.httpClient(true).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	leaf := resp.TLS.PeerCertificates[0]
	fmt.Fprintf(c.out, "issuer=%q subject=%q dns=%v status=%d body=%q sha256=%x alpn=%s\n", leaf.Issuer.CommonName, leaf.Subject.CommonName, leaf.DNSNames, resp.StatusCode, strings.TrimSpace(string(body)), sha256.Sum256(leaf.Raw), resp.TLS.NegotiatedProtocol)
	return nil
}

func (c *client) raw(ctx context.Context, addr, req string) error {
	conn, err := c.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintf(c.out, "raw closed: %v\n", err)
		return nil
	}
	fmt.Fprintf(c.out, "raw %s\n", strings.TrimSpace(line))
	return nil
}

// load starts a GET of url every 1/rate seconds for d, each on its own
// goroutine (an open loop: a slow answer does not hold the next request
// back), and prints "req START_UNIX_MS ok|err MS DETAIL" per request.
func (c *client) load(ctx context.Context, url string, d time.Duration, rate int) error {
	hc := c.httpClient(false)
	hc.Timeout = 10 * time.Second
	var mu sync.Mutex // serializes output lines
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.After(d)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
			continue
		case <-end:
			done = true
			continue
		case <-tick.C:
		}
		wg.Go(func() {
			start := time.Now()
			req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
			resp, err := hc.Do(req)
			var detail string
			ok := false
			if err == nil {
				b, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				ok = rerr == nil && resp.StatusCode == 200
				detail = fmt.Sprintf("%d %s", resp.StatusCode, strings.Fields(string(b) + " x x x")[2])
			} else {
				detail = strings.ReplaceAll(err.Error(), "\n", " ")
			}
			word := "err"
			if ok {
				word = "ok"
			}
			mu.Lock()
			fmt.Fprintf(c.out, "req %d %s %d %s\n", start.UnixMilli(), word, time.Since(start).Milliseconds(), detail)
			mu.Unlock()
		})
	}
	wg.Wait()
	return nil
}

// wshold opens n WebSockets (64 at a time), echoes one message on each,
// prints "open N", and holds them until ctx ends.
func (c *client) wshold(ctx context.Context, url string, n int) error {
	hc := c.httpClient(false)
	conns := make([]*websocket.Conn, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			conn, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: hc})
			if err == nil {
				if err = conn.Write(dctx, websocket.MessageText, []byte("hold")); err == nil {
					_, _, err = conn.Read(dctx)
				}
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			conns[i] = conn
		})
	}
	wg.Wait()
	fmt.Fprintf(c.out, "open %d failed %d first_err=%v\n", int64(n)-failed.Load(), failed.Load(), firstErr.Load())
	<-ctx.Done()
	for _, conn := range conns {
		if conn != nil {
			conn.CloseNow()
		}
	}
	return nil
}

// wsh2 opens a WebSocket over HTTP/2 with an extended CONNECT and checks
// N echoed text messages, with frames built by hand (no WebSocket
// library here speaks RFC 8441).
func (c *client) wsh2(ctx context.Context, url string, n int) error {
	tr := &http2.Transport{
		TLSClientConfig: c.tlsConfig(),
		DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
			raw, err := c.dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(raw, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		},
	}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, url, pr)
	if err != nil {
		return err
	}
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("extended CONNECT %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("extended CONNECT %s: %s %d", url, resp.Proto, resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	mask := [4]byte{0x5a, 0x17, 0xc3, 0x08}
	for i := range n {
		msg := fmt.Sprintf("message %d of %d", i, n)
		f := []byte{0x81, 0x80 | byte(len(msg))}
		f = append(f, mask[:]...)
		for j := range len(msg) {
			f = append(f, msg[j]^mask[j%4])
		}
		if _, err := pw.Write(f); err != nil {
			return err
		}
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return fmt.Errorf("read frame %d: %w", i, err)
		}
		if h[0] != 0x81 || h[1] >= 126 {
			return fmt.Errorf("frame %d: header % x, want an unmasked short text frame", i, h)
		}
		got := make([]byte, h[1])
		if _, err := io.ReadFull(br, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
	}
	fmt.Fprintf(c.out, "wsh2 echoed %d messages proto=%s status=%d mean_rtt=%v\n", n, resp.Proto, resp.StatusCode, time.Since(start)/time.Duration(max(n, 1)))
	return nil
}
