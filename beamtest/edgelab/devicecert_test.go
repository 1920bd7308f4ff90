package edgelab

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// tlsinfoRE parses the public client's tlsinfo line.
var tlsinfoRE = regexp.MustCompile(`^issuer="([^"]*)" subject="[^"]*" dns=\[([^\]]*)\] status=(\d+) body="(.*)" sha256=([0-9a-f]{64}) alpn=(\S*)$`)

type tlsInfo struct {
	issuer, dns, status, body, sha, alpn string
}

// tlsinfo fetches url from public client 0, trusting only the ACME CA's
// root, and parses what the client saw.
func (w *world) tlsinfo(ctx context.Context, url string) (tlsInfo, error) {
	out, err := w.client(ctx, 0, "tlsinfo", url)
	if err != nil {
		return tlsInfo{}, fmt.Errorf("tlsinfo %s: %w: %s", url, err, out)
	}
	m := tlsinfoRE.FindStringSubmatch(out)
	if m == nil {
		return tlsInfo{}, fmt.Errorf("tlsinfo %s printed %q", url, out)
	}
	return tlsInfo{issuer: m[1], dns: m[2], status: m[3], body: m[4], sha: m[5], alpn: m[6]}, nil
}

// TestTLSPassthroughDeviceCert: a device started with --acme-ca obtains a
// certificate for its --tls-passthrough route from the ACME CA by DNS-01
// through the coordinator's zone, and terminates TLS itself in front of a
// plain HTTP app. The public client verifies the chain against the CA's
// root and sees the device's certificate for exactly the route's name,
// not the edge's wildcard, and speaks HTTP/2 with the device (which
// speaks HTTP/1.1 to the app). A second route with --proxy-protocol v2
// works too: the device reads the edge's PROXY header before the
// ClientHello and hands it to the app, which sees the public client.
// Last, a verified custom domain gets a device certificate too: its
// "_acme-challenge" is a CNAME (in the customer's DNS) into Beam's zone,
// as beam admin domains verify and beam expose say.
func TestTLSPassthroughDeviceCert(t *testing.T) {
	w := newWorld(t, worldConfig{acme: true, clients: 1})
	ctx := t.Context()
	alpha := w.addDevice("alpha", nslab.NATEasy, "",
		"--acme-ca", "https://"+hostPort(w.srv.Addr(), pebblePort)+"/dir", "--acme-ca-root", w.pebbleCA)
	if err := alpha.up(ctx); err != nil {
		t.Fatal(err)
	}
	// A plain HTTP app where the TLS app would be.
	waitOut(t, alpha.host.StartHelper(ctx, helperApp, "alpha", "127.0.0.1:"+strconv.Itoa(tlsAppPort)), "listening", 10*time.Second)

	// What the edge serves for its own names: the wildcard.
	if _, err := alpha.expose(ctx, strconv.Itoa(appPort)); err != nil {
		t.Fatal(err)
	}
	var edge tlsInfo
	err := retry(ctx, 60*time.Second, func() error {
		var err error
		edge, err = w.tlsinfo(ctx, "https://alpha."+domain+"/")
		return err
	})
	if err != nil {
		t.Fatalf("the edge's wildcard certificate: %v", err)
	}
	if edge.dns != "*."+domain {
		t.Fatalf("the edge serves alpha.%s with names [%s], want [*.%s]", domain, edge.dns, domain)
	}

	start := time.Now()
	url, err := alpha.expose(ctx, strconv.Itoa(tlsAppPort), "--tls-passthrough", "--name", "secure")
	if err != nil {
		t.Fatal(err)
	}
	host := "secure." + domain
	if url != "https://"+host {
		t.Fatalf("expose --tls-passthrough printed %q, want https://%s", url, host)
	}
	var dev tlsInfo
	err = retry(ctx, 60*time.Second, func() error {
		var err error
		dev, err = w.tlsinfo(ctx, url+"/")
		return err
	})
	if err != nil {
		t.Fatalf("GET %s verified against the ACME root: %v", url, err)
	}
	t.Logf("device certificate served %v after expose: issuer=%q dns=[%s] sha256=%s", time.Since(start).Round(time.Millisecond), dev.issuer, dev.dns, dev.sha)
	if dev.dns != host {
		t.Errorf("device certificate names = [%s], want exactly [%s]", dev.dns, host)
	}
	if dev.sha == edge.sha {
		t.Errorf("the device's route is served with the edge's certificate (sha256 %s)", dev.sha)
	}
	if !strings.Contains(dev.issuer, "Pebble") {
		t.Errorf("device certificate issuer = %q, want the ACME CA (Pebble)", dev.issuer)
	}
	// The app is plain HTTP/1.1: the device terminated TLS, speaking
	// HTTP/2 with the client, and proxied each request.
	if want := "hello from alpha host=" + host + " proto=HTTP/1.1 path=/"; dev.status != "200" || dev.body != want {
		t.Errorf("GET %s = %s %q, want 200 %q", url, dev.status, dev.body, want)
	}
	if dev.alpn != "h2" {
		t.Errorf("GET %s negotiated ALPN %q with the device, want h2", url, dev.alpn)
	}
	// The edge still serves its wildcard for its own names.
	again, err := w.tlsinfo(ctx, "https://alpha."+domain+"/")
	if err != nil || again.sha != edge.sha {
		t.Errorf("the edge's certificate for alpha.%s changed: %+v, %v (was %s)", domain, again, err, edge.sha)
	}

	// --proxy-protocol with a device-terminated route: the app on
	// tlsAppPort+1 requires a PROXY v2 header on every connection.
	waitOut(t, alpha.host.StartHelper(ctx, helperApp, "alpha", "127.0.0.1:"+strconv.Itoa(tlsAppPort+1), "proxy-v2"), "listening", 10*time.Second)
	ppURL, err := alpha.expose(ctx, strconv.Itoa(tlsAppPort+1), "--tls-passthrough", "--proxy-protocol", "v2", "--name", "proxied")
	if err != nil {
		t.Fatal(err)
	}
	var pp tlsInfo
	err = retry(ctx, 60*time.Second, func() error {
		var err error
		pp, err = w.tlsinfo(ctx, ppURL+"/")
		return err
	})
	if err != nil {
		t.Fatalf("GET %s with --proxy-protocol v2: %v", ppURL, err)
	}
	client := w.clients[0].Addr().String()
	if want := "hello from alpha host=proxied." + domain + " proto=HTTP/1.1 proxy-client=" + client + " xff=" + client; pp.status != "200" || pp.body != want || pp.alpn != "h2" {
		t.Errorf("GET %s = %s %q alpn %q, want 200 %q alpn h2", ppURL, pp.status, pp.body, pp.alpn, want)
	}

	testDeviceCertCustomDomain(t, w, alpha)
}

// testDeviceCertCustomDomain: the customer proves control of
// dev.customer.test, creates the CNAME of its _acme-challenge name that
// beam admin domains verify prints, and a device exposing the domain with
// --tls-passthrough gets its own certificate for it by DNS-01: Pebble
// resolves through the customer's DNS, which follows the CNAME into
// Beam's zone. A public client resolving through the customer's DNS
// verifies the chain against the ACME root.
func testDeviceCertCustomDomain(t *testing.T, w *world, alpha *device) {
	ctx := t.Context()
	const host = "dev." + customerDNS
	out, err := w.admin(ctx, "domains", "verify", host)
	if err != nil {
		t.Fatalf("domains verify: %v: %s", err, out)
	}
	m := regexp.MustCompile(`_beam-challenge\.` + regexp.QuoteMeta(host) + `\.\s+TXT\s+"([^"]+)"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("domains verify printed no TXT record:\n%s", out)
	}
	proof := []string{"_beam-challenge." + host + " TXT \"" + m[1] + "\"", host + " A " + w.srv.Addr().String()}
	if err := writeRecords(w.records, proof...); err != nil {
		t.Fatal(err)
	}
	out, err = w.admin(ctx, "domains", "verify", host)
	if err != nil || !strings.Contains(out, "is verified") {
		t.Fatalf("domains verify after publishing the TXT record: %v: %s", err, out)
	}
	cn := regexp.MustCompile(`(?m)^\s*_acme-challenge\.` + regexp.QuoteMeta(host) + `\.\s+CNAME\s+(\S+)\.$`).FindStringSubmatch(out)
	if cn == nil {
		t.Fatalf("domains verify of a verified domain printed no _acme-challenge CNAME:\n%s", out)
	}
	target := cn[1]
	if !strings.HasSuffix(target, "."+domain) {
		t.Fatalf("the _acme-challenge CNAME points to %s, not into the edge domain %s", target, domain)
	}
	if err := writeRecords(w.records, append(proof, "_acme-challenge."+host+" CNAME "+target+".")...); err != nil {
		t.Fatal(err)
	}

	const port = tlsAppPort + 2
	waitOut(t, alpha.host.StartHelper(ctx, helperApp, "alpha", "127.0.0.1:"+strconv.Itoa(port)), "listening", 10*time.Second)
	start := time.Now()
	js, err := alpha.expose(ctx, strconv.Itoa(port), "--tls-passthrough", "--domain", host, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		URL                string `json:"url"`
		ACMEChallengeCNAME string `json:"acme_challenge_cname"`
	}
	if err := json.Unmarshal([]byte(js), &resp); err != nil {
		t.Fatalf("expose --json printed %q: %v", js, err)
	}
	if resp.URL != "https://"+host || resp.ACMEChallengeCNAME != target {
		t.Fatalf("expose --tls-passthrough --domain %s = URL %q, CNAME target %q; want https://%s, %s", host, resp.URL, resp.ACMEChallengeCNAME, host, target)
	}
	var line string
	err = retry(ctx, 90*time.Second, func() error {
		b, err := w.clients[0].RunHelper(ctx, helperClient, "-zone", hostPort(w.custDNS.Addr(), 53), "-ca", w.roots, "tlsinfo", resp.URL+"/")
		line = strings.TrimSpace(string(b))
		if err != nil {
			return fmt.Errorf("%w: %s", err, line)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("GET %s through the customer's DNS, verified against the ACME root: %v", resp.URL, err)
	}
	t.Logf("custom domain device certificate served %v after expose: %s", time.Since(start).Round(time.Millisecond), line)
	d := tlsinfoRE.FindStringSubmatch(line)
	if d == nil {
		t.Fatalf("tlsinfo printed %q", line)
	}
	if d[2] != host || !strings.Contains(d[1], "Pebble") {
		t.Errorf("certificate of %s: issuer %q names [%s], want Pebble's for exactly [%s]", host, d[1], d[2], host)
	}
	if want := "hello from alpha host=" + host + " proto=HTTP/1.1 path=/"; d[4] != want || d[3] != "200" || d[6] != "h2" {
		t.Errorf("GET %s = %s %q alpn %q, want 200 %q over h2 (the device terminates TLS)", resp.URL, d[3], d[4], d[6], want)
	}
}
