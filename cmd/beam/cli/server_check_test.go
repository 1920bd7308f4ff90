package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/dnsserver"
	"beam.dev/beam/wire"
)

// serveZone serves a zone for example.test naming ns as its name server
// on a loopback UDP port and returns the address.
func serveZone(t *testing.T, ns string) string {
	t.Helper()
	z := dnsserver.NewZone(dnsserver.ZoneOptions{Origin: "example.test", NS: []string{ns}, EdgeAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); z.ServePacket(ctx, pc) }()
	t.Cleanup(func() { cancel(); pc.Close(); <-done })
	return pc.LocalAddr().String()
}

// tcpPort returns the port of a loopback listener that accepts and
// closes connections, or, if closed, of one that was closed again.
func tcpPort(t *testing.T, closed bool) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if closed {
		ln.Close()
		return port
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return port
}

// tlsPort serves TLS on loopback with cert, or failing every handshake
// if cert is nil (an order that never succeeded).
func tlsPort(t *testing.T, cert *tls.Certificate) int {
	cfg := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if cert == nil {
			return nil, errors.New("no certificate")
		}
		return cert, nil
	}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
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
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// wildcardCert returns a self-signed certificate for *.example.test and
// a pool holding it.
func wildcardCert(t *testing.T) (*tls.Certificate, *x509.CertPool) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, DNSNames: []string{"*.example.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k, Leaf: leaf}, pool
}

// stunPort serves STUN on loopback.
func stunPort(t *testing.T) int {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); derpserver.ServeSTUN(ctx, pc, nil) }()
	t.Cleanup(func() { cancel(); pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// TestServerCheck runs beam server check's probes against loopback
// stand-ins for a server at public address 127.0.0.1: a good setup
// passes every check; a broken delegation, a closed port and a failed
// certificate order each fail with their fix.
func TestServerCheck(t *testing.T) {
	zone := serveZone(t, "ns1.example.test")
	_, zonePort, _ := net.SplitHostPort(zone)
	elsewhere := serveZone(t, "ns.elsewhere.test")
	cert, roots := wildcardCert(t)
	good := func() *serverCheck {
		return &serverCheck{Domain: "example.test", PublicIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Resolver: zone,
			DNSPort: atoi(t, zonePort), HTTPPort: tcpPort(t, false), CoordPort: tcpPort(t, false), HTTPSPort: tlsPort(t, cert),
			STUNPort: stunPort(t), Roots: roots, Timeout: 10 * time.Second}
	}
	for _, tc := range []struct {
		name    string
		breakIt func(c *serverCheck)
		what    string // the failing check, "" for none
		said    string
		fix     string
	}{
		{"good", func(*serverCheck) {}, "", "", ""},
		{"broken delegation", func(c *serverCheck) { c.Resolver = elsewhere }, "delegation of example.test", "delegated to ns.elsewhere.test., not to this server", "example.test. NS ns1.example.test."},
		{"closed port", func(c *serverCheck) { c.HTTPPort = tcpPort(t, true) }, "edge HTTP at 127.0.0.1:", "closed", "firewalls"},
		{"failed order", func(c *serverCheck) { c.HTTPSPort = tlsPort(t, nil) }, "certificate at 127.0.0.1:", "no certificate for beam-check.example.test yet", "ACME order"},
		{"failed order, CA saw no record", failedOrder(t, &wire.CertStatus{State: wire.CertFailed, Problem: "unauthorized", Error: "No TXT records found for DNS challenge"}), "certificate at 127.0.0.1:",
			"the ACME order for *.example.test at https://ca.test/dir failed (2 order(s), the last 1m",
			"the CA could not read the DNS-01 record _acme-challenge.example.test from this server's zone: create example.test. NS ns1.example.test. at the registrar of example.test with the glue record ns1.example.test. A 127.0.0.1, and open port 53"},
		{"failed order, CA's problem", failedOrder(t, &wire.CertStatus{State: wire.CertFailed, Problem: "unauthorized", Error: "No TXT records found for DNS challenge"}), "certificate at 127.0.0.1:",
			"ago): unauthorized: No TXT records found for DNS challenge", "(see the delegation and DNS checks)"},
		{"failed order, CA unreachable", failedOrder(t, &wire.CertStatus{State: wire.CertFailed, Error: "dial tcp 192.0.2.9:443: connect: connection refused"}), "certificate at 127.0.0.1:",
			"failed (2 order(s), the last 1m", "could not talk to the ACME directory https://ca.test/dir"},
		{"failed order, rate limited", failedOrder(t, &wire.CertStatus{State: wire.CertFailed, Problem: "rateLimited", Error: "too many certificates"}), "certificate at 127.0.0.1:",
			"rateLimited: too many certificates", "--acme-staging"},
		{"order under way", failedOrder(t, &wire.CertStatus{State: wire.CertPending}), "certificate at 127.0.0.1:",
			"no certificate for beam-check.example.test yet: the ACME order for *.example.test at https://ca.test/dir is under way", "wait a minute"},
		{"failed order, seen without the admin token", func(c *serverCheck) {
			c.HTTPSPort = tlsPort(t, nil)
			c.Setup = func(context.Context) (*wire.ServerSetup, error) {
				return &wire.ServerSetup{Domain: "example.test", Certificate: &wire.CertStatus{Name: "*.example.test", State: wire.CertFailed}}, nil
			}
		}, "certificate at 127.0.0.1:", "the server's ACME order for *.example.test failed", "run beam server check on the server"},
		{"no ACME", failedOrder(t, nil), "certificate at 127.0.0.1:", "the server gets none by ACME", "--https-addr"},
		{"status unavailable", func(c *serverCheck) {
			c.HTTPSPort = tlsPort(t, nil)
			c.Setup = func(context.Context) (*wire.ServerSetup, error) { return nil, errors.New("coordinator unreachable") }
		}, "certificate at 127.0.0.1:", "did not say how its ACME order stands: coordinator unreachable", "ACME order"},
		{"untrusted certificate", func(c *serverCheck) { c.Roots = x509.NewCertPool() }, "certificate at 127.0.0.1:", "does not verify", "--acme-staging"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.breakIt(c)
			rs := c.run(t.Context())
			var failed []checkResult
			for _, r := range rs {
				if !r.OK {
					failed = append(failed, r)
				}
			}
			if tc.what == "" {
				if len(failed) != 0 || len(rs) != 6 {
					t.Fatalf("%d results, failed %v; want 6, none failed", len(rs), failed)
				}
				return
			}
			if len(failed) != 1 {
				t.Fatalf("failed %v, want only %q", failed, tc.what)
			}
			r := failed[0]
			if !strings.HasPrefix(r.What, tc.what) || !strings.Contains(r.Said, tc.said) || !strings.Contains(r.Fix, tc.fix) {
				t.Errorf("got %q, want %q saying %q, fix naming %q", r, tc.what, tc.said, tc.fix)
			}
		})
	}
}

// failedOrder breaks a check by an edge without a certificate whose
// server reports cs (nil: no ACME) as its certificate's status.
func failedOrder(t *testing.T, cs *wire.CertStatus) func(c *serverCheck) {
	if cs != nil {
		cs.Name, cs.CA, cs.Orders, cs.Changed = "*.example.test", "https://ca.test/dir", 2, time.Now().Add(-time.Minute)
	}
	return func(c *serverCheck) {
		c.HTTPSPort = tlsPort(t, nil)
		c.Setup = func(context.Context) (*wire.ServerSetup, error) {
			return &wire.ServerSetup{Domain: "example.test", Certificate: cs}, nil
		}
	}
}

func atoi(t *testing.T, s string) int {
	n := portOf("x:" + s)
	if n == 0 {
		t.Fatalf("bad port %q", s)
	}
	return n
}
