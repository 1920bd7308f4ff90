package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEdgeOddRequests sends the real beam server requests a client may
// send by mistake or on purpose, on both of the edge's HTTP/1.1 paths
// (the lean one for a GET, the reverse proxy for a route with a header
// rule):
//   - fields whose names hold an underscore (X_Beam_User), which
//     CGI-style apps read as their dashed twins, do not reach the app;
//   - a GET that makes the app drop its connection, sent while the edge
//     keeps 60 connections to the device, reaches the app at most twice
//     (the device closes without an answer on purpose, and the edge used
//     to try every kept connection in turn);
//   - a malformed chunked body (bare-LF chunk lines, a bad chunk size) is
//     answered 400, without a WARN line in the server's log for each;
//   - an app that sends a body on HEAD, late, does not answer the next
//     request with it.
func TestEdgeOddRequests(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()

	var holding, crashes atomic.Int64
	var gate atomic.Pointer[chan struct{}] // /hold waits for it to close
	underscored := make(chan string, 16)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hold":
			g := gate.Load()
			holding.Add(1)
			<-*g
		case "/crash":
			crashes.Add(1)
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		case "/headers":
			var names []string
			for k := range r.Header {
				if strings.Contains(k, "_") {
					names = append(names, k)
				}
			}
			underscored <- strings.Join(names, ",")
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	c.mustBeam(alpha.args("expose", port, "--name", "lean", "--bg")...)
	c.mustBeam(alpha.args("expose", port, "--name", "rules", "--header-add", "X-Route: 1", "--bg")...)

	edge := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	get := func(hc *http.Client, host, path string, hdr ...string) (int, error) {
		req, _ := http.NewRequest("GET", edge+path, nil)
		req.Host = host
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Add(hdr[i], hdr[i+1])
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	for _, host := range []string{"lean.localhost", "rules.localhost"} {
		waitFor(t, 15*time.Second, host+" answers", func() bool {
			code, _ := get(hc, host, "/")
			return code == 200
		})
	}

	for _, host := range []string{"lean.localhost", "rules.localhost"} {
		t.Run("underscores "+host, func(t *testing.T) {
			code, err := get(hc, host, "/headers", "X_Beam_User", "root", "X_Forwarded_For", "203.0.113.66")
			if err != nil || code != 200 {
				t.Fatalf("GET /headers: %d %v", code, err)
			}
			if got := <-underscored; got != "" {
				t.Errorf("the app saw %q, want no field with an underscore", got)
			}
		})
	}

	// 60 requests under way at once leave the edge 60 kept-alive
	// connections to the device, on each path.
	const conns = 60
	for _, host := range []string{"lean.localhost", "rules.localhost"} {
		func() {
			var wg sync.WaitGroup
			defer wg.Wait() // after the gate opens
			open := make(chan struct{})
			defer close(open)
			gate.Store(&open)
			holding.Store(0)
			for i := range conns {
				wg.Go(func() {
					tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: source(i)}}).DialContext}
					defer tr.CloseIdleConnections()
					get(&http.Client{Transport: tr, Timeout: 60 * time.Second}, host, "/hold")
				})
			}
			waitFor(t, 30*time.Second, fmt.Sprintf("%d requests to %s held by the app", conns, host), func() bool { return holding.Load() == conns })
		}()
	}
	for _, host := range []string{"lean.localhost", "rules.localhost"} {
		t.Run("crash "+host, func(t *testing.T) {
			crashes.Store(0)
			code, err := get(hc, host, "/crash")
			t.Logf("GET /crash on %s: %d %v, reached the app %d times", host, code, err, crashes.Load())
			if n := crashes.Load(); n > 2 {
				t.Errorf("one GET /crash reached the app %d times, want at most 2", n)
			}
			if err == nil && code != http.StatusBadGateway {
				t.Errorf("GET /crash: %d, want 502", code)
			}
		})
	}

	// An app that sends a body on HEAD (do_HEAD = do_GET), late: once
	// the next request came on the same connection. Those bytes must not
	// become the answer to the next request, another client's perhaps.
	rawApp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var rawWG sync.WaitGroup
	var rawMu sync.Mutex
	var rawConns []net.Conn
	t.Cleanup(func() {
		rawApp.Close()
		rawMu.Lock()
		for _, c := range rawConns {
			c.Close()
		}
		rawMu.Unlock()
		rawWG.Wait()
	})
	rawWG.Go(func() {
		for {
			conn, err := rawApp.Accept()
			if err != nil {
				return
			}
			rawMu.Lock()
			rawConns = append(rawConns, conn)
			rawMu.Unlock()
			rawWG.Go(func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				late := false
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					switch {
					case late:
						io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen")
						late = false
					case req.Method == http.MethodHead:
						io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\n")
						late = true
					default:
						io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
					}
				}
			})
		}
	})
	c.mustBeam(alpha.args("expose", strconv.Itoa(rawApp.Addr().(*net.TCPAddr).Port), "--name", "headbody", "--bg")...)
	waitFor(t, 15*time.Second, "headbody.localhost answers", func() bool {
		code, _ := get(hc, "headbody.localhost", "/")
		return code == 200
	})
	t.Run("body on HEAD", func(t *testing.T) {
		one := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}, Timeout: 30 * time.Second}
		for i := range 5 {
			req, _ := http.NewRequest("HEAD", edge+"/", nil)
			req.Host = "headbody.localhost"
			resp, err := one.Do(req)
			if err != nil {
				t.Fatalf("HEAD: %v", err)
			}
			resp.Body.Close()
			req, _ = http.NewRequest("GET", edge+"/next", nil)
			req.Host = "headbody.localhost"
			resp, err = one.Do(req)
			if err != nil {
				t.Fatalf("GET after HEAD: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "real" {
				t.Fatalf("GET %d after HEAD: %d %q, want the app's answer to it, \"real\"", i, resp.StatusCode, body)
			}
		}
	})

	logPath := filepath.Join(c.dir, "server.log")
	warns := func() int {
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), "level=WARN msg=\"request refused\"")
	}
	before := warns()
	bodies := map[string]string{
		"bare LF":        "5\nhello\n0\n\n",
		"bad chunk size": "zz\r\nhello\r\n0\r\n\r\n",
	}
	for _, host := range []string{"lean.localhost", "rules.localhost"} {
		for name, body := range bodies {
			t.Run(name+" "+host, func(t *testing.T) {
				for range 5 {
					conn, err := net.Dial("tcp", strings.TrimPrefix(edge, "http://"))
					if err != nil {
						t.Fatal(err)
					}
					conn.SetDeadline(time.Now().Add(30 * time.Second))
					fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s", host, body)
					resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
					conn.Close()
					if err != nil {
						t.Fatalf("response: %v", err)
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusBadRequest {
						t.Fatalf("status %d, want 400", resp.StatusCode)
					}
				}
			})
		}
	}
	if n := warns() - before; n > 0 {
		t.Errorf("%d WARN lines in the server log for 20 malformed bodies, want none", n)
	}
}
