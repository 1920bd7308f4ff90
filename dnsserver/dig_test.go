package dnsserver

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// dig runs the real dig (Debian's dnsutils) against addr and returns its output.
// A missing dig fails the test: CI installs it.
func dig(t *testing.T, addr string, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("dig")
	if err != nil {
		t.Fatalf("dig not found: install Debian's dnsutils (bind9-dnsutils): %v", err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	full := append([]string{"@" + host, "-p", port, "+time=1", "+tries=1"}, args...)
	out, err := exec.CommandContext(ctx, path, full...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestDigResolver(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.1", 60))
	rec := testRecords(up.addr)
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom4([4]byte{100, 64, 2, byte(i)}))
	}
	rec.Hosts["many.default.beam.internal"] = many
	_, addr := newTestResolver(t, ResolverOptions{}, rec)

	tests := []struct {
		name string
		args []string
		want string // exact output for +short, substring otherwise
		sub  bool
	}{
		{name: "fqdn", args: []string{"+short", "beta.default.beam.internal", "A"}, want: "100.64.0.2"},
		{name: "short name", args: []string{"+short", "beta", "A"}, want: "100.64.0.2"},
		{name: "short name AAAA", args: []string{"+short", "alpha", "AAAA"}, want: "fd7a:115c:a1e0::1"},
		{name: "case", args: []string{"+short", "ALPHA.default.BEAM.internal", "A"}, want: "100.64.0.1"},
		{name: "tcp", args: []string{"+tcp", "+short", "beta", "A"}, want: "100.64.0.2"},
		{name: "ptr v4", args: []string{"+short", "-x", "100.64.0.2"}, want: "beta.default.beam.internal."},
		{name: "ptr v6", args: []string{"+short", "-x", "fd7a:115c:a1e0::1"}, want: "alpha.default.beam.internal."},
		{name: "txt", args: []string{"+short", "info.default.beam.internal", "TXT"}, want: `"hello world"`},
		{name: "forwarded", args: []string{"+short", "www.example.com", "A"}, want: "192.0.2.1"},
		{name: "nxdomain", args: []string{"+noall", "+comments", "nope.default.beam.internal"}, want: "status: NXDOMAIN", sub: true},
		{name: "nxdomain soa", args: []string{"+noall", "+authority", "nope.default.beam.internal"}, want: "default.beam.internal.\t10\tIN\tSOA", sub: true},
		{name: "truncated", args: []string{"+ignore", "+bufsize=512", "+noall", "+comments", "many.default.beam.internal"}, want: " tc", sub: true},
		{name: "tcp fallback", args: []string{"+short", "many.default.beam.internal"}, want: "100.64.2.99", sub: true},
		{name: "any", args: []string{"+short", "beta.default.beam.internal", "ANY"}, want: `"RFC8482" ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := dig(t, addr, tt.args...)
			if tt.sub && !strings.Contains(got, tt.want) || !tt.sub && got != tt.want {
				t.Errorf("dig %s:\n%s\nwant %q", strings.Join(tt.args, " "), got, tt.want)
			}
		})
	}
	if n := len(up.seen()); n != 1 {
		t.Errorf("upstream saw %q, want only www.example.com.", up.seen())
	}
}

func TestDigZone(t *testing.T) {
	z, addr := newTestZone(t)
	if err := z.SetTXT("_acme-challenge.app.example.test", []string{"tok"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
		sub  bool
	}{
		{args: []string{"+short", "app.example.test"}, want: "192.0.2.10"},
		{args: []string{"+short", "example.test", "AAAA"}, want: "2001:db8::10"},
		{args: []string{"+short", "_acme-challenge.app.example.test", "TXT"}, want: `"tok"`},
		{args: []string{"+short", "example.test", "NS"}, want: "ns1.example.test.\nns.other.example."},
		{args: []string{"+norecurse", "+noall", "+comments", "app.example.test"}, want: "flags: qr aa;", sub: true},
		{args: []string{"+noall", "+comments", "a.b.example.test"}, want: "status: NXDOMAIN", sub: true},
		{args: []string{"+noall", "+comments", "www.example.com"}, want: "status: REFUSED", sub: true},
	}
	for _, tt := range tests {
		got := dig(t, addr, tt.args...)
		if tt.sub && !strings.Contains(got, tt.want) || !tt.sub && got != tt.want {
			t.Errorf("dig %s:\n%s\nwant %q", strings.Join(tt.args, " "), got, tt.want)
		}
	}
}
