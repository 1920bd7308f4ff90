package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// testZone is a tiny authoritative zone for the ACME test: TXT records set
// through TXTSetter, and every name's A record is 127.0.0.1 (so the CA's
// TLS-ALPN-01 validation reaches the edge on loopback).
type testZone struct {
	mu  sync.Mutex
	txt map[string][]string
	log []string // "set name" / "delete name", in order
}

func (z *testZone) SetTXT(name string, values []string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.txt[name] = values
	z.log = append(z.log, "set "+name)
}

func (z *testZone) DeleteTXT(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.txt, name)
	z.log = append(z.log, "delete "+name)
}

func (z *testZone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) == 1 {
		q := req.Question[0]
		name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Rrtype: q.Qtype, Ttl: 0}
		switch q.Qtype {
		case dns.TypeTXT:
			z.mu.Lock()
			for _, v := range z.txt[name] {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
			}
			z.mu.Unlock()
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
		}
	}
	w.WriteMsg(m)
}

// startZone serves z over TCP (which Pebble's validation uses) and UDP on
// one loopback port and returns its address.
func startZone(t *testing.T, z *testZone) string {
	var ln net.Listener
	var pc net.PacketConn
	for ln == nil {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if pc, err = net.ListenPacket("udp", l.Addr().String()); err != nil {
			l.Close() // UDP port taken; try another
			continue
		}
		ln = l
	}
	for _, srv := range []*dns.Server{{Listener: ln, Handler: z}, {PacketConn: pc, Handler: z}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() {
			srv.Shutdown()
			<-done
		})
	}
	return ln.Addr().String()
}

// startPebble runs the Pebble ACME server in-process. Its validation
// authority resolves names through dnsAddr and connects to tlsPort for
// TLS-ALPN-01. It returns the directory URL, a pool trusting the
// directory's HTTPS, and a pool with Pebble's issuing root.
func startPebble(t *testing.T, dnsAddr string, tlsPort int) (string, *x509.CertPool, *x509.CertPool) {
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() {
		logger = log.New(testWriter{t}, "pebble ", 0)
	}
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	validator := va.New(logger, 0, tlsPort, false, dnsAddr, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	srv := httptest.NewTLSServer(front.Handler())
	t.Cleanup(srv.Close)
	api := x509.NewCertPool()
	api.AddCert(srv.Certificate())
	roots := x509.NewCertPool()
	roots.AddCert(authority.GetRootCert(0).Cert)
	return srv.URL + wfe.DirectoryPath, api, roots
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestACMECertificates(t *testing.T) {
	zone := &testZone{txt: map[string][]string{}}
	dnsAddr := startZone(t, zone)

	// The edge's TLS listener must exist before the CA validates on it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsPort := ln.Addr().(*net.TCPAddr).Port
	dir, apiRoots, issuedRoots := startPebble(t, dnsAddr, tlsPort)

	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a, _ := origin(t, ov, nameHandler("alpha"))
	shop, _ := origin(t, ov, nameHandler("shop"))
	setRoutes(t, e, httpRoute("alpha", a),
		Route{Host: "shop.customer.test", CustomDomain: true, Proto: ProtoHTTP, Targets: []netip.AddrPort{shop}})

	cm, err := NewCertManager(CertOptions{
		Domain:        testDomain,
		TXT:           zone,
		DirectoryURL:  dir,
		TrustedRoots:  apiRoots,
		StorageDir:    t.TempDir(),
		OnDemand:      e.HasHTTPRoute,
		TLSListenAddr: ln.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if st := cm.Status(); st.State != CertPending || st.Name != "*.example.test" || st.CA != dir {
		t.Errorf("status before ManageWildcard = %+v, want pending *.example.test from %s", st, dir)
	}
	if err := cm.ManageWildcard(ctx); err != nil {
		t.Fatalf("ManageWildcard: %v", err)
	}
	if st := cm.Status(); st.State != CertIssued || st.Orders != 1 || st.Error != "" {
		t.Errorf("status after ManageWildcard = %+v, want issued after 1 order, no error", st)
	}
	zone.mu.Lock()
	zlog, left := slices.Clone(zone.log), len(zone.txt)
	zone.mu.Unlock()
	if !slices.Contains(zlog, "set _acme-challenge.example.test") || left != 0 {
		t.Errorf("zone log %q with %d names left, want the challenge set then cleaned up", zlog, left)
	}

	if _, err := cm.GetCertificate(&tls.ClientHelloInfo{ServerName: "alpha.example.test"}); err != nil {
		t.Errorf("GetCertificate(alpha.example.test): %v", err)
	}
	srvCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.ServeTLSListener(srvCtx, ln, cm.GetCertificate) }()
	defer func() {
		stop()
		<-done
	}()

	client := func(sni string) *http.Client {
		return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, ln.Addr().String())
			},
			TLSClientConfig: &tls.Config{RootCAs: issuedRoots, ServerName: sni},
		}}
	}
	tests := []struct {
		host     string
		wantName string // DNS name the certificate must carry; "" = handshake must fail
	}{
		{"alpha.example.test", "*.example.test"},
		{"shop.customer.test", "shop.customer.test"},
		{"evil.customer.test", ""},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			resp, err := client(tt.host).Get("https://" + tt.host + "/")
			if tt.wantName == "" {
				if err == nil {
					resp.Body.Close()
					t.Fatal("handshake for an unregistered name succeeded")
				}
				return
			}
			if err != nil {
				t.Fatalf("GET with the CA's root trusted: %v", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if leaf := resp.TLS.PeerCertificates[0]; !slices.Contains(leaf.DNSNames, tt.wantName) {
				t.Errorf("certificate names %q, want %q", leaf.DNSNames, tt.wantName)
			}
			if want := strings.Split(tt.host, ".")[0] + " GET /"; string(body) != want {
				t.Errorf("body %q, want %q", body, want)
			}
		})
	}
}

// lostTXT is a zone whose records never reach the CA: a delegation the
// CA cannot follow.
type lostTXT struct{}

func (lostTXT) SetTXT(string, []string) {}
func (lostTXT) DeleteTXT(string)        {}

// TestACMEOrderFails checks that a failed order of the wildcard shows in
// Status and OnStatus with the CA's problem, while ManageWildcard keeps
// retrying.
func TestACMEOrderFails(t *testing.T) {
	zone := &testZone{txt: map[string][]string{}}
	dir, apiRoots, _ := startPebble(t, startZone(t, zone), 1)
	changes := make(chan CertStatus, 16)
	cm, err := NewCertManager(CertOptions{Domain: testDomain, TXT: lostTXT{}, DirectoryURL: dir, TrustedRoots: apiRoots, StorageDir: t.TempDir(),
		OnStatus: func(st CertStatus) {
			select {
			case changes <- st:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- cm.ManageWildcard(ctx) }()
	defer func() { cancel(); <-done }()

	var seen []CertState
	deadline := time.After(60 * time.Second)
	for len(seen) == 0 || seen[len(seen)-1] == CertPending {
		select {
		case st := <-changes:
			seen = append(seen, st.State)
		case err := <-done:
			t.Fatalf("ManageWildcard returned %v before the order failed", err)
		case <-deadline:
			t.Fatalf("status changes %v, then nothing for 60 s", seen)
		}
	}
	if want := []CertState{CertPending, CertFailed}; !slices.Equal(seen, want) {
		t.Errorf("status changes %v, want %v (the order starts, then fails)", seen, want)
	}
	st := cm.Status()
	if st.State != CertFailed || st.Orders != 1 || st.Problem != "unauthorized" || st.Error == "" {
		t.Errorf("status = %+v, want failed after 1 order with the CA's unauthorized problem", st)
	}
}
