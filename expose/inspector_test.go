package expose

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"beam.dev/beam/localapi/apitype"
)

// inspectorAddr is the address the tests' inspectors pretend to listen on.
var inspectorAddr = netip.MustParseAddrPort("127.0.0.1:4040")

// inspectLab is a Server with an inspector and one HTTP route's proxy
// in front of app, on loopback.
type inspectLab struct {
	s     *Server
	insp  *Inspector
	addr  string // the proxy's listener
	appLn net.Listener
}

func newInspectLab(t *testing.T, limit int, app http.Handler) *inspectLab {
	t.Helper()
	lab := &inspectLab{s: New(Options{})}
	var err error
	lab.insp, err = NewInspector(lab.s, InspectorOptions{Addr: inspectorAddr, BodyLimit: limit})
	if err != nil {
		t.Fatal(err)
	}
	lab.appLn, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: app}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lab.appLn)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	p := newExposeProxy(exposeProxyOptions{
		Port: 3000, Target: lab.appLn.Addr().String(),
		Watching: lab.s.watching, Publish: lab.s.publish, Capture: lab.s.captureLimit, Record: lab.s.record,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.addr = ln.Addr().String()
	fromLoopbackEdge(p)
	p.serve(ln)
	t.Cleanup(p.close)
	return lab
}

// client returns an HTTP client whose connections go to the proxy, over
// HTTP/1.1 or, with h2c, HTTP/2 with prior knowledge (as the edge does
// for gRPC).
func (lab *inspectLab) client(h2c bool) *http.Client {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", lab.addr)
	}
	if h2c {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http2.Transport{
			AllowHTTP:      true,
			DialTLSContext: func(ctx context.Context, n, a string, _ *tls.Config) (net.Conn, error) { return dial(ctx, n, a) },
		}}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, DisableCompression: true}}
}

// waitExchanges waits until the inspector holds n exchanges.
func (lab *inspectLab) waitExchanges(t *testing.T, n int) []*Exchange {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		xs, changed := lab.s.rec.since(0)
		if len(xs) >= n {
			return xs
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("%d exchanges captured, want %d", len(xs), n)
		}
	}
}

// inspectorRequest is a request to insp from its own page, in a browser
// that opened its AccessURL (it has the access cookie, and the pages are
// under the base path).
func inspectorRequest(insp *Inspector, method, target string, body io.Reader) *http.Request {
	r := httptest.NewRequest(method, insp.base+target, body)
	r.Host = inspectorAddr.String()
	r.RemoteAddr = "127.0.0.1:50000"
	r.AddCookie(&http.Cookie{Name: insp.cookieName(), Value: insp.cookie})
	return r
}

// TestCaptureBounds checks what the relay captures of an exchange, over
// HTTP/1.1 (fixed length and chunked) and HTTP/2: the heads, bodies up
// to the limit, sizes as sent, who answered, and that the exchange
// still went through whole.
func TestCaptureBounds(t *testing.T) {
	const limit = 1000
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-App", "yes")
		if r.URL.Path == "/chunked" {
			w.WriteHeader(201)
			for range 5 {
				w.Write(bytes.Repeat([]byte("c"), 500))
				w.(http.Flusher).Flush()
			}
			return
		}
		fmt.Fprintf(w, "got %d bytes", len(b))
	})
	lab := newInspectLab(t, limit, app)
	big := strings.Repeat("b", 3000)
	for _, tc := range []struct {
		name     string
		h2c      bool
		path     string
		body     string
		status   int
		reqTrunc bool
		respBody string // the captured response body, or its prefix with respTrunc
		respSize int64
		respTrun bool
	}{
		{name: "small", path: "/small", body: `{"a":1}`, status: 200, respBody: "got 7 bytes", respSize: 11},
		{name: "request body over the limit", path: "/big", body: big, status: 200, reqTrunc: true, respBody: "got 3000 bytes", respSize: 14},
		{name: "chunked response over the limit", path: "/chunked", status: 201, respBody: strings.Repeat("c", limit), respTrun: true},
		{name: "h2c", h2c: true, path: "/h2", body: big, status: 200, reqTrunc: true, respBody: "got 3000 bytes", respSize: 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab.s.rec.clear()
			req, _ := http.NewRequest("POST", "http://app.example"+tc.path+"?q=1", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Forwarded-For", "192.0.2.7")
			resp, err := lab.client(tc.h2c).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			whole, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if tc.path == "/chunked" && len(whole) != 2500 {
				t.Fatalf("client got %d bytes, want 2500: the capture must not cut the exchange", len(whole))
			}
			x := lab.waitExchanges(t, 1)[0]
			if x.Method != "POST" || x.Path != tc.path+"?q=1" || x.Host != "app.example" || x.Status != tc.status || x.Client != "192.0.2.7" || x.AnsweredBy != ByApp {
				t.Fatalf("exchange %+v", x)
			}
			if x.Request == nil || x.Response == nil {
				t.Fatalf("no heads captured: %+v", x)
			}
			if got := x.Request.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("request Content-Type %q", got)
			}
			wantReq := tc.body
			if tc.reqTrunc {
				wantReq = tc.body[:limit]
			}
			if string(x.Request.Body) != wantReq || x.Request.Truncated != tc.reqTrunc {
				t.Errorf("request body %d bytes (truncated %v), want %d (truncated %v)", len(x.Request.Body), x.Request.Truncated, len(wantReq), tc.reqTrunc)
			}
			if !tc.h2c && !tc.reqTrunc && x.Request.BodySize != int64(len(tc.body)) {
				t.Errorf("request body size %d, want %d", x.Request.BodySize, len(tc.body))
			}
			if x.Response.Header.Get("X-App") != "yes" {
				t.Errorf("response headers %v", x.Response.Header)
			}
			if !strings.HasPrefix(string(x.Response.Body), tc.respBody) || len(x.Response.Body) > limit || x.Response.Truncated != tc.respTrun {
				t.Errorf("response body %q (truncated %v), want %q (truncated %v)", x.Response.Body, x.Response.Truncated, tc.respBody, tc.respTrun)
			}
			if tc.respSize != 0 && x.Size != tc.respSize {
				t.Errorf("size %d, want %d", x.Size, tc.respSize)
			}
			if x.Duration <= 0 || x.FirstByte <= 0 || x.FirstByte > x.Duration {
				t.Errorf("timings: duration %v, first byte %v", x.Duration, x.FirstByte)
			}
		})
	}
}

// TestCaptureAppDown checks that a request the device answers itself
// (nothing listens) is captured as answered by beam, with its page.
func TestCaptureAppDown(t *testing.T) {
	lab := newInspectLab(t, 0, http.NotFoundHandler())
	lab.appLn.Close()
	resp, err := lab.client(false).Get("http://app.example/down")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	x := lab.waitExchanges(t, 1)[0]
	if x.Status != 502 || x.AnsweredBy != ByBeam || x.Response == nil || !bytes.Contains(x.Response.Body, []byte("nothing is listening")) {
		t.Fatalf("exchange %+v, response %+v", x, x.Response)
	}
}

// TestInspectorRefuses checks the inspector's defenses against other web
// pages: DNS rebinding (Host), cross-origin and cross-site requests, and
// changes without the session token.
func TestInspectorRefuses(t *testing.T) {
	s := New(Options{})
	insp, err := NewInspector(s, InspectorOptions{Addr: inspectorAddr})
	if err != nil {
		t.Fatal(err)
	}
	own := "http://" + inspectorAddr.String()
	for _, tc := range []struct {
		name   string
		method string
		path   string
		remote string
		host   string
		header map[string]string
		token  bool
		want   int
	}{
		{name: "own page", method: "GET", path: "/", want: 200},
		{name: "localhost name", method: "GET", path: "/", host: "localhost:4040", want: 200},
		{name: "API from a script", method: "GET", path: "/api/requests/http", want: 200},
		{name: "rebound DNS name", method: "GET", path: "/api/requests/http", host: "evil.example:4040", want: 421},
		{name: "other port", method: "GET", path: "/", host: "127.0.0.1:4041", want: 421},
		{name: "no port", method: "GET", path: "/", host: "127.0.0.1", want: 421},
		{name: "not loopback", method: "GET", path: "/", remote: "192.0.2.1:5000", want: 403},
		{name: "foreign origin", method: "GET", path: "/api/session", header: map[string]string{"Origin": "http://evil.example"}, want: 403},
		{name: "null origin", method: "POST", path: "/api/requests/http", header: map[string]string{"Origin": "null"}, token: true, want: 403},
		{name: "other port origin", method: "POST", path: "/api/requests/http", header: map[string]string{"Origin": "http://127.0.0.1:8000"}, token: true, want: 403},
		{name: "cross-site fetch", method: "GET", path: "/api/session", header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}, want: 403},
		{name: "same-site fetch", method: "GET", path: "/api/session", header: map[string]string{"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}, want: 403},
		{name: "link from elsewhere", method: "GET", path: "/", header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, want: 200},
		{name: "navigation to the API", method: "GET", path: "/api/session", header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, want: 403},
		{name: "cross-site form post", method: "POST", path: "/requests/req_1/replay", header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, token: true, want: 403},
		{name: "replay without token", method: "POST", path: "/api/requests/http", header: map[string]string{"Origin": own}, want: 403},
		{name: "clear without token", method: "DELETE", path: "/api/requests/http", want: 403},
		{name: "replay with token", method: "POST", path: "/api/requests/http", header: map[string]string{"Origin": own, "Sec-Fetch-Site": "same-origin"}, token: true, want: 404},
		{name: "clear with token", method: "DELETE", path: "/api/requests/http", token: true, want: 204},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := inspectorRequest(insp, tc.method, tc.path, strings.NewReader(`{"id":"req_9"}`))
			if tc.host != "" {
				r.Host = tc.host
			}
			if tc.remote != "" {
				r.RemoteAddr = tc.remote
			}
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			if tc.token {
				r.Header.Set(TokenHeader, insp.token)
			}
			w := httptest.NewRecorder()
			insp.ServeHTTP(w, r)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if w.Header().Get("X-Frame-Options") != "DENY" {
				t.Errorf("no X-Frame-Options")
			}
		})
	}
	if _, err := NewInspector(s, InspectorOptions{Addr: netip.MustParseAddrPort("0.0.0.0:4040")}); err == nil {
		t.Errorf("an inspector on all addresses was accepted")
	}
}

// TestReplay replays a captured exchange as it was and edited, through
// the API, and checks what the app received and how the replays are
// recorded.
func TestReplay(t *testing.T) {
	type seen struct{ method, path, hdr, body, host string }
	got := make(chan seen, 4)
	lab := newInspectLab(t, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.RequestURI(), r.Header.Get("X-Test"), string(b), r.Host}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "answer to "+r.Method)
	}))
	req, _ := http.NewRequest("POST", "http://app.example/orig?a=1", strings.NewReader("original"))
	req.Header.Set("X-Test", "1")
	resp, err := lab.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-got
	orig := lab.waitExchanges(t, 1)[0]

	replay := func(body string) (*Exchange, int) {
		t.Helper()
		r := inspectorRequest(lab.insp, "POST", "/api/requests/http", strings.NewReader(body))
		r.Header.Set(TokenHeader, lab.insp.token)
		w := httptest.NewRecorder()
		lab.insp.ServeHTTP(w, r)
		var x Exchange
		json.Unmarshal(w.Body.Bytes(), &x)
		return &x, w.Code
	}
	for _, tc := range []struct {
		name   string
		body   string
		want   seen
		edited bool
	}{
		{name: "as it was", body: `{"id":"` + orig.ID + `"}`, want: seen{"POST", "/orig?a=1", "1", "original", "app.example"}},
		{name: "edited", body: `{"id":"` + orig.ID + `","method":"PUT","path":"/new","headers":{"X-Test":["2"],"Host":["other.example"]},"body":"changed"}`,
			want: seen{"PUT", "/new", "2", "changed", "other.example"}, edited: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, code := replay(tc.body)
			if code != 200 {
				t.Fatalf("status %d", code)
			}
			if g := <-got; g != tc.want {
				t.Fatalf("the app got %+v, want %+v", g, tc.want)
			}
			if !x.Replay || x.ReplayOf != orig.ID || x.Edited != tc.edited || x.Status != 200 || string(x.Response.Body) != "answer to "+tc.want.method {
				t.Fatalf("replay recorded as %+v", x)
			}
			if stored := lab.s.rec.get(x.ID); stored == nil || !stored.Replay {
				t.Fatalf("replay %s not kept", x.ID)
			}
		})
	}
	for _, tc := range []struct{ name, body string }{
		{"bad path", `{"id":"` + orig.ID + `","path":"http://elsewhere/"}`},
		{"bad method", `{"id":"` + orig.ID + `","method":"GE T"}`},
		{"bad JSON", `{"id":`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, code := replay(tc.body); code != 400 {
				t.Fatalf("status %d, want 400", code)
			}
		})
	}
}

// TestFilter checks the list's filters.
func TestFilter(t *testing.T) {
	x := &Exchange{Method: "GET", Path: "/api/users?id=3", Status: 404}
	for _, tc := range []struct {
		f    filter
		want bool
	}{
		{filter{}, true},
		{filter{path: "users"}, true},
		{filter{path: "orders"}, false},
		{filter{status: "404"}, true},
		{filter{status: "4xx"}, true},
		{filter{status: "4"}, true},
		{filter{status: "40x"}, true},
		{filter{status: "200"}, false},
		{filter{status: "5xx"}, false},
		{filter{status: "40"}, true},
		{filter{method: "get"}, true},
		{filter{method: "POST"}, false},
	} {
		t.Run(fmt.Sprintf("%+v", tc.f), func(t *testing.T) {
			if got := tc.f.match(x); got != tc.want {
				t.Fatalf("match = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPrettyBody checks how the detail page shows bodies.
func TestPrettyBody(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(`{"z":true}`))
	zw.Close()
	for _, tc := range []struct {
		name, ctype, enc string
		body             []byte
		kind, want       string
	}{
		{name: "json", ctype: "application/json", body: []byte(`{"a":[1,2]}`), kind: "json", want: "{\n  \"a\": [\n    1,\n    2\n  ]\n}"},
		{name: "json without a type", body: []byte(`[1]`), kind: "json", want: "[\n  1\n]"},
		{name: "problem+json", ctype: "application/problem+json", body: []byte(`{"t":1}`), kind: "json", want: "{\n  \"t\": 1\n}"},
		{name: "xml", ctype: "application/xml", body: []byte(`<a><b>1</b></a>`), kind: "xml", want: "<a>\n  <b>1</b>\n</a>"},
		{name: "form", ctype: "application/x-www-form-urlencoded", body: []byte(`b=2&a=1&a=x+y`), kind: "form", want: "a = 1\na = x y\nb = 2\n"},
		{name: "text", ctype: "text/plain", body: []byte("hi\n"), kind: "text", want: "hi\n"},
		{name: "binary", ctype: "application/octet-stream", body: []byte{0, 1, 2, 0xff}, kind: "hex", want: "00000000  00 01 02 ff"},
		{name: "gzip", ctype: "application/json", enc: "gzip", body: gz.Bytes(), kind: "json", want: "{\n  \"z\": true\n}"},
		{name: "bad json", ctype: "application/json", body: []byte(`{"a":`), kind: "text", want: `{"a":`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.ctype != "" {
				h.Set("Content-Type", tc.ctype)
			}
			if tc.enc != "" {
				h.Set("Content-Encoding", tc.enc)
			}
			v := prettyBody(&Message{Header: h, Body: tc.body, BodySize: int64(len(tc.body))})
			if v.Kind != tc.kind || !strings.HasPrefix(v.Text, tc.want) {
				t.Fatalf("got %s %q, want %s %q", v.Kind, v.Text, tc.kind, tc.want)
			}
		})
	}
}

// TestStoreBounds checks that the inspector forgets the oldest exchanges
// beyond its count and size bounds.
func TestStoreBounds(t *testing.T) {
	s := newStore()
	for i := range maxExchanges + 10 {
		s.add(&Exchange{Path: "/" + strconv.Itoa(i)})
	}
	xs, _ := s.since(0)
	if len(xs) != maxExchanges || xs[0].Path != "/10" {
		t.Fatalf("%d kept, oldest %s; want %d, oldest /10", len(xs), xs[0].Path, maxExchanges)
	}
	s.clear()
	body := make([]byte, 10<<20)
	for range 10 {
		s.add(&Exchange{Response: &Message{Body: body}})
	}
	xs, _ = s.since(0)
	if n := len(xs); n*len(body) > maxStoredBytes || n == 0 {
		t.Fatalf("%d exchanges of %d bytes kept, more than %d bytes", n, len(body), maxStoredBytes)
	}
}

// TestNoInspect checks that the routes of a port published with
// --inspect=false are kept out of the inspector, and only those.
func TestNoInspect(t *testing.T) {
	s := New(Options{})
	if _, err := NewInspector(s, InspectorOptions{Addr: inspectorAddr, BodyLimit: 100}); err != nil {
		t.Fatal(err)
	}
	s.Sync(Config{Routes: []Route{
		{Proto: "http", Host: "a.example", Port: 3000, NoInspect: true},
		{Proto: "http", Host: "b.example", Port: 3001},
		{Proto: "tcp", Host: "c.example", Port: 3002, NoInspect: true},
		{Proto: "tcp", Host: "d.example", Port: 3003},
	}})
	for port, want := range map[uint16]int{3000: 0, 3001: 100, 3002: 0, 3003: 100} {
		if got := s.captureFor(port)(); got != want {
			t.Errorf("port %d: capture limit %d, want %d", port, got, want)
		}
	}
	start := time.Now()
	for _, port := range []uint16{3002, 3003} {
		s.RecordFlow(Flow{Proto: "tcp", Client: netip.MustParseAddrPort("100.64.0.1:5000"), Port: port, Start: start})
	}
	xs, _ := s.rec.since(0)
	if len(xs) != 1 || xs[0].Host != "d.example" {
		t.Fatalf("recorded %+v, want only d.example's connection", xs)
	}
	s.RecordFlow(Flow{Proto: "tcp", Client: netip.MustParseAddrPort("100.64.0.1:5000"), Port: 3003, Start: start, End: start.Add(time.Second), FromClient: 3, ToClient: 4})
	xs, _ = s.rec.since(0)
	if len(xs) != 1 || xs[0].Duration != time.Second || xs[0].Size != 4 || xs[0].BytesIn != 3 {
		t.Fatalf("after the end: %+v, want one connection of 1s, 3 bytes in and 4 out", xs[0])
	}
}

// TestEvents checks the live list's event stream: new exchanges as they
// are recorded, filtered, a changed exchange again under its ID, and the
// Last-Event-ID a reconnecting EventSource sends.
func TestEvents(t *testing.T) {
	s := New(Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	insp, err := NewInspector(s, InspectorOptions{Addr: netip.MustParseAddrPort(ln.Addr().String())})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: insp}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	// stream opens the event stream with query and returns a func that
	// reads the next event's summary.
	stream := func(query, lastID string) func() summary {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/api/events?"+query, nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		req.Header.Set(TokenHeader, insp.Token())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
			t.Fatalf("events: %s, %s", resp.Status, ct)
		}
		br := bufio.NewReader(resp.Body)
		return func() summary {
			t.Helper()
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("read event: %v", err)
				}
				if data, ok := strings.CutPrefix(line, "data: "); ok {
					var sm summary
					if err := json.Unmarshal([]byte(data), &sm); err != nil {
						t.Fatal(err)
					}
					return sm
				}
			}
		}
	}
	s.record(&Exchange{Kind: "http", Method: "GET", Path: "/before", Status: 200})
	all := stream("after=0", "")
	errs := stream("status=5xx", "")
	if sm := all(); sm.Path != "/before" || sm.ID != "req_1" {
		t.Fatalf("first event %+v, want /before (recorded before the stream opened)", sm)
	}
	s.record(&Exchange{Kind: "http", Method: "GET", Path: "/ok", Status: 200})
	s.record(&Exchange{Kind: "http", Method: "POST", Path: "/boom", Status: 502})
	if sm := all(); sm.Path != "/ok" {
		t.Fatalf("second event %+v, want /ok", sm)
	}
	if sm := all(); sm.Path != "/boom" {
		t.Fatalf("third event %+v, want /boom", sm)
	}
	if sm := errs(); sm.Path != "/boom" {
		t.Fatalf("filtered stream: %+v, want only /boom", sm)
	}
	s.rec.replace("req_2", &Exchange{Kind: "tcp", Port: 9, Duration: time.Second})
	if sm := all(); sm.ID != "req_2" || sm.Kind != "tcp" || sm.Seq != 4 {
		t.Fatalf("changed exchange: %+v, want req_2 again as seq 4", sm)
	}
	if sm := stream("", "3")(); sm.ID != "req_2" {
		t.Fatalf("after Last-Event-ID 3: %+v, want the change of req_2", sm)
	}
}

// TestInspectorAccess checks that the inspector shows nothing (captures
// hold cookies and passwords) to a local client without its access
// token, which only AccessURL carries: opening AccessURL sets the token
// in an HttpOnly, SameSite=Strict cookie and redirects to the list.
func TestInspectorAccess(t *testing.T) {
	s := New(Options{})
	insp, err := NewInspector(s, InspectorOptions{Addr: inspectorAddr})
	if err != nil {
		t.Fatal(err)
	}
	bare := func(method, target string) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		r.Host = inspectorAddr.String()
		r.RemoteAddr = "127.0.0.1:50000"
		return r
	}
	do := func(r *http.Request) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		insp.ServeHTTP(w, r)
		return w
	}
	for _, path := range []string{"/", "/api/session", "/api/requests/http", "/api/requests/http/req_1", "/requests/req_1", "/api/events"} {
		for _, p := range []string{path, insp.base + path} {
			if w := do(bare("GET", p)); w.Code != http.StatusUnauthorized || strings.Contains(w.Body.String(), insp.token) {
				t.Errorf("GET %s without the token: %d %q, want 401", p, w.Code, w.Body)
			}
			r := bare("GET", p)
			r.AddCookie(&http.Cookie{Name: insp.cookieName(), Value: "guess"})
			if w := do(r); w.Code != http.StatusUnauthorized {
				t.Errorf("GET %s with a wrong cookie: %d, want 401", p, w.Code)
			}
		}
	}
	if w := do(bare("GET", "/?token=guess")); w.Code != http.StatusForbidden || len(w.Result().Cookies()) != 0 {
		t.Errorf("a wrong access token: %d, cookies %v; want 403 and none", w.Code, w.Result().Cookies())
	}
	u, err := url.Parse(insp.AccessURL())
	if err != nil || u.Host != inspectorAddr.String() {
		t.Fatalf("AccessURL %q", insp.AccessURL())
	}
	w := do(bare("GET", u.RequestURI()))
	cs := w.Result().Cookies()
	base := w.Header().Get("Location")
	if w.Code != http.StatusSeeOther || !strings.HasPrefix(base, "/s/") || len(base) < len("/s/")+20 || !strings.HasSuffix(base, "/") || len(cs) != 1 {
		t.Fatalf("AccessURL: %d to %q, cookies %v; want 303 to a secret base path /s/KEY/ with a cookie", w.Code, base, cs)
	}
	if strings.Contains(base, insp.token) || strings.Contains(base, cs[0].Value) {
		t.Errorf("base path %q holds the token or the cookie", base)
	}
	if c := cs[0]; c.Value == "" || strings.Contains(c.Value, insp.token) || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != base {
		t.Errorf("cookie %+v, want a value other than the token, HttpOnly, SameSite=Strict, Path=%s", c, base)
	}
	r := bare("GET", base)
	r.AddCookie(cs[0])
	w = do(r)
	if w.Code != http.StatusOK {
		t.Errorf("the list with the cookie: %d, want 200", w.Code)
	}
	if b := w.Body.String(); !strings.Contains(b, `action="`+base+`"`) || !strings.Contains(b, `href="`+base+`"`) {
		t.Errorf("the list under the base path does not link under it:\n%s", b)
	}
	// Cookies are not kept apart by port: a server on another port of
	// 127.0.0.1 that got the cookie's value and sends it back (it cannot
	// know the base path: the browser sends the cookie to no other path)
	// is refused, whatever path it asks.
	for _, path := range []string{"/", "/api/session", "/api/requests/http", "/requests/req_1", "/api/events", "/s/" + strings.TrimPrefix(base, "/s/")[:5] + "/"} {
		r := bare("GET", path)
		r.AddCookie(&http.Cookie{Name: insp.cookieName(), Value: cs[0].Value})
		if w := do(r); w.Code != http.StatusUnauthorized {
			t.Errorf("GET %s with the cookie's value but outside the base path: %d, want 401", path, w.Code)
		}
	}
	// A cookie of the same name that another server set for a wider path
	// comes along: the real one still opens the pages.
	r = bare("GET", base+"api/requests/http")
	r.Header.Add("Cookie", insp.cookieName()+"="+cs[0].Value+"; "+insp.cookieName()+"=tossed")
	if w := do(r); w.Code != http.StatusOK {
		t.Errorf("the cookie with a tossed one of the same name: %d, want 200", w.Code)
	}
	r = bare("GET", base+"api/requests/http")
	r.Header.Add("Cookie", insp.cookieName()+"=tossed; "+insp.cookieName()+"="+cs[0].Value)
	if w := do(r); w.Code != http.StatusOK {
		t.Errorf("a tossed cookie first, then the real one: %d, want 200", w.Code)
	}
	r = bare("GET", "/api/requests/http")
	r.Header.Set(TokenHeader, insp.Token())
	if w := do(r); w.Code != http.StatusOK {
		t.Errorf("the API with the token header: %d, want 200", w.Code)
	}
	// The cookie alone does not change anything: that still takes the
	// token in a header or form field (CSRF).
	r = bare("DELETE", base+"api/requests/http")
	r.AddCookie(cs[0])
	if w := do(r); w.Code != http.StatusForbidden {
		t.Errorf("clear with the cookie alone: %d, want 403", w.Code)
	}
	// The browser sends the cookie to every server on 127.0.0.1. Such a
	// server cannot use its value as the token, nor learn the token by
	// sending the cookie back.
	cookie := cs[0].Value
	r = bare("GET", "/api/requests/http")
	r.Header.Set(TokenHeader, cookie)
	if w := do(r); w.Code != http.StatusUnauthorized {
		t.Errorf("the cookie's value as the token header: %d, want 401", w.Code)
	}
	if w := do(bare("GET", "/?token="+url.QueryEscape(cookie))); w.Code != http.StatusForbidden {
		t.Errorf("the cookie's value as the access token: %d, want 403", w.Code)
	}
	r = bare("GET", base+"api/session")
	r.AddCookie(cs[0])
	w = do(r)
	var sess struct{ Token string }
	if err := json.Unmarshal(w.Body.Bytes(), &sess); w.Code != http.StatusOK || err != nil || sess.Token == "" {
		t.Fatalf("session with the cookie: %d %q (%v), want 200 and a token", w.Code, w.Body, err)
	}
	if sess.Token == insp.Token() || strings.Contains(w.Body.String(), insp.Token()) {
		t.Errorf("/api/session with the cookie gave the access token")
	}
	r = bare("GET", "/api/requests/http")
	r.Header.Set(TokenHeader, sess.Token)
	if w := do(r); w.Code != http.StatusUnauthorized {
		t.Errorf("the session token without the cookie: %d, want 401", w.Code)
	}
	r = bare("DELETE", base+"api/requests/http")
	r.AddCookie(cs[0])
	r.Header.Set(TokenHeader, sess.Token)
	if w := do(r); w.Code != http.StatusNoContent {
		t.Errorf("clear with the cookie and the session token: %d, want 204", w.Code)
	}
	// Nor is the cookie good on another port's inspector of the same
	// daemon token.
	other, err := NewInspector(s, InspectorOptions{Addr: netip.MustParseAddrPort("127.0.0.1:4041")})
	if err != nil {
		t.Fatal(err)
	}
	other.token = insp.token
	other.cookie = derive(other.token, "beam inspector access cookie", "4041")
	other.base = "/s/" + derive(other.token, "beam inspector page path", "4041")[:22]
	if other.cookie == cookie || other.base+"/" == base {
		t.Fatalf("the same cookie or base path for ports 4040 and 4041")
	}
	r = httptest.NewRequest("GET", other.base+"/api/requests/http", nil)
	r.Host, r.RemoteAddr = "127.0.0.1:4041", "127.0.0.1:50000"
	r.AddCookie(&http.Cookie{Name: other.cookieName(), Value: cookie})
	w = httptest.NewRecorder()
	other.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("port 4040's cookie on port 4041: %d, want 401", w.Code)
	}
}

// TestCaptureAllocs bounds what capturing a small exchange for the
// inspector costs the relay: the exchange with its log line and capture,
// one string for the log line's fields, the two captured messages, and
// the recorded Exchange with its ID. The captured bytes are handed to the
// record, not copied again.
func TestCaptureAllocs(t *testing.T) {
	rec := newStore()
	x := &exposeRelay{
		port:     3000,
		capture:  func() int { return DefaultBodyLimit },
		record:   rec.add,
		watching: func() bool { return false },
		publish:  func(apitype.RequestLog) {},
	}
	h := []byte("GET /path?q=1 HTTP/1.1\r\nHost: app.example.test\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n")
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	rh, herr := parseRequestHead(h)
	if herr != nil {
		t.Fatal(herr)
	}
	exchange := func() {
		ex := x.newExchange(h, &rh)
		ex.cap.req.write(h)
		ex.cap.respHead = len(resp) - 5
		ex.cap.resp.grow(ex.cap.respHead)
		ex.cap.resp.write(resp)
		x.logDone(ex, http.StatusOK)
	}
	exchange()
	got := testing.AllocsPerRun(100, exchange)
	if got > 6 {
		t.Errorf("capturing an exchange: %v allocations, want at most 6", got)
	}
	xs, _ := rec.since(0)
	last := xs[len(xs)-1]
	if last.Method != "GET" || last.Path != "/path?q=1" || last.Host != "app.example.test" || last.Client != "192.0.2.7" {
		t.Errorf("recorded %q %q %q %q, want GET /path?q=1 app.example.test 192.0.2.7", last.Method, last.Path, last.Host, last.Client)
	}
	if got := string(last.Response.Body); got != "hello" {
		t.Errorf("captured response body %q, want hello", got)
	}
	if got := last.Request.Header.Get("X-Forwarded-For"); got != "192.0.2.7" {
		t.Errorf("captured request header X-Forwarded-For %q, want 192.0.2.7", got)
	}
}
