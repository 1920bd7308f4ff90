package main

import (
	"bufio"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"beam.dev/beam/localapi/apitype"
	"github.com/miekg/dns"
)

// The upstream stub is the resolver of every daemon the tests start
// (BEAM_DNS_UPSTREAM, set by TestMain): it answers stubName with stubAddr
// and every other name with NXDOMAIN, so no test's lookup of a name
// outside the overlay leaves loopback.
const (
	stubName = "upstream-check.beam.test."
	stubAddr = "192.0.2.53"
)

var (
	stubUpstream string       // host:port of the stub
	stubQueries  atomic.Int64 // questions it was asked
)

// startUpstreamStub serves the stub on a loopback UDP port and points
// BEAM_DNS_UPSTREAM at it; stop shuts it down.
func startUpstreamStub() (stop func(), err error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		stubQueries.Add(1)
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, stubName) {
			if q.Question[0].Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: stubName, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(stubAddr)})
			}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	stubUpstream = pc.LocalAddr().String()
	if err := os.Setenv("BEAM_DNS_UPSTREAM", stubUpstream); err != nil {
		pc.Close()
		return nil, err
	}
	return func() { srv.Shutdown() }, nil
}

// hostNameservers returns the nameserver addresses of /etc/resolv.conf.
func hostNameservers() []string {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == "nameserver" {
			out = append(out, fs[1])
		}
	}
	return out
}

// TestDaemonUpstreamIsStub checks that a daemon started by the test
// harness forwards names outside the overlay to the loopback stub, not to
// the host's resolvers: beam dns status names the stub alone, and a
// lookup of an outside name gets the stub's answer. Its port mapping is
// off, so it asks no gateway either.
func TestDaemonUpstreamIsStub(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--expiry", "1h"))
	alpha := c.device("alpha")
	alpha.mustUp("--authkey", key)

	status := c.mustBeam(alpha.args("dns", "status")...)
	var ups []string
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "upstreams:"); ok {
			ups = strings.Fields(rest)
		}
	}
	if len(ups) != 1 || ups[0] != stubUpstream {
		t.Fatalf("beam dns status upstreams = %q, want only the stub %s\n%s", ups, stubUpstream, status)
	}
	for _, ns := range hostNameservers() {
		for _, u := range ups {
			if ap, err := netip.ParseAddrPort(u); err == nil && ap.Addr().String() == ns {
				t.Errorf("upstream %s is the host's resolver %s", u, ns)
			}
		}
	}

	before := stubQueries.Load()
	got := c.mustBeam(alpha.args("dns", "query", strings.TrimSuffix(stubName, "."))...)
	if !strings.Contains(got, stubAddr) {
		t.Fatalf("beam dns query %s = %q, want the stub's %s", stubName, got, stubAddr)
	}
	if n := stubQueries.Load() - before; n == 0 {
		t.Fatalf("the stub was asked nothing for %s", stubName)
	}

	// Nor does it ask the host's gateway for a port mapping.
	var r apitype.NetcheckReport
	if err := json.Unmarshal([]byte(c.mustBeam(alpha.args("netcheck", "--json")...)), &r); err != nil {
		t.Fatal(err)
	}
	if r.PortMapping != nil {
		t.Fatalf("netcheck port mapping = %+v, want none (port mapping off)", r.PortMapping)
	}
}
