package node_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
)

func ptr[T any](v T) *T { return &v }

// freeLoopback returns a loopback address with a free TCP and UDP port.
func freeLoopback(t *testing.T) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return addr
	}
	t.Fatal("no free TCP+UDP port on loopback")
	return ""
}

// TestPrefsLive: settings apply at once (listeners open, move and close),
// a refused setting changes nothing, and a new Node on the same state
// directory serves the settings the last one saved.
func TestPrefsLive(t *testing.T) {
	dir := t.TempDir()
	n, err := node.New(node.Options{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Close() }()
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	dnsAddr, socksAddr := freeLoopback(t), freeLoopback(t)
	if _, err := n.SetPrefs(ctx, apitype.PrefsPatch{DNSListen: &dnsAddr, SOCKS5: &socksAddr, DNSUpstreams: ptr([]string{"192.0.2.53"})}); err != nil {
		t.Fatal(err)
	}
	queryOK := func(addr string) error {
		m := new(dns.Msg)
		m.SetQuestion("no-such-name.invalid.", dns.TypeA)
		c := &dns.Client{Timeout: 5 * time.Second}
		_, _, err := c.ExchangeContext(ctx, m, addr)
		return err
	}
	// MagicDNS answers on the new address at once (for a name it cannot
	// resolve, with an error code; what matters is that it answers).
	if err := queryOK(dnsAddr); err != nil {
		t.Fatalf("DNS on %s after SetPrefs: %v", dnsAddr, err)
	}
	if c, err := net.Dial("tcp", socksAddr); err != nil {
		t.Fatalf("SOCKS5 on %s after SetPrefs: %v", socksAddr, err)
	} else {
		c.Close()
	}
	if got := n.DNSStatus().Upstreams; len(got) != 1 || got[0] != "192.0.2.53:53" {
		t.Errorf("upstreams after SetPrefs: got %v, want [192.0.2.53:53]", got)
	}

	// Refused settings change nothing.
	for name, p := range map[string]apitype.PrefsPatch{
		"not loopback":   {SOCKS5: ptr("192.0.2.1:1080"), DNSListen: ptr("")},
		"bad upstream":   {DNSUpstreams: ptr([]string{"not-an-ip"}), DNSListen: ptr("")},
		"address in use": {HTTPProxy: &dnsAddr, DNSListen: ptr("")},
	} {
		_, err := n.SetPrefs(ctx, p)
		if err == nil {
			t.Errorf("%s: SetPrefs succeeded, want an error", name)
		}
		if got := n.Prefs(); got.DNSListen != dnsAddr || got.SOCKS5 != socksAddr || got.HTTPProxy != "" {
			t.Errorf("%s: prefs after a refused change: %+v", name, got)
		}
	}
	if _, err := n.SetPrefs(ctx, apitype.PrefsPatch{SOCKS5: ptr("192.0.2.1:1080")}); !errors.Is(err, node.ErrBadPrefs) {
		t.Errorf("non-loopback SOCKS5: got %v, want ErrBadPrefs", err)
	}

	// Stopping the SOCKS5 proxy closes its port at once.
	if _, err := n.SetPrefs(ctx, apitype.PrefsPatch{SOCKS5: ptr("")}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", socksAddr); err == nil {
		c.Close()
		t.Errorf("SOCKS5 still accepts on %s after it was turned off", socksAddr)
	}

	// A restarted daemon keeps the settings.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n2, err := node.New(node.Options{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	n = n2
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	want := apitype.Prefs{DNSListen: dnsAddr, DNSUpstreams: []string{"192.0.2.53"}}
	if got := n.Prefs(); got.DNSListen != want.DNSListen || got.SOCKS5 != "" || len(got.DNSUpstreams) != 1 || got.DNSUpstreams[0] != "192.0.2.53" {
		t.Errorf("prefs after restart: got %+v, want %+v", got, want)
	}
	if err := queryOK(dnsAddr); err != nil {
		t.Fatalf("DNS on %s after restart: %v", dnsAddr, err)
	}
}
