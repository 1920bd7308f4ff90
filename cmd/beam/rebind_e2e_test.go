package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// rebindStub serves DNS on a loopback UDP port: rebindName gets the address
// in *target (an overlay address, as an attacker's public name would),
// publicName gets 127.0.0.1, everything else NXDOMAIN.
func rebindStub(t *testing.T, target *atomic.Value) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		var a string
		switch {
		case strings.HasSuffix(name, ".rebind.beam.test."):
			a, _ = target.Load().(string)
		case name == "public.beam.test.":
			a = "127.0.0.1"
		default:
			m.Rcode = dns.RcodeNameError
		}
		if a != "" && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(a)})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestProxyRebinding: a web page must not reach into the mesh through the
// device's proxies. A public name whose (attacker's) DNS answer is a peer's
// overlay address resolves to nothing on the overlay, through the DNS
// listener, the HTTP proxy and SOCKS5; and the HTTP proxy refuses a
// request for a mesh host that the browser marks as coming from a page of
// another site (Sec-Fetch-Site), even with no Origin or Referer.
func TestProxyRebinding(t *testing.T) {
	c := newCluster(t)
	var target atomic.Value
	stub := rebindStub(t, &target)
	const secret = "mesh app secret"
	app := tcpServer(t, func(conn net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
			return
		}
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(secret), secret)
	})

	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--reusable", "--coordinator", c.url))
	socksPort, proxyPort, dnsPort := freePort(t), freePort(t), freePort(t)
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp("--authkey", key, "--dns-upstream", stub,
		"--socks5", "127.0.0.1:"+strconv.Itoa(socksPort),
		"--http-proxy", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--dns-listen", "127.0.0.1:"+strconv.Itoa(dnsPort))
	beta.mustUp("--authkey", key)
	betaIP := waitPeerIP(t, alpha, "beta")
	target.Store(betaIP)
	proxyURL := "http://127.0.0.1:" + strconv.Itoa(proxyPort)
	viaProxy := func(rawURL string, hdr map[string]string) (int, string) {
		t.Helper()
		tr := &http.Transport{Proxy: func(*http.Request) (*url.URL, error) { return url.Parse(proxyURL) }}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", rawURL, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("GET %s via the proxy: %v", rawURL, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	appOn := func(host string) string { return "http://" + host + ":" + strconv.Itoa(app) + "/" }

	// What a user does works: the mesh app by name through the proxy, and
	// a public name whose answer is not on the overlay.
	if code, body := viaProxy(appOn("beta"), nil); code != 200 || body != secret {
		t.Fatalf("GET beta's app via the proxy: %d %q, want 200 and the app", code, body)
	}
	if code, body := viaProxy(appOn("public.beam.test"), map[string]string{"Sec-Fetch-Site": "cross-site"}); code != 200 || body != secret {
		t.Fatalf("GET a public name via the proxy, cross-site: %d %q, want 200 (only mesh hosts are guarded)", code, body)
	}

	t.Run("DNSListener", func(t *testing.T) {
		got := dnsTCPAnswers(rawConn(t, "127.0.0.1:"+strconv.Itoa(dnsPort), dnsTCPQuery(t, "a.rebind.beam.test")))
		for _, a := range got {
			if a == betaIP {
				t.Errorf("alpha's DNS listener answers a.rebind.beam.test with %v, want no overlay address", got)
			}
		}
	})
	t.Run("HTTPProxy", func(t *testing.T) {
		if code, body := viaProxy(appOn("b.rebind.beam.test"), nil); code == 200 || strings.Contains(body, secret) {
			t.Errorf("GET b.rebind.beam.test via the proxy: %d %q, want it refused", code, body)
		}
	})
	t.Run("SOCKS5", func(t *testing.T) {
		out := rawConn(t, "127.0.0.1:"+strconv.Itoa(socksPort), socks5Connect("c.rebind.beam.test", app, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		if len(out) >= 4 && out[3] == 0 || strings.Contains(string(out), secret) {
			t.Errorf("SOCKS5 CONNECT c.rebind.beam.test: reply %q, want a failure", out)
		}
	})
	t.Run("SecFetchSite", func(t *testing.T) {
		for _, tt := range []struct {
			site string
			ok   bool
		}{
			{"cross-site", false},
			{"same-site", false},
			{"same-origin", true},
			{"none", true},
		} {
			for _, host := range []string{"beta", betaIP} {
				code, body := viaProxy(appOn(host), map[string]string{"Sec-Fetch-Site": tt.site})
				if got := code == 200 && body == secret; got != tt.ok {
					t.Errorf("GET %s with Sec-Fetch-Site %s: %d %q, want reached=%v", appOn(host), tt.site, code, body, tt.ok)
				}
			}
		}
	})
}
