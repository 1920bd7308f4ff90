package edge

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// TestPlainRetriesClosedIdleConn checks that a GET sent on a kept-alive
// connection that the device closed while it was idle goes again on a
// new connection instead of failing.
func TestPlainRetriesClosedIdleConn(t *testing.T) {
	// A device that answers one request per connection, without saying
	// it closes: the edge keeps each connection, and finds it closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	setRoutes(t, e, httpRoute("once", ov.add(ln.Addr().String())))
	c := clientTo(serveHTTP(t, e))
	for i := range 3 {
		if code, body, _ := get(t, c, "http://once."+testDomain+"/"); code != http.StatusOK || body != "ok" {
			t.Fatalf("GET %d: %d %q, want 200 \"ok\"", i, code, body)
		}
	}
	if got := ov.dials.Load(); got != 3 {
		t.Errorf("dials: got %d, want 3 (one per request)", got)
	}
}

// TestPlainHeaders checks what the plain path forwards each way: no
// hop-by-hop field (nor one the Connection field names), TE: trailers,
// the edge's forwarding fields instead of the client's; informational
// responses and trailers reach the client.
func TestPlainHeaders(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	got := make(chan http.Header, 1)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("X-Kept", "yes")
		io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Sum", "42")
	}))
	setRoutes(t, e, httpRoute("hdr", a))
	c := clientTo(serveHTTP(t, e))
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://hdr."+testDomain+"/p?q=1", nil)
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "1")
	req.Header.Set("Keep-Alive", "300")
	req.Header.Set("Te", "trailers")
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	req.Header.Set("X-Real-Ip", "192.0.2.1")
	req.Header.Set(SignInUserHeader, "mallory")
	req.Header.Set("X-Custom", "a")
	req.Header.Add("X-Custom", "b")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "body" {
		t.Fatalf("body %q, %v; want \"body\"", body, err)
	}
	h := <-got
	for _, tc := range []struct{ field, want string }{
		{"X-Hop", ""},
		{"Keep-Alive", ""},
		{"Connection", ""},
		{"Te", "trailers"},
		{"X-Forwarded-For", "127.0.0.1"},
		{"X-Real-Ip", "127.0.0.1"},
		{"X-Forwarded-Proto", "http"},
		{"X-Forwarded-Host", "hdr." + testDomain},
		{SignInUserHeader, ""},
		{"X-Custom", "a,b"},
	} {
		if v := strings.Join(h.Values(tc.field), ","); v != tc.want {
			t.Errorf("device saw %s %q, want %q", tc.field, v, tc.want)
		}
	}
	for _, tc := range []struct{ field, want string }{
		{"X-Resp-Hop", ""},
		{"Keep-Alive", ""},
		{"X-Kept", "yes"},
	} {
		if v := resp.Header.Get(tc.field); v != tc.want {
			t.Errorf("client saw %s %q, want %q", tc.field, v, tc.want)
		}
	}
	if v := resp.Trailer.Get("X-Sum"); v != "42" {
		t.Errorf("client saw trailer X-Sum %q, want \"42\"", v)
	}
	if want := "103 </style.css>; rel=preload"; len(hints) != 1 || hints[0] != want {
		t.Errorf("client saw informational responses %q, want [%q]", hints, want)
	}
}

// TestPlainClientGoneClosesDeviceConn checks that a client that goes away
// in the middle of a long response ends the connection to the device
// too, instead of leaving the edge reading a stream nobody wants.
func TestPlainClientGoneClosesDeviceConn(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	gone := make(chan struct{})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the edge closed the connection
		close(gone)
	}))
	setRoutes(t, e, httpRoute("sse", a))
	c := clientTo(serveHTTP(t, e))
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://sse."+testDomain+"/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the device's connection still open 10 s after the client went away")
	}
}

// TestPlainClientGoneBeforeHead is TestPlainClientGoneClosesDeviceConn
// while the device has not answered yet, over HTTP/1.1, HTTPS and HTTP/2;
// and requests on a kept-alive client connection after finished ones are
// not taken for ones whose client went away.
func TestPlainClientGoneBeforeHead(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	arrived, gone := make(chan struct{}, 1), make(chan struct{}, 1)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			select {
			case <-r.Context().Done(): // the edge closed the connection
				gone <- struct{}{}
			case <-time.After(20 * time.Second): // the test fails first
			}
			return
		}
		io.WriteString(w, "ok")
	}))
	setRoutes(t, e, httpRoute("app", a))
	httpAddr, tlsAddr := serveHTTP(t, e), serveTLS(t, e, selfSigned(t, "*."+testDomain))
	for _, tc := range []struct {
		name   string
		c      *http.Client
		scheme string
	}{
		{"http", clientTo(httpAddr), "http"},
		{"https", tlsClientTo(tlsAddr, "", false), "https"},
		{"h2", tlsClientTo(tlsAddr, "", true), "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.scheme + "://app." + testDomain
			for i := range 3 {
				if code, body, _ := get(t, tc.c, url+"/"); code != 200 || body != "ok" {
					t.Fatalf("request %d on the kept-alive connection: %d %q, want 200 ok", i, code, body)
				}
			}
			ctx, cancel := context.WithCancel(t.Context())
			req, _ := http.NewRequestWithContext(ctx, "GET", url+"/slow", nil)
			errc := make(chan error, 1)
			go func() {
				resp, err := tc.c.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				errc <- err
			}()
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Fatal("the request did not reach the device within 10 s")
			}
			cancel()
			if err := <-errc; err == nil {
				t.Fatal("the canceled request succeeded")
			}
			select {
			case <-gone:
			case <-time.After(10 * time.Second):
				t.Fatal("the device's connection still open 10 s after the client went away")
			}
			if code, body, _ := get(t, tc.c, url+"/"); code != 200 || body != "ok" {
				t.Fatalf("request after: %d %q, want 200 ok", code, body)
			}
		})
	}
}

// TestPlainQuery checks that the device gets the query as the reverse
// proxy sends it: as it came, except for parameters url.ParseQuery cannot
// parse, which are dropped.
func TestPlainQuery(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	got := make(chan string, 1)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.RequestURI
	}))
	setRoutes(t, e, httpRoute("q", a))
	c := clientTo(serveHTTP(t, e))
	for _, tc := range []struct{ uri, want string }{
		{"/p?b=2&a=1", "/p?b=2&a=1"},
		{"/p%20q/?x=%41", "/p%20q/?x=%41"},
		{"/p?a=1;b=2&c=3", "/p?c=3"},
		{"/p?a=%zz&c=3", "/p?c=3"},
		{"/p?", "/p?"},
	} {
		if code, _, _ := get(t, c, "http://q."+testDomain+tc.uri); code != http.StatusOK {
			t.Fatalf("GET %s: status %d", tc.uri, code)
		}
		if uri := <-got; uri != tc.want {
			t.Errorf("GET %s: device saw %q, want %q", tc.uri, uri, tc.want)
		}
	}
}
