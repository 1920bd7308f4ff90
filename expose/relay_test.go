package expose

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"

	"beam.dev/beam/localapi/apitype"
)

// relayLab is an exposeProxy in front of an app, both on loopback: the
// test plays the edge.
type relayLab struct {
	proxy   *exposeProxy
	addr    string // the relay's listener
	appAddr string
	accepts atomic.Int64 // connections the app accepted

	logged chan struct{} // a token after new request log lines

	mu   sync.Mutex // guards logs
	logs []apitype.RequestLog
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// newRelayLab starts app (nil: nothing listens on its port) and a relay
// to it.
func newRelayLab(t *testing.T, app http.Handler) *relayLab {
	t.Helper()
	lab := &relayLab{logged: make(chan struct{}, 1)}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.appAddr = appLn.Addr().String()
	if app != nil {
		srv := &http.Server{Handler: app}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(countingListener{appLn, &lab.accepts})
		}()
		t.Cleanup(func() {
			srv.Close()
			<-done
		})
	} else {
		appLn.Close()
	}
	lab.startRelay(t)
	return lab
}

// startRelay starts the relay to lab.appAddr.
func (lab *relayLab) startRelay(t *testing.T) {
	t.Helper()
	_, port, _ := net.SplitHostPort(lab.appAddr)
	p16, _ := strconv.Atoi(port)
	p := newExposeProxy(exposeProxyOptions{
		Port:     uint16(p16),
		Target:   lab.appAddr,
		Watching: func() bool { return true },
		Publish: func(l apitype.RequestLog) {
			lab.mu.Lock()
			lab.logs = append(lab.logs, l)
			lab.mu.Unlock()
			select {
			case lab.logged <- struct{}{}:
			default:
			}
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.addr = ln.Addr().String()
	lab.proxy = p
	fromLoopbackEdge(p)
	p.serve(ln)
	t.Cleanup(p.close)
}

// waitLogs waits for n request log lines in all.
func (lab *relayLab) waitLogs(t *testing.T, n int) []apitype.RequestLog {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		logs := lab.requestLogs()
		if len(logs) >= n {
			return logs
		}
		select {
		case <-lab.logged:
		case <-timeout.C:
			t.Fatalf("%d request log lines, want %d: %+v", len(logs), n, logs)
		}
	}
}

func (lab *relayLab) requestLogs() []apitype.RequestLog {
	lab.mu.Lock()
	defer lab.mu.Unlock()
	return append([]apitype.RequestLog(nil), lab.logs...)
}

// client returns an HTTP/1.1 client whose connections go to the relay.
func (lab *relayLab) client(conns int) *http.Client {
	d := &net.Dialer{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", lab.addr)
		},
		MaxConnsPerHost:    conns,
		DisableCompression: true,
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// raw opens a connection to the relay for hand-written requests.
func (lab *relayLab) raw(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", lab.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

// checkLeaks checks, after every other cleanup of t, that the goroutines
// running now are all that remain.
func checkLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func TestRelayKeepAlive(t *testing.T) {
	checkLeaks(t)
	var appReqs atomic.Int64
	lab := newRelayLab(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		appReqs.Add(1)
		fmt.Fprintf(w, "%s %s host=%s xff=%s", r.Method, r.URL.RequestURI(), r.Host, r.Header.Get("X-Forwarded-For"))
	}))
	c := lab.client(1)
	defer c.CloseIdleConnections()
	for i := range 20 {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://app.example.test/n/%d?q=1", i), nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.9, 198.51.100.2")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("GET /n/%d?q=1 host=app.example.test xff=203.0.113.9, 198.51.100.2", i)
		if string(body) != want {
			t.Fatalf("body %q, want %q", body, want)
		}
	}
	if n := lab.accepts.Load(); n != 1 {
		t.Errorf("20 keep-alive requests opened %d connections to the app, want 1", n)
	}
	c.CloseIdleConnections()
	logs := lab.waitLogs(t, 20)
	if len(logs) != 20 {
		t.Fatalf("%d request log lines, want 20", len(logs))
	}
	l := logs[7]
	_, port, _ := net.SplitHostPort(lab.appAddr)
	if l.Host != "app.example.test" || l.Method != "GET" || l.Path != "/n/7?q=1" || l.Status != 200 ||
		l.Client != "203.0.113.9" || strconv.Itoa(int(l.Port)) != port || l.Duration <= 0 || l.Time.IsZero() {
		t.Errorf("log line %+v", l)
	}
}

func TestRelayNothingListening(t *testing.T) {
	lab := newRelayLab(t, nil)
	c, br := lab.raw(t)
	for i := range 2 {
		fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_, port, _ := net.SplitHostPort(lab.appAddr)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "Almost there") ||
			!strings.Contains(string(body), "port "+port) || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if resp.Close {
			t.Fatalf("request %d: the relay closes the connection after a 502 to a request without a body", i)
		}
	}
	// Once the app listens, the same connection reaches it.
	ln, err := net.Listen("tcp", lab.appAddr)
	if err != nil {
		t.Fatalf("listen on the app's port again: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up") })}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	defer func() { srv.Close(); <-done }()
	fmt.Fprintf(c, "HEAD /x HTTP/1.1\r\nHost: app.example.test\r\n\r\nGET /y HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
	head, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
	if err != nil || head.StatusCode != 200 {
		t.Fatalf("HEAD after the app started: %v %v", head, err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "up" {
		t.Fatalf("after the app started: %d %q", resp.StatusCode, body)
	}
	logs := lab.waitLogs(t, 4)
	if len(logs) != 4 || logs[0].Status != 502 || logs[1].Status != 502 || logs[2].Status != 200 || logs[3].Path != "/y" {
		t.Errorf("request log %+v", logs)
	}

	// A request with a body gets the page and the connection closes.
	lab2 := newRelayLab(t, nil)
	c2, br2 := lab2.raw(t)
	fmt.Fprintf(c2, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
	resp, err = http.ReadResponse(br2, nil)
	if err != nil || resp.StatusCode != 502 || !resp.Close {
		t.Fatalf("POST with nothing listening: %v %v", resp, err)
	}
}

func TestRelayBodies(t *testing.T) {
	lab := newRelayLab(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		switch r.URL.Path {
		case "/echo":
			w.Header().Set("X-Sum", fmt.Sprintf("%x", h.Sum(nil)))
			// Stream the sum back in a chunked body of many writes.
			for i := range 1000 {
				fmt.Fprintf(w, "%d,", i)
				if i%100 == 0 {
					http.NewResponseController(w).Flush()
				}
			}
		default:
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
		}
	}))
	c := lab.client(2)
	defer c.CloseIdleConnections()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	sum := fmt.Sprintf("%x", sha256.Sum256(big))
	resp, err := c.Post("http://h/len", "application/octet-stream", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("%d %s", len(big), sum); string(body) != want {
		t.Fatalf("Content-Length upload: %q, want %q", body, want)
	}
	// A chunked upload (unknown length) with Expect: 100-continue.
	req, _ := http.NewRequest("POST", "http://h/echo", io.MultiReader(bytes.NewReader(big[:1<<20]), strings.NewReader("tail")))
	req.Header.Set("Expect", "100-continue")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	wantSum := fmt.Sprintf("%x", sha256.Sum256(append(bytes.Clone(big[:1<<20]), "tail"...)))
	if got := resp.Header.Get("X-Sum"); got != wantSum {
		t.Fatalf("chunked upload sum %s, want %s", got, wantSum)
	}
	if !strings.HasPrefix(string(body), "0,1,2,") || !strings.HasSuffix(string(body), ",999,") {
		t.Fatalf("chunked response %q...", body[:min(len(body), 40)])
	}
}

func TestRelayStreams(t *testing.T) {
	release := make(chan struct{})
	lab := newRelayLab(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "data: second\n\n")
	}))
	defer close(release)
	c := lab.client(1)
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://h/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
}

func TestRelayUpgrade(t *testing.T) {
	lab := newRelayLab(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			io.WriteString(w, "no upgrade")
			return
		}
		if r.URL.Path == "/refuse" {
			http.Error(w, "not here", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		io.Copy(conn, brw)
	}))
	c, br := lab.raw(t)
	// A refused upgrade leaves an HTTP connection.
	fmt.Fprintf(c, "GET /refuse HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("refused upgrade: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	for _, msg := range []string{"hello\n", "GET / HTTP/1.1 is just bytes now\n"} {
		io.WriteString(c, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	c.Close()
	// The upgraded exchange is logged once it ends.
	if logs := lab.waitLogs(t, 2); len(logs) != 2 || logs[0].Status != 400 || logs[1].Status != 101 || logs[1].Path != "/ws" {
		t.Fatalf("request log %+v", logs)
	}
}

func TestRelayRefuses(t *testing.T) {
	var seen sync.Map
	lab := newRelayLab(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.Path, true)
		io.WriteString(w, "ok")
	}))
	tests := []struct {
		name   string
		req    string
		status int
	}{
		{"CL.TE smuggling", "POST /front HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"TE.CL smuggling", "POST /front HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"obfuscated TE", "POST /front HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", 501},
		{"bare LF", "GET /front HTTP/1.1\nHost: h\n\n", 400},
		{"huge head", "GET /front HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 1100) + "\r\n", 431},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, br := lab.raw(t)
			go io.WriteString(c, tc.req)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || !resp.Close {
				t.Errorf("status %d close %v, want %d and close", resp.StatusCode, resp.Close, tc.status)
			}
			io.Copy(io.Discard, resp.Body)
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("after the refusal: %v, want EOF", err)
			}
		})
	}
	// A bad chunk size in the middle of a body ends the connection.
	c, br := lab.raw(t)
	fmt.Fprintf(c, "POST /chunks HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err == nil && resp.StatusCode == 200 {
		t.Errorf("bad chunk size: %d", resp.StatusCode)
	}
	// Pipelined requests are answered in order, then a refused one.
	c, br = lab.raw(t)
	fmt.Fprintf(c, "GET /p1 HTTP/1.1\r\nHost: h\r\n\r\nGET /p2 HTTP/1.1\r\nHost: h\r\n\r\nGET /p3 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
	for i, want := range []int{200, 200, 400} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined response %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Errorf("pipelined response %d: %d, want %d", i, resp.StatusCode, want)
		}
	}
	if _, ok := seen.Load("/smuggled"); ok {
		t.Error("the app saw the smuggled request")
	}
	if _, ok := seen.Load("/front"); ok {
		t.Error("the app saw a refused request")
	}
}

func TestRelayBadResponses(t *testing.T) {
	// A raw app that answers each connection's first request with the
	// bytes its path names.
	answers := map[string]string{
		"/malformed":   "HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello",
		"/until-close": "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until the close",
		"/unasked-101": "HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"/close":       "",
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.WriteString(c, answers[req.URL.Path])
			})
		}
	})
	p := newExposeProxy(exposeProxyOptions{Port: 1, Target: ln.Addr().String()})
	fromLoopbackEdge(p)
	rln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.serve(rln)
	defer p.close()
	lab := &relayLab{addr: rln.Addr().String()}
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/malformed", 502, ""},
		{"/until-close", 200, "all of this until the close"},
		{"/unasked-101", 502, ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			c, br := lab.raw(t)
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", tc.path)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || tc.body != "" && string(body) != tc.body {
				t.Errorf("%d %q, want %d %q", resp.StatusCode, body, tc.status, tc.body)
			}
		})
	}
	// The app closing without an answer closes the client's connection
	// without one too, so the client may retry.
	c, br := lab.raw(t)
	fmt.Fprintf(c, "GET /close HTTP/1.1\r\nHost: h\r\n\r\n")
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("app closed without answering: client read %v, want EOF", err)
	}
}

func TestRelayHTTP2(t *testing.T) {
	var proto atomic.Value
	lab := newRelayLab(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto.Store(r.Proto)
		io.WriteString(w, "h2 ok")
	}))
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", lab.addr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://h/grpcish")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || string(body) != "h2 ok" {
		t.Fatalf("h2c through the relay: %s %q", resp.Proto, body)
	}
	logs := lab.waitLogs(t, 1)
	if len(logs) != 1 || logs[0].Path != "/grpcish" || logs[0].Status != 200 {
		t.Errorf("request log %+v", logs)
	}
}

// TestRelayClose checks that closing the proxy ends connections in every
// state and leaves no goroutine behind.
func TestRelayClose(t *testing.T) {
	checkLeaks(t)
	block, arrived := make(chan struct{}), make(chan struct{})
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			close(arrived)
			select {
			case <-block:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	})}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appDone := make(chan struct{})
	go func() { defer close(appDone); app.Serve(appLn) }()
	defer func() { close(block); app.Close(); <-appDone }()

	p := newExposeProxy(exposeProxyOptions{Port: 1, Target: appLn.Addr().String()})
	fromLoopbackEdge(p)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.serve(ln)
	// One idle connection, one in the middle of a head, one waiting for
	// the app. The relay accepts them in this order, so once the app has
	// the last one's request, all three are relayed.
	var conns []net.Conn
	for _, req := range []string{"", "GET /x HTTP/1.1\r\nHost: h\r\n", "GET /block HTTP/1.1\r\nHost: h\r\n\r\n"} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, req)
		conns = append(conns, c)
	}
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocked request never reached the app")
	}
	p.mu.Lock()
	n := len(p.conns)
	p.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d relayed connections, want 3", n)
	}
	closed := make(chan struct{})
	go func() { p.close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return")
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("connection %d after close: read %v, want EOF", i, err)
		}
	}
}

// newRawRelayLab starts a relay to an app that serves each connection
// with serve.
func newRawRelayLab(t *testing.T, serve func(net.Conn)) *relayLab {
	t.Helper()
	lab := &relayLab{logged: make(chan struct{}, 1)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.appAddr = ln.Addr().String()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			lab.accepts.Add(1)
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	lab.startRelay(t)
	return lab
}

// appGoneSeen reports whether every relayed connection has seen the app
// close its idle connection.
func (lab *relayLab) appGoneSeen() bool {
	p := lab.proxy
	p.mu.Lock()
	defer p.mu.Unlock()
	for rc := range p.conns {
		rc.mu.Lock()
		gone := rc.appGone
		rc.mu.Unlock()
		if !gone {
			return false
		}
	}
	return len(p.conns) > 0
}

// answerEcho answers one request on br/c with its method and body, keeping
// the connection open.
func answerEcho(c net.Conn, br *bufio.Reader) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	body, _ := io.ReadAll(req.Body)
	msg := req.Method + " " + string(body)
	_, err = fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
	return err == nil
}

// TestRelayAppClosesKeepAlive plays an app that closes its keep-alive
// connections, at the two moments that matter, many times over.
func TestRelayAppClosesKeepAlive(t *testing.T) {
	const rounds = 40
	post := func(c *http.Client, i int) (int, string, error) {
		resp, err := c.Post("http://app.example.test/", "text/plain", strings.NewReader("body "+strconv.Itoa(i)))
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}

	// The app closes each connection after its first answer. The relay
	// notices before the next request (the test waits for that), so
	// nothing of the request was written: it goes to a new connection to
	// the app, POST included, and the client's connection stays.
	t.Run("while idle", func(t *testing.T) {
		checkLeaks(t)
		closed := make(chan struct{}, 1)
		lab := newRawRelayLab(t, func(c net.Conn) {
			answerEcho(c, bufio.NewReader(c))
			c.Close()
			closed <- struct{}{}
		})
		var dials atomic.Int32
		c := lab.client(1)
		tr := c.Transport.(*http.Transport)
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, n, a string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, n, a)
		}
		defer c.CloseIdleConnections()
		for i := range rounds {
			status, body, err := post(c, i)
			if err != nil || status != 200 || body != "POST body "+strconv.Itoa(i) {
				t.Fatalf("POST %d: %d %q %v, want 200 %q", i, status, body, err, "POST body "+strconv.Itoa(i))
			}
			<-closed
			deadline := time.Now().Add(10 * time.Second)
			for !lab.appGoneSeen() {
				if time.Now().After(deadline) {
					t.Fatalf("round %d: the relay did not see the app close within 10 s", i)
				}
				runtime.Gosched()
			}
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("client opened %d connections to the relay, want 1", n)
		}
		if n := lab.accepts.Load(); n != rounds {
			t.Errorf("app accepted %d connections, want %d", n, rounds)
		}
	})

	// The app answers a connection's first request, then closes it the
	// moment the next request's first byte arrives. That request reached
	// the app: a POST gets a 502 saying so (never sent twice); a GET
	// gets no answer, which Go's HTTP client (as the edge) sends again.
	t.Run("as the request arrives", func(t *testing.T) {
		checkLeaks(t)
		var got atomic.Int32 // requests the app saw, answered or not
		lab := newRawRelayLab(t, func(c net.Conn) {
			br := bufio.NewReader(c)
			if !answerEcho(c, br) {
				return
			}
			got.Add(1)
			if _, err := br.Peek(1); err == nil {
				got.Add(1)
			}
		})
		c := lab.client(1)
		defer c.CloseIdleConnections()
		for i := range rounds {
			status, body, err := post(c, i)
			if err != nil {
				t.Fatalf("POST %d: %v", i, err)
			}
			if i%2 == 0 {
				if status != 200 || body != "POST body "+strconv.Itoa(i) {
					t.Fatalf("POST %d on a new connection: %d %q, want 200", i, status, body)
				}
				continue
			}
			if status != http.StatusBadGateway || !strings.Contains(body, "closed its connection as this request arrived") || !strings.Contains(body, "not sent again") {
				t.Fatalf("POST %d as the app closed: %d %q, want 502 saying it was not sent again", i, status, body)
			}
		}
		if n := got.Load(); n != rounds {
			t.Errorf("the app saw %d POSTs, want %d (none sent twice)", n, rounds)
		}
		got.Store(0)
		for i := range rounds {
			resp, err := c.Get("http://app.example.test/")
			if err != nil {
				t.Fatalf("GET %d: %v", i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "GET " {
				t.Fatalf("GET %d: %d %q, want 200 %q", i, resp.StatusCode, b, "GET ")
			}
		}
	})
}

// fromLoopbackEdge makes 127.0.0.1, where the tests connect from, the
// proxy's one edge.
func fromLoopbackEdge(p *exposeProxy) {
	edges := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	p.relay.edges.Store(&edges)
}

// TestRelayPeersNotEdges connects to the proxy from an address that is
// not an edge's: it is refused, or with peerToHost spliced to the app
// byte for byte (a head the relay would refuse reaches the app as sent).
func TestRelayPeersNotEdges(t *testing.T) {
	lab := newRawRelayLab(t, func(c net.Conn) {
		b := make([]byte, 64)
		n, _ := c.Read(b)
		c.Write([]byte("app got " + string(b[:n])))
	})
	const bad = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" // two Hosts: the relay answers 400
	send := func(src string) string {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", lab.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte(bad))
		out, _ := io.ReadAll(c)
		return string(out)
	}
	if out := send("127.0.0.1"); !strings.HasPrefix(out, "HTTP/1.1 400") {
		t.Fatalf("from the edge: %q, want the relay's 400", out)
	}
	if out := send("127.0.0.2"); out != "" {
		t.Fatalf("from a peer, without peerToHost: %q, want the connection closed", out)
	}
	lab.proxy.peerToHost.Store(true)
	if out := send("127.0.0.2"); out != "app got "+bad {
		t.Fatalf("from a peer, with peerToHost: %q, want the app's answer to the bytes sent", out)
	}
}

// TestRelayUnmarkedBodies plays an app that sends a body after a response
// whose end the message does not mark (a HEAD's, a 204, a 304), once the
// next request has come on the same connection, the way a do_HEAD =
// do_GET app does when it is slow: the bytes must not become the answer
// to the next request. The relay takes a new connection to the app after
// such a response.
func TestRelayUnmarkedBodies(t *testing.T) {
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { appLn.Close(); wg.Wait() })
	const stolen = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"
	wg.Go(func() {
		for {
			c, err := appLn.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				late := false // the last response left a body to send
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if late {
						// The late body: bytes that read as a response
						// (another client's, reflected).
						io.WriteString(c, stolen)
						late = false
						continue
					}
					switch req.URL.Path {
					case "/204":
						io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
					case "/304":
						io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
					default:
						if req.Method == http.MethodHead {
							io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
							late = true
							continue
						}
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
						continue
					}
					late = true
				}
			})
		}
	})
	lab := &relayLab{logged: make(chan struct{}, 1), appAddr: appLn.Addr().String()}
	lab.startRelay(t)
	for _, first := range []string{"HEAD /", "GET /204", "GET /304"} {
		t.Run(first, func(t *testing.T) {
			c, br := lab.raw(t)
			method, path, _ := strings.Cut(first, " ")
			fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: app.example.test\r\n\r\n", method, path)
			resp, err := http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				t.Fatalf("%s: %v", first, err)
			}
			resp.Body.Close()
			fmt.Fprintf(c, "GET /next HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("GET after %s: %v", first, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "real" {
				t.Errorf("GET after %s: %d %q, want the app's answer to it, 200 \"real\"", first, resp.StatusCode, body)
			}
		})
	}
}

// loopbackNet listens on the host's loopback, for Server.Sync.
type loopbackNet struct{}

func (loopbackNet) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

// TestPeerProxyHeader: a peer spliced to a port whose tcp route sends
// the app a PROXY protocol header (alone or sharing the port with an http
// route) starts with a header naming the peer, so the PROXY header it
// sends itself reaches the app as data, not as the client's address; the
// edge's connection goes through as it comes, its header first; without
// such a route a peer gets no header.
func TestPeerProxyHeader(t *testing.T) {
	checkLeaks(t)
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := appLn.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				_, src, err := readProxyHeader(br)
				if err != nil {
					fmt.Fprintf(c, "error %v", err)
					return
				}
				line, _ := br.ReadString('\n')
				fmt.Fprintf(c, "client %v data %q", src, line)
			})
		}
	})
	t.Cleanup(func() {
		appLn.Close()
		wg.Wait()
	})
	port := uint16(appLn.Addr().(*net.TCPAddr).Port)
	s := New(Options{})
	t.Cleanup(s.Close)
	cfg := func(proto string, withHTTP bool, proxyProtocol int) Config {
		c := Config{
			Net:             loopbackNet{},
			Addrs:           []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}, // the device; the app is on 127.0.0.1
			Routes:          []Route{{Proto: proto, Host: "raw.test", Port: port, ProxyProtocol: proxyProtocol}},
			Edges:           []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			PeerReachesHost: func(uint16) bool { return true },
		}
		if withHTTP {
			c.Routes = append(c.Routes, Route{Proto: "http", Host: "app.test", Port: port})
		}
		return c
	}
	const forged = "PROXY TCP4 6.6.6.6 127.0.0.3 1234 80\r\n"
	send := func(from string) (string, netip.AddrPort) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), port).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(forged))
		c.(*net.TCPConn).CloseWrite()
		out, _ := io.ReadAll(c)
		return string(out), netip.MustParseAddrPort(c.LocalAddr().String())
	}
	believed := fmt.Sprintf("client %v data %q", netip.MustParseAddrPort("6.6.6.6:1234"), "")
	// A tls route passes the stream through to the app, which
	// terminates TLS: the device sees it as bytes, as a tcp route's.
	for _, proto := range []string{"tcp", "tls"} {
		for _, withHTTP := range []bool{false, true} {
			for _, v := range []int{1, 2} {
				s.Sync(cfg(proto, withHTTP, v))
				out, peer := send("127.0.0.2")
				if want := fmt.Sprintf("client %v data %q", peer, forged); out != want {
					t.Errorf("http route %v, PROXY v%d %s route, a peer sending its own header: the app answered %q, want %q", withHTTP, v, proto, out, want)
				}
				if !withHTTP {
					if out, _ := send("127.0.0.1"); out != believed {
						t.Errorf("PROXY v%d %s route, the edge: the app answered %q, want its header believed: %q", v, proto, out, believed)
					}
				}
			}
		}
	}
	s.Sync(cfg("tcp", true, 0))
	if out, _ := send("127.0.0.2"); out != believed {
		t.Errorf("no PROXY route: the app answered %q, want the peer's bytes as sent: %q", out, believed)
	}
}
