package main

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// countingUpstream serves DNS on a loopback UDP port, answering every A
// question with 192.0.2.66 and remembering the names it was asked.
func countingUpstream(t *testing.T) (addr string, asked func(name string) bool) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		mu.Lock()
		seen[strings.ToLower(q.Question[0].Name)] = true
		mu.Unlock()
		if q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.66")})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String(), func(name string) bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[dns.Fqdn(name)]
	}
}

// TestMagicDNSBaseDomain: names under the base domain (beam.internal)
// that no visible peer has, another network's among them, are answered
// NXDOMAIN by the daemon itself and never reach the upstream, which would
// otherwise answer (shadow) them. Bare names of visible peers are answered
// locally; other bare names go upstream, as Tailscale's MagicDNS does.
func TestMagicDNSBaseDomain(t *testing.T) {
	c := newCluster(t)
	up, asked := countingUpstream(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--reusable", "--coordinator", c.url))
	dnsAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp("--authkey", key, "--dns-upstream", up, "--dns-listen", dnsAddr)
	beta.mustUp("--authkey", key)
	betaIP := waitPeerIP(t, alpha, "beta")
	query := func(name string) *dns.Msg {
		t.Helper()
		cl := &dns.Client{Timeout: 10 * time.Second}
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(name), dns.TypeA)
		r, _, err := cl.Exchange(q, dnsAddr)
		if err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
		return r
	}
	for _, tc := range []struct {
		name      string
		rcode     int
		answer    string // "" for none
		forwarded bool
	}{
		{"beta.default.beam.internal", dns.RcodeSuccess, betaIP, false},
		{"beta", dns.RcodeSuccess, betaIP, false},
		{"mallory.default.beam.internal", dns.RcodeNameError, "", false},
		{"x.beam.internal", dns.RcodeNameError, "", false},
		{"beta.other.beam.internal", dns.RcodeNameError, "", false},
		{"x.y.other.BEAM.internal", dns.RcodeNameError, "", false},
		{"beam.internal", dns.RcodeSuccess, "", false}, // the domain's parent exists: no data
		{"mallory", dns.RcodeSuccess, "192.0.2.66", true},
		{"www.example.test", dns.RcodeSuccess, "192.0.2.66", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := query(tc.name)
			var got []string
			for _, rr := range r.Answer {
				if a, ok := rr.(*dns.A); ok {
					got = append(got, a.A.String())
				}
			}
			if r.Rcode != tc.rcode || strings.Join(got, ",") != tc.answer {
				t.Errorf("%s: got %s %v, want %s %q", tc.name, dns.RcodeToString[r.Rcode], got, dns.RcodeToString[tc.rcode], tc.answer)
			}
			if f := asked(strings.ToLower(tc.name)); f != tc.forwarded {
				t.Errorf("%s: forwarded upstream %v, want %v", tc.name, f, tc.forwarded)
			}
		})
	}
}
