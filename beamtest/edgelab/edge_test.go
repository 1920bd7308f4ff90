package edgelab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
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
	beta := w.addDevice("beta", nslab.NATEasy, "")
	mallory := w.addDevice("mallory", nslab.NATEasy, w.createAuthKey("other"))
	if err := upAll(ctx, alpha, beta, mallory); err != nil {
		t.Fatal(err)
	}
	// alpha also runs redis, a DNS server and a TLS app with a
	// certificate of the device's own CA.
	redis := alpha.host.Start(ctx, "redis-server", "--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	waitOut(t, redis, "Ready to accept connections", 10*time.Second)
	waitOut(t, alpha.host.StartHelper(ctx, helperDNSApp, "alpha", "127.0.0.1:"+strconv.Itoa(dnsAppPort)), "listening", 10*time.Second)
	deviceCA := w.startTLSApp(alpha, "secure."+domain)
	// Every subtest needs the edge's wildcard certificate from the CA.
	if _, err := alpha.expose(ctx, strconv.Itoa(appPort)); err != nil {
		t.Fatal(err)
	}
	var body string
	err := retry(ctx, 60*time.Second, func() error {
		var err error
		body, err = w.curl(ctx, 0, "https://alpha."+domain+"/")
		return err
	})
	if err != nil {
		t.Fatalf("GET https://alpha.%s verified against the ACME root: %v: %s", domain, err, body)
	}
	t.Logf("wildcard certificate served %v after beam server started", time.Since(w.serverStart).Round(time.Millisecond))

	t.Run("https", func(t *testing.T) { testHTTPS(t, w, alpha) })
	t.Run("tcp-udp", func(t *testing.T) { testTCPUDP(t, w, alpha) })
	t.Run("custom-domain", func(t *testing.T) { testCustomDomain(t, w, alpha) })
	t.Run("policy", func(t *testing.T) { testPolicy(t, w, alpha) })
	t.Run("attacker", func(t *testing.T) { testAttacker(t, w, alpha, mallory) })
	t.Run("tls-passthrough", func(t *testing.T) { testTLSPassthrough(t, w, alpha, deviceCA) })
	t.Run("pool", func(t *testing.T) { testPool(t, w, alpha, beta) })
}

// testHTTPS: alpha's app on https://alpha.example.test with a certificate
// of the ACME CA, over HTTP/1.1 and HTTP/2, WebSocket, gRPC, SSE and big
// bodies.
func testHTTPS(t *testing.T, w *world, alpha *device) {
	ctx := t.Context()
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
	body, err := w.curl(ctx, 0, "--http1.1", "-w", "\n%{http_code} %{http_version}", url+"/")
	if err != nil {
		t.Fatalf("GET %s verified against the ACME root: %v: %s", url, err, body)
	}
	if !strings.HasPrefix(body, "hello from alpha host=alpha."+domain) || !strings.HasSuffix(body, "200 1.1") {
		t.Fatalf("GET %s = %q", url, body)
	}

	body, err = w.curl(ctx, 0, "--http2", "-w", "\n%{http_code} %{http_version}", url+"/")
	if err != nil || !strings.HasSuffix(body, "200 2") {
		t.Fatalf("curl --http2: %q, %v; want HTTP/2 200", body, err)
	}

	// Plain HTTP is answered with a redirect to the same URL over HTTPS,
	// which curl -L then follows to the app.
	plain := "http://alpha." + domain + "/path?q=1"
	body, err = w.curl(ctx, 0, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", plain)
	if err != nil || body != "308 https://alpha."+domain+"/path?q=1" {
		t.Fatalf("GET %s: %q, %v; want 308 to the https URL", plain, body, err)
	}
	body, err = w.curl(ctx, 0, "--resolve", "alpha."+domain+":443:"+w.srv.Addr().String(), "-L", "-w", "\n%{http_code} %{url_effective}", plain)
	if err != nil || !strings.HasPrefix(body, "hello from alpha") || !strings.HasSuffix(body, "200 https://alpha."+domain+"/path?q=1") {
		t.Fatalf("curl -L %s: %q, %v; want the app over HTTPS", plain, body, err)
	}

	out, err := w.client(ctx, 0, "ws", "wss://alpha."+domain+"/ws", "100")
	if err != nil || !strings.HasPrefix(out, "ws echoed 100 messages status=101") {
		t.Fatalf("websocket: %q, %v", out, err)
	}
	t.Log(out)
	out, err = w.client(ctx, 0, "wsh2", "https://alpha."+domain+"/ws", "100")
	if err != nil || !strings.HasPrefix(out, "wsh2 echoed 100 messages proto=HTTP/2.0 status=200") {
		t.Fatalf("websocket over HTTP/2: %q, %v", out, err)
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
}

// publicPort returns the port of a tcp:// or udp:// URL.
func publicPort(t *testing.T, url string) string {
	t.Helper()
	m := regexp.MustCompile(`^(tcp|udp)://[^/]+:(\d+)$`).FindStringSubmatch(url)
	if m == nil {
		t.Fatalf("expose printed %q, want PROTO://HOST:PORT", url)
	}
	return m[2]
}

// testTCPUDP: redis-cli PING through a --tcp route; dig through a --udp
// route to a DNS server on the device.
func testTCPUDP(t *testing.T, w *world, alpha *device) {
	ctx := t.Context()
	url, err := alpha.expose(ctx, "--tcp", strconv.Itoa(redisPort))
	if err != nil {
		t.Fatal(err)
	}
	port := publicPort(t, url)
	srv := w.srv.Addr().String()
	var out []byte
	err = retry(ctx, 10*time.Second, func() error {
		out, err = w.clients[0].Run(ctx, "redis-cli", "-h", srv, "-p", port, "PING")
		if err == nil && strings.TrimSpace(string(out)) != "PONG" {
			err = fmt.Errorf("redis-cli PING = %q", out)
		}
		return err
	})
	if err != nil {
		t.Fatalf("redis through %s: %v", url, err)
	}
	out, err = w.clients[0].Run(ctx, "redis-cli", "-h", srv, "-p", port, "SET", "edgelab", "through the edge")
	if err != nil || strings.TrimSpace(string(out)) != "OK" {
		t.Fatalf("redis SET: %q, %v", out, err)
	}
	out, err = w.clients[0].Run(ctx, "redis-cli", "-h", srv, "-p", port, "GET", "edgelab")
	if err != nil || strings.TrimSpace(string(out)) != "through the edge" {
		t.Fatalf("redis GET: %q, %v", out, err)
	}
	t.Logf("redis-cli -p %s PING -> PONG, SET/GET round trip through %s", port, url)

	url, err = alpha.expose(ctx, "--udp", strconv.Itoa(dnsAppPort))
	if err != nil {
		t.Fatal(err)
	}
	port = publicPort(t, url)
	err = retry(ctx, 10*time.Second, func() error {
		out, err = w.clients[0].Run(ctx, "dig", "+short", "+time=2", "+tries=1", "@"+srv, "-p", port, "hello.device.test", "TXT")
		if err == nil && strings.TrimSpace(string(out)) != `"hello from alpha"` {
			err = fmt.Errorf("dig = %q", out)
		}
		return err
	})
	if err != nil {
		t.Fatalf("dig through %s: %v", url, err)
	}
	t.Logf("dig @edge -p %s hello.device.test TXT -> %s", port, strings.TrimSpace(string(out)))
}

// testCustomDomain: the network proves control of app.customer.test in
// the customer's DNS, publishes it, and the edge gets a certificate for it
// on demand (TLS-ALPN-01 on :443).
func testCustomDomain(t *testing.T, w *world, alpha *device) {
	ctx := t.Context()
	const host = "app." + customerDNS
	out, err := w.admin(ctx, "domains", "verify", host)
	if err != nil {
		t.Fatalf("domains verify: %v: %s", err, out)
	}
	m := regexp.MustCompile(`_beam-challenge\.` + regexp.QuoteMeta(host) + `\.\s+TXT\s+"([^"]+)"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("domains verify printed no TXT record:\n%s", out)
	}
	// Without the record, expose is refused.
	if _, err := alpha.expose(ctx, strconv.Itoa(appPort), "--domain", host); err == nil || !strings.Contains(err.Error(), "not verified") {
		t.Fatalf("expose of an unproved custom domain: %v; want not verified", err)
	}
	if err := writeRecords(w.records,
		"_beam-challenge."+host+" TXT \""+m[1]+"\"",
		host+" A "+w.srv.Addr().String()); err != nil {
		t.Fatal(err)
	}
	out, err = w.admin(ctx, "domains", "verify", host)
	if err != nil || !strings.Contains(out, "is verified") {
		t.Fatalf("domains verify after publishing the TXT record: %v: %s", err, out)
	}
	url, err := alpha.expose(ctx, strconv.Itoa(appPort), "--domain", host)
	if err != nil {
		t.Fatal(err)
	}
	if url != "https://"+host {
		t.Fatalf("expose --domain printed %q", url)
	}
	start := time.Now()
	var body string
	err = retry(ctx, 60*time.Second, func() error {
		body, err = w.curl(ctx, 0, "-w", "\n%{http_code}", url+"/")
		return err
	})
	if err != nil || !strings.HasPrefix(body, "hello from alpha host="+host) || !strings.HasSuffix(body, "200") {
		t.Fatalf("GET %s: %q, %v", url, body, err)
	}
	// Resolved as the public would: through the customer's DNS.
	b, err := w.clients[0].RunHelper(ctx, helperClient, "-zone", hostPort(w.custDNS.Addr(), 53), "-ca", w.roots, "tlsinfo", url+"/")
	out = strings.TrimSpace(string(b))
	if err != nil || !strings.Contains(out, `dns=[`+host+`]`) || !strings.Contains(out, "Pebble") {
		t.Fatalf("certificate of %s: %q, %v", host, out, err)
	}
	t.Logf("custom domain served %v after expose with an on-demand certificate: %s", time.Since(start).Round(time.Millisecond), out)
}

// httpCode returns curl's status code for args (-w %{http_code}).
func (w *world) httpCode(ctx context.Context, i int, args ...string) string {
	out, _ := w.curl(ctx, i, append([]string{"-o", "/dev/null", "-w", "%{http_code}"}, args...)...)
	return strings.TrimSpace(out)
}

// testPolicy: basic auth, deny-ip, rate limit, header rewriting and CORS,
// enforced at the edge, seen by real HTTP clients.
func testPolicy(t *testing.T, w *world, alpha *device) {
	ctx := t.Context()
	port := strconv.Itoa(appPort)
	client0 := w.clients[0].Addr().String()
	for _, args := range [][]string{
		{"--name", "auth", "--basic-auth", "u:p4ss"},
		{"--name", "deny", "--deny-ip", client0 + "/32"},
		{"--name", "rl", "--rate-limit", "5/s"},
		{"--name", "hdr", "--header-add", "X-Beam-Test: yes", "--header-remove", "X-Secret"},
		{"--name", "cors", "--cors", "https://shop.customer.test"},
	} {
		if _, err := alpha.expose(ctx, append([]string{port}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	u := func(name, path string) string { return "https://" + name + "." + domain + path }

	if got := w.httpCode(ctx, 0, u("auth", "/")); got != "401" {
		t.Errorf("basic auth, no credentials: %s, want 401", got)
	}
	if got := w.httpCode(ctx, 0, "-u", "u:wrong", u("auth", "/")); got != "401" {
		t.Errorf("basic auth, wrong password: %s, want 401", got)
	}
	if got := w.httpCode(ctx, 0, "-u", "u:p4ss", u("auth", "/")); got != "200" {
		t.Errorf("basic auth, right password: %s, want 200", got)
	}
	if got := w.httpCode(ctx, 0, u("deny", "/")); got != "403" {
		t.Errorf("deny-ip %s from that client: %s, want 403", client0, got)
	}
	if got := w.httpCode(ctx, 1, u("deny", "/")); got != "200" {
		t.Errorf("deny-ip %s from another client: %s, want 200", client0, got)
	}

	// 20 requests on one keep-alive connection, as fast as curl goes,
	// against a limit of 5/s with a burst of 5 per client address. The
	// limiter admits the burst, then one request per 200 ms of the
	// burst's span: from a client that never asked this route before,
	// between burst and burst + rate x span succeed and the rest get 429.
	// The span is measured around the whole curl run, so it can only be
	// over-estimated, which loosens the upper bound. A span so long that
	// the limiter could admit all 20 (a loaded machine) measured nothing:
	// the burst is repeated from another client, whose bucket is full.
	const (
		rlRate  = 5
		rlBurst = 5
		rlReqs  = 20
	)
	args := []string{"-w", "%{http_code}\n"}
	for range rlReqs {
		args = append(args, "-o", "/dev/null", u("rl", "/"))
	}
	for i := range w.clients {
		start := time.Now()
		out, err := w.curl(ctx, i, args...)
		span := time.Since(start)
		if err != nil {
			t.Fatalf("rate limit burst: %v", err)
		}
		codes := map[string]int{}
		for _, c := range strings.Fields(out) {
			codes[c]++
		}
		maxOK := rlBurst + int(rlRate*span.Seconds())
		t.Logf("rate limit %d/s, %d back-to-back requests from client %d in %v: %v (want %d to %d x 200)",
			rlRate, rlReqs, i, span.Round(time.Millisecond), codes, rlBurst, maxOK)
		if maxOK >= rlReqs && i+1 < len(w.clients) {
			continue
		}
		if codes["200"] < rlBurst || codes["200"] > maxOK || codes["200"]+codes["429"] != rlReqs {
			t.Errorf("rate limit %d/s, burst of %d in %v: %v; want %d to %d x 200, the rest 429", rlRate, rlReqs, span, codes, rlBurst, maxOK)
		}
		if maxOK >= rlReqs {
			t.Errorf("rate limit: every burst took %v or more, too slow to show the limit", span)
		}
		break
	}

	out, err := w.curl(ctx, 0, "-H", "X-Secret: s3cret", "-H", "X-Beam-Test: spoofed", u("hdr", "/headers"))
	if err != nil {
		t.Fatal(err)
	}
	var hdr map[string][]string
	if err := json.Unmarshal([]byte(out), &hdr); err != nil {
		t.Fatalf("headers: %v: %q", err, out)
	}
	if got := hdr["X-Beam-Test"]; len(got) != 1 || got[0] != "yes" {
		t.Errorf("header-add: the app saw X-Beam-Test %q, want [yes]", got)
	}
	if got, ok := hdr["X-Secret"]; ok {
		t.Errorf("header-remove: the app saw X-Secret %q", got)
	}
	if got := hdr["X-Forwarded-For"]; len(got) != 1 || got[0] != client0 {
		t.Errorf("the app saw X-Forwarded-For %q, want [%s]", got, client0)
	}

	out, err = w.curl(ctx, 0, "-X", "OPTIONS", "-D", "-", "-o", "/dev/null",
		"-H", "Origin: https://shop.customer.test", "-H", "Access-Control-Request-Method: PUT", u("cors", "/"))
	if err != nil {
		t.Fatal(err)
	}
	low := strings.ToLower(out)
	if !strings.Contains(low, "access-control-allow-origin: https://shop.customer.test") || !regexp.MustCompile(`^http/\S+ 20[04]`).MatchString(low) {
		t.Errorf("CORS preflight from the allowed origin:\n%s", out)
	}
	out, err = w.curl(ctx, 0, "-X", "OPTIONS", "-D", "-", "-o", "/dev/null",
		"-H", "Origin: https://evil.test", "-H", "Access-Control-Request-Method: PUT", u("cors", "/"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(out), "access-control-allow-origin") {
		t.Errorf("CORS preflight from another origin was allowed:\n%s", out)
	}
}

// testAttacker: another network cannot take or shadow alpha's name in any
// spelling; a removed node's name stops at the edge; Host/SNI mismatch
// and request smuggling are refused.
func testAttacker(t *testing.T, w *world, alpha, mallory *device) {
	ctx := t.Context()
	port := strconv.Itoa(appPort)
	if _, err := alpha.expose(ctx, port); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alpha", "ALPHA", "alpha.", "Alpha." + domain + ".", "alpha." + strings.ToUpper(domain)} {
		if url, err := mallory.expose(ctx, port, "--name", name); err == nil {
			t.Errorf("network other took --name %q: %s", name, url)
		} else if !strings.Contains(err.Error(), "taken") {
			t.Errorf("network other, --name %q: %v; want the name is taken", name, err)
		}
	}
	for _, host := range []string{"alpha." + domain, "ALPHA." + strings.ToUpper(domain)} {
		body, err := w.curl(ctx, 0, "https://"+host+"/")
		if err != nil || !strings.HasPrefix(body, "hello from alpha") {
			t.Errorf("GET https://%s after the attempts: %q, %v; want alpha's app", host, body, err)
		}
	}
	// A trailing dot in Host is the same name.
	if body, err := w.curl(ctx, 0, "-H", "Host: alpha."+domain+".", "https://alpha."+domain+"/"); err != nil || !strings.HasPrefix(body, "hello from alpha") {
		t.Errorf("Host with a trailing dot: %q, %v", body, err)
	}

	// mallory publishes its own name, then is removed: no dangling name.
	url, err := mallory.expose(ctx, port, "--name", "mallory")
	if err != nil {
		t.Fatal(err)
	}
	if body, err := w.curl(ctx, 0, url+"/"); err != nil || !strings.HasPrefix(body, "hello from mallory") {
		t.Fatalf("GET %s: %q, %v", url, body, err)
	}
	if out, err := w.admin(ctx, "nodes", "remove", "other/mallory"); err != nil {
		t.Fatalf("remove mallory: %v: %s", err, out)
	}
	start := time.Now()
	if err := retry(ctx, 10*time.Second, func() error {
		// A request racing the removal may wait for the gone device;
		// give each try 3 s.
		out, err := w.curl(ctx, 0, "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}", url+"/")
		if strings.TrimSpace(out) != "404" {
			return fmt.Errorf("GET %s after the node was removed: %q, %v; want 404", url, out, err)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	t.Logf("removed node's name answered 404 after %v", time.Since(start).Round(time.Millisecond))

	// Host names another route than the TLS server name: 421.
	if got := w.httpCode(ctx, 0, "-H", "Host: auth."+domain, "https://alpha."+domain+"/"); got != "421" {
		t.Errorf("SNI alpha, Host auth: %s, want 421", got)
	}
	// CL+TE: refused before anything reaches the device.
	edge80 := hostPort(w.srv.Addr(), 80)
	req := "POST / HTTP/1.1\r\nHost: alpha." + domain + "\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: alpha." + domain + "\r\n\r\n"
	out, err := w.client(ctx, 0, "raw", edge80, strconv.Quote(req))
	if err != nil || !strings.HasPrefix(out, "raw HTTP/1.1 400") {
		t.Errorf("CL+TE request: %q, %v; want 400", out, err)
	}
}

// startTLSApp starts a TLS app on d with a certificate for host from a CA
// of its own, and returns the CA's PEM file.
func (w *world) startTLSApp(d *device, host string) string {
	caPEM, caKey := issueCert(w.t, nil, nil, "edgelab device CA", nil, nil)
	certPEM, keyPEM := issueCert(w.t, caPEM, caKey, host, []string{host}, nil)
	dir := filepath.Join(w.dir, d.name+"-tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		w.t.Fatal(err)
	}
	ca, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := errors.Join(os.WriteFile(ca, caPEM, 0o644), os.WriteFile(cert, certPEM, 0o644), os.WriteFile(key, keyPEM, 0o600)); err != nil {
		w.t.Fatal(err)
	}
	p := d.host.StartHelper(w.t.Context(), helperApp, d.name, "127.0.0.1:"+strconv.Itoa(tlsAppPort), cert, key)
	waitOut(w.t, p, "listening", 10*time.Second)
	return ca
}

// testTLSPassthrough: the edge passes TLS for secure.example.test through
// by SNI; the client sees the device's own certificate.
func testTLSPassthrough(t *testing.T, w *world, alpha *device, deviceCA string) {
	ctx := t.Context()
	url, err := alpha.expose(ctx, strconv.Itoa(tlsAppPort), "--tls-passthrough", "--name", "secure")
	if err != nil {
		t.Fatal(err)
	}
	if url != "https://secure."+domain {
		t.Fatalf("expose --tls-passthrough printed %q", url)
	}
	out, err := w.clients[0].RunHelper(ctx, helperClient, "-zone", hostPort(w.srv.Addr(), 53), "-ca", deviceCA, "tlsinfo", url+"/")
	if err != nil || !strings.Contains(string(out), `issuer="edgelab device CA"`) || !strings.Contains(string(out), "hello over the device's own TLS from alpha") {
		t.Fatalf("tlsinfo %s with the device's CA: %q, %v", url, out, err)
	}
	t.Logf("passthrough: %s", strings.TrimSpace(string(out)))
	// The ACME root does not vouch for it: the edge did not terminate.
	if out, err := w.client(ctx, 0, "tlsinfo", url+"/"); err == nil {
		t.Fatalf("tlsinfo %s trusting only the ACME root succeeded: %q", url, out)
	}
}

// testPool: alpha and beta publish one name with --pool; beta's daemon is killed
// under load; every request that starts 5 s after the kill succeeds.
func testPool(t *testing.T, w *world, alpha, beta *device) {
	ctx := t.Context()
	port := strconv.Itoa(appPort)
	for _, d := range []*device{alpha, beta} {
		if _, err := d.expose(ctx, port, "--name", "pool", "--pool"); err != nil {
			t.Fatal(err)
		}
	}
	url := "https://pool." + domain + "/"
	cmd := w.clients[1].HelperCommand(ctx, helperClient, "-zone", hostPort(w.srv.Addr(), 53), "-ca", w.roots, "load", url, "12s", "50")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		start   time.Time
		ok      bool
		ms      int
		backend string
		line    string
	}
	var results []result
	seen := map[string]bool{}
	var killAt time.Time
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[0] != "req" {
			continue
		}
		ms, _ := strconv.ParseInt(f[1], 10, 64)
		dur, _ := strconv.Atoi(f[3])
		r := result{start: time.UnixMilli(ms), ok: f[2] == "ok", ms: dur, line: sc.Text()}
		if r.ok && len(f) >= 6 {
			r.backend = f[5]
			seen[r.backend] = true
		}
		results = append(results, r)
		if killAt.IsZero() && seen["alpha"] && seen["beta"] && time.Since(results[0].start) > 2*time.Second {
			// Both members answer: kill beta's daemon, no goodbye.
			if err := syscall.Kill(beta.daemon.PID(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killAt = time.Now()
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("load: %v: %s", err, stderr.String())
	}
	if killAt.IsZero() {
		t.Fatalf("the pool never answered from both members: %d requests, seen %v", len(results), seen)
	}
	var before, window, after, afterOK, windowFail int
	var worst result
	for _, r := range results {
		switch {
		case r.start.Before(killAt):
			before++
		case r.start.Before(killAt.Add(5 * time.Second)):
			window++
			if !r.ok {
				windowFail++
			}
		default:
			after++
			if r.ok {
				afterOK++
			} else if worst.line == "" {
				worst = r
			}
			if r.ok && r.backend != "alpha" {
				t.Errorf("after the kill, a request answered from %q: %s", r.backend, r.line)
			}
		}
	}
	t.Logf("pool: %d requests before the kill, %d in the 5 s after (%d failed), %d after that (%d ok)", before, window, windowFail, after, afterOK)
	if after < 100 || afterOK != after {
		t.Fatalf("pool: %d of %d requests 5 s after the kill succeeded (first failure: %s)", afterOK, after, worst.line)
	}
}
