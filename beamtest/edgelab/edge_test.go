package edgelab

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

func TestNSLabHelperProcess(t *testing.T) { nslab.RunHelperProcess(t) }

// bigSize is the size of the upload and download checks.
const bigSize = 256 << 20

// TestEdge publishes apps of devices behind an easy NAT and reaches them
// from public clients: HTTPS features, TCP and UDP routes, a custom
// domain, a pool losing a member, policies, attacks and TLS passthrough.
func TestEdge(t *testing.T) {
	w := newWorld(t, worldConfig{acme: true, clients: 2})
	ctx := t.Context()
	alpha := w.addDevice("alpha", nslab.NATEasy, "")
	if err := upAll(ctx, alpha); err != nil {
		t.Fatal(err)
	}

	t.Run("https", func(t *testing.T) { testHTTPS(t, w, alpha) })
}

// testHTTPS: alpha's app on https://alpha.example.test with a certificate
// of the ACME CA, over HTTP/1.1 and HTTP/2, WebSocket, gRPC, SSE and big
// bodies.
func testHTTPS(t *testing.T, w *world, alpha *device) {
	ctx := t.Context()
	start := time.Now()
	url, err := alpha.expose(ctx, strconv.Itoa(appPort))
	if err != nil {
		t.Fatal(err)
	}
	if url != "https://alpha."+domain {
		t.Fatalf("beam expose printed %q, want https://alpha.%s", url, domain)
	}
	// The zone answers the edge's address for the name.
	dig, err := w.clients[0].Run(ctx, "dig", "+short", "@"+w.srv.Addr().String(), "alpha."+domain, "A")
	if err != nil || strings.TrimSpace(string(dig)) != w.srv.Addr().String() {
		t.Fatalf("dig alpha.%s = %q, %v; want %s", domain, dig, err, w.srv.Addr())
	}
	// The wildcard certificate may still be on its way from the CA.
	var body string
	err = retry(ctx, 60*time.Second, func() error {
		body, err = w.curl(ctx, 0, "--http1.1", "-w", "\n%{http_code} %{http_version}", url+"/")
		return err
	})
	if err != nil {
		t.Fatalf("GET %s verified against the ACME root: %v: %s", url, err, body)
	}
	if !strings.HasPrefix(body, "hello from alpha host=alpha."+domain) || !strings.HasSuffix(body, "200 1.1") {
		t.Fatalf("GET %s = %q", url, body)
	}
	t.Logf("first verified HTTPS response %v after expose", time.Since(start).Round(time.Millisecond))

	body, err = w.curl(ctx, 0, "--http2", "-w", "\n%{http_code} %{http_version}", url+"/")
	if err != nil || !strings.HasSuffix(body, "200 2") {
		t.Fatalf("curl --http2: %q, %v; want HTTP/2 200", body, err)
	}

	out, err := w.client(ctx, 0, "ws", "wss://alpha."+domain+"/ws", "100")
	if err != nil || !strings.HasPrefix(out, "ws echoed 100 messages status=101") {
		t.Fatalf("websocket: %q, %v", out, err)
	}
	t.Log(out)

	out, err = w.client(ctx, 0, "grpc", url)
	if err != nil || out != `grpc proto=HTTP/2.0 health=SERVING grpc-status="0"` {
		t.Fatalf("gRPC health check: %q, %v", out, err)
	}
	t.Log(out)

	out, err = w.client(ctx, 0, "sse", url+"/sse")
	if err != nil {
		t.Fatalf("sse: %v", err)
	}
	m := regexp.MustCompile(`^sse events=(\d+) first_ms=(\d+) last_ms=(\d+) end_ms=(\d+)`).FindStringSubmatch(out)
	if m == nil || m[1] != strconv.Itoa(sseEvents) {
		t.Fatalf("sse: %q", out)
	}
	first, _ := strconv.Atoi(m[2])
	last, _ := strconv.Atoi(m[3])
	// The server waits sseGap between events: the first must arrive well
	// before the last, not buffered until the end.
	if gap := time.Duration(last-first) * time.Millisecond; gap < (sseEvents-1)*sseGap*3/4 {
		t.Fatalf("sse: first event at %dms, last at %dms: the stream was buffered (%q)", first, last, out)
	}
	t.Log(out)

	out, err = w.client(ctx, 0, "upload", url+"/upload", strconv.Itoa(bigSize))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	t.Log(out)
	out, err = w.client(ctx, 0, "download", url+"/download", strconv.Itoa(bigSize))
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	t.Log(out)
	_ = context.Background
}
