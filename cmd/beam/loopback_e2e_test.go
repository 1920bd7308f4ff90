package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// A node's own loopback listeners (--socks5, --http-proxy, --dns-listen)
// serve its host, never its peers: a peer allowed to reach the node's
// ports must not use them to dial or resolve as the node, around the
// policy.

// ncRaw sends in through `beam nc host port` from d and returns what came
// back, nc's error output and how it ended (timedOut: still running after
// timeout).
func ncRaw(d *device, host string, port int, in []byte, timeout time.Duration) (out []byte, stderr string, err error, timedOut bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.c.bin, d.args("nc", host, strconv.Itoa(port))...)
	cmd.Stdin = bytes.NewReader(in)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.String(), err, ctx.Err() != nil
}

// socks5Connect is a SOCKS5 greeting (no auth) and a CONNECT to host:port,
// followed by payload.
func socks5Connect(host string, port int, payload string) []byte {
	b := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(host))}
	b = append(b, host...)
	b = binary.BigEndian.AppendUint16(b, uint16(port))
	return append(b, payload...)
}

// dnsTCPQuery is a DNS query for name's A records in TCP framing.
func dnsTCPQuery(t *testing.T, name string) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire...)
}

// dnsTCPAnswers returns the A records in a TCP-framed DNS answer, if out
// holds one.
func dnsTCPAnswers(out []byte) []string {
	if len(out) < 2 || len(out) < 2+int(binary.BigEndian.Uint16(out)) {
		return nil
	}
	m := new(dns.Msg)
	if m.Unpack(out[2:2+int(binary.BigEndian.Uint16(out))]) != nil {
		return nil
	}
	var as []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			as = append(as, a.A.String())
		}
	}
	return as
}

// peerAttack is one attempt, from a peer over the overlay, to use a node's
// own listener: any byte that comes back means the listener answered.
type peerAttack struct {
	name string
	port int
	in   []byte
}

// playPeerAttacks runs each attack from from against node's listeners and
// fails the test for any that got an answer or was not refused outright.
func playPeerAttacks(t *testing.T, from *device, node string, attacks []peerAttack) {
	t.Helper()
	for _, a := range attacks {
		start := time.Now()
		out, stderr, err, timedOut := ncRaw(from, node, a.port, a.in, 20*time.Second)
		took := time.Since(start)
		switch {
		case len(out) > 0:
			t.Errorf("%s: %s reached %s's listener on port %d and got %q", a.name, from.name, node, a.port, out)
		case err == nil || timedOut:
			// Refused with a reset: nc fails at once, not by the timeout.
			t.Errorf("%s: beam nc %s %d from %s ended with %v after %v, want it refused", a.name, node, a.port, from.name, err, took)
		case !strings.Contains(stderr, "refused"):
			t.Errorf("%s: beam nc %s %d from %s: stderr %q, want connection refused", a.name, node, a.port, from.name, stderr)
		}
	}
}

// TestPeerCannotProxyThroughNode: beta may reach every port of alpha, alpha
// may reach gamma's port P, beta may not. Through alpha's SOCKS5 or HTTP
// proxy beta would reach gamma:P anyway, and through alpha's DNS listener
// it would resolve gamma, which the policy hides from it.
func TestPeerCannotProxyThroughNode(t *testing.T) {
	c := newCluster(t)
	admin := func(args ...string) string {
		t.Helper()
		return c.mustBeam(append([]string{"admin", "--coordinator", c.url}, args...)...)
	}
	p := echoServer(t) // gamma's app (every device is on this host)
	policy := fmt.Sprintf(`{
  "tagOwners": {"tag:alpha": [], "tag:beta": [], "tag:gamma": []},
  "acls": [
    {"action": "accept", "src": ["tag:beta"], "dst": ["tag:alpha:*"]},
    {"action": "accept", "src": ["tag:alpha"], "dst": ["tag:gamma:%d"]},
  ],
}
`, p)
	admin("policy", "set", writeFile(t, c.dir, "policy.hujson", policy))
	socksPort, proxyPort, dnsPort := freePort(t), freePort(t), freePort(t)
	alpha, beta, gamma := c.device("alpha"), c.device("beta"), c.device("gamma")
	alpha.mustUp("--authkey", strings.TrimSpace(admin("authkey", "create", "--tag", "tag:alpha")),
		"--socks5", "127.0.0.1:"+strconv.Itoa(socksPort),
		"--http-proxy", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--dns-listen", "127.0.0.1:"+strconv.Itoa(dnsPort))
	beta.mustUp("--authkey", strings.TrimSpace(admin("authkey", "create", "--tag", "tag:beta")))
	gamma.mustUp("--authkey", strings.TrimSpace(admin("authkey", "create", "--tag", "tag:gamma")))
	var gammaIP string
	waitFor(t, 15*time.Second, "alpha sees beta and gamma, beta sees alpha", func() bool {
		g := peerByName(alpha.status(), "gamma")
		if g == nil || len(g.IPs) == 0 || peerByName(alpha.status(), "beta") == nil || peerByName(beta.status(), "alpha") == nil {
			return false
		}
		gammaIP = g.IPs[0].String()
		return true
	})
	domain := alpha.status().DNSDomain

	// What the policy allows works: beta -> alpha's app port (the same
	// host port P), alpha -> gamma:P, and alpha's host through its own
	// proxy to gamma:P.
	if ok, why := ncEcho(beta, "alpha", p, 10*time.Second); !ok {
		t.Fatalf("beta -> alpha:%d (allowed): %s", p, why)
	}
	if ok, why := ncEcho(alpha, "gamma", p, 10*time.Second); !ok {
		t.Fatalf("alpha -> gamma:%d (allowed): %s", p, why)
	}
	if got := rawSOCKS5(t, "127.0.0.1:"+strconv.Itoa(socksPort), "gamma", p, "host\n"); got != "host\n" {
		t.Fatalf("alpha's host through its SOCKS5 to gamma:%d: got %q, want the echo", p, got)
	}
	// What it denies does not: beta -> gamma:P, and beta does not see or
	// resolve gamma.
	mustNotReach(t, 2*time.Second, blocked{beta, gammaIP, p})
	if out, _, err := c.beam(nil, beta.args("dns", "query", "gamma."+domain)...); err == nil {
		t.Fatalf("beta resolves gamma: %s", out)
	}

	const payload = "through alpha\n"
	playPeerAttacks(t, beta, "alpha", []peerAttack{
		{"SOCKS5 CONNECT by name", socksPort, socks5Connect("gamma", p, payload)},
		{"SOCKS5 CONNECT by address", socksPort, socks5Connect(gammaIP, p, payload)},
		{"HTTP CONNECT", proxyPort, []byte(fmt.Sprintf("CONNECT gamma:%d HTTP/1.1\r\nHost: gamma:%d\r\n\r\n%s", p, p, payload))},
		{"HTTP absolute-URI request", proxyPort, []byte(fmt.Sprintf("GET http://gamma:%d/ HTTP/1.1\r\nHost: gamma:%d\r\nConnection: close\r\n\r\n", p, p))},
		{"DNS over TCP", dnsPort, dnsTCPQuery(t, "gamma."+domain)},
	})
	// alpha's DNS listener does answer gamma for alpha's host: the query
	// above would have leaked it.
	if got := dnsTCPAnswers(rawConn(t, "127.0.0.1:"+strconv.Itoa(dnsPort), dnsTCPQuery(t, "gamma."+domain))); len(got) != 1 || got[0] != gammaIP {
		t.Fatalf("alpha's host asks its DNS listener for gamma: got %v, want %s", got, gammaIP)
	}

	// The allowed direct path still works after the attempts.
	if ok, why := ncEcho(beta, "alpha", p, 10*time.Second); !ok {
		t.Fatalf("beta -> alpha:%d (allowed) after the attacks: %s", p, why)
	}
}

// rawSOCKS5 connects through the SOCKS5 proxy at proxy to host:port, sends
// payload, half-closes and returns what came back.
func rawSOCKS5(t *testing.T, proxy, host string, port int, payload string) string {
	t.Helper()
	out := rawConn(t, proxy, socks5Connect(host, port, payload))
	// Greeting reply (2 bytes), then the CONNECT reply (10 bytes for IPv4).
	if len(out) < 12 || out[0] != 5 || out[1] != 0 || out[3] != 0 {
		t.Fatalf("SOCKS5 through %s to %s:%d: reply %q, want success", proxy, host, port, out)
	}
	return string(out[12:])
}

// rawConn sends in to the TCP server at addr, half-closes, and returns
// what came back before the server closed.
func rawConn(t *testing.T, addr string, in []byte) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write(in); err != nil {
		t.Fatalf("write to %s: %v", addr, err)
	}
	c.(*net.TCPConn).CloseWrite()
	out, _ := io.ReadAll(c)
	return out
}
