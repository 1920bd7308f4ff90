package cli

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"beam.dev/beam/internal/connlimit"
)

func TestConnLimits(t *testing.T) {
	for _, tc := range []struct {
		name      string
		flag      int
		share     float64
		nofile    uint64
		perSource int
		want      connlimit.Limits
	}{
		{"edge of beam server, 2048 files", 0, shareServerEdge, 2048, edgeConnsPerSource, connlimit.Limits{Max: 1024, PerSource: 512}},
		{"edge alone, 1M files", 0, shareAlone, 1 << 20, edgeConnsPerSource, connlimit.Limits{Max: 786432, PerSource: 512}},
		{"relay alone, 1M files", 0, shareAlone, 1 << 20, controlConnsPerSource, connlimit.Limits{Max: 786432}},
		{"coordinator of beam server, 2048 files", 0, shareServerControl, 2048, controlConnsPerSource, connlimit.Limits{Max: 512}},
		{"tiny limit", 0, shareServerControl, 100, controlConnsPerSource, connlimit.Limits{Max: minMaxConns}},
		{"unknown limit", 0, shareAlone, 0, edgeConnsPerSource, connlimit.Limits{Max: fallbackMaxConns, PerSource: 512}},
		{"set by flag", 40, shareAlone, 1 << 20, edgeConnsPerSource, connlimit.Limits{Max: 40, PerSource: 512}},
		{"coordinator, --max-conns 20", 20, shareAlone, 1 << 20, controlConnsPerSource, connlimit.Limits{Max: 20}},
		{"coordinator, --max-conns 2", 2, shareAlone, 1 << 20, controlConnsPerSource, connlimit.Limits{Max: 2}},
		{"no cap", -1, shareAlone, 1 << 20, edgeConnsPerSource, connlimit.Limits{}},
	} {
		if got := connLimits(tc.flag, tc.share, tc.nofile, tc.perSource); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestControlIdleTimeout: the coordinator's and relay's listener closes
// a connection idle between requests (one held only to take a slot of
// the cap), but not a response still streaming (a map stream) nor a
// connection taken over from HTTP (a relay connection).
func TestControlIdleTimeout(t *testing.T) {
	old := controlIdleTimeout
	controlIdleTimeout = 300 * time.Millisecond
	defer func() { controlIdleTimeout = old }()

	stop := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/key", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "key") })
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				io.WriteString(w, "end\n")
				return
			case <-tick.C:
				io.WriteString(w, "frame\n")
				rc.Flush()
			}
		}
	})
	mux.HandleFunc("/derp", func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: derp\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(c, brw) // echo
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lln, hs := limitedServer(ln, connlimit.Limits{Max: 8, PerSource: 8}, mux, slog.New(slog.DiscardHandler))
	go hs.Serve(lln)
	defer hs.Close()
	dial := func(req string) (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, req)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return c, br
		}
		if resp.ContentLength >= 0 {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return c, br
		}
		return c, bufio.NewReader(resp.Body)
	}
	stream, streamBody := dial("GET /stream HTTP/1.1\r\nHost: c\r\n\r\n")
	relay, relayBody := dial("GET /derp HTTP/1.1\r\nHost: c\r\nUpgrade: derp\r\nConnection: Upgrade\r\n\r\n")
	start := time.Now()
	idle, _ := dial("GET /key HTTP/1.1\r\nHost: c\r\n\r\n")
	// The idle connection is closed by the server: EOF, not our deadline.
	if n, err := idle.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("idle connection read = %d, %v; want EOF (closed by the server)", n, err)
	}
	t.Logf("idle connection closed after %v", time.Since(start).Round(time.Millisecond))
	// The idle timeout has passed for the others too: both still work.
	io.WriteString(relay, "ping\n")
	if l, err := relayBody.ReadString('\n'); l != "ping\n" {
		t.Errorf("relay connection after the idle timeout: %q, %v", l, err)
	}
	close(stop)
	var last string
	for {
		l, err := streamBody.ReadString('\n')
		if err != nil {
			break
		}
		last = l
	}
	if last != "end\n" {
		t.Errorf("stream's last line %q, want end: it was cut", last)
	}
	_ = stream
}
