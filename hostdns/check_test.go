package hostdns

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckDomain(t *testing.T) {
	tests := []struct {
		name string
		d    string
		ok   bool
	}{
		{"domain", "net.beam.internal", true},
		{"trailing dot", "corp.example.com.", true},
		{"one label", "corp", true},
		{"underscore and upper case", "_sip.Corp-1.example", true},
		{"empty", "", false},
		{"root", ".", false},
		{"newline", "net.beam.internal\nnameserver 203.0.113.66", false},
		{"space", "a.example b.example", false},
		{"tab", "a.example\tb", false},
		{"NUL", "a\x00.example", false},
		{"leading hyphen", "-v.example", false},
		{"option-like label", "--interface=eth0", false},
		{"trailing hyphen", "a-.example", false},
		{"empty label", "a..example", false},
		{"routing prefix", "~example.com", false},
		{"label of 64", strings.Repeat("a", 64) + ".example", false},
		{"name of 253", strings.Repeat("a.", 126) + "a", true},
		{"name of 255", strings.Repeat("a.", 127) + "a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckDomain(tt.d)
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrBadDomain)) {
				t.Errorf("CheckDomain(%q) = %v, want ok %v", tt.d, err, tt.ok)
			}
		})
	}
}

// TestSetRefusesBadDomains: a search domain with a newline would have
// added lines (another nameserver, options) to the managed resolver
// file, and a match domain reaches resolvectl's command line; Set refuses
// both and leaves the file as it was.
func TestSetRefusesBadDomains(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	orig := "nameserver 192.0.2.1\n"
	if err := os.WriteFile(conf, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{StateDir: dir, Mode: ModeFile, ResolvConf: conf})
	if err != nil {
		t.Fatal(err)
	}
	ns := []netip.Addr{netip.MustParseAddr("100.100.100.100")}
	for _, cfg := range []Config{
		{Nameservers: ns, SearchDomains: []string{"net.beam.internal\nnameserver 203.0.113.66\noptions ndots:15 rotate"}},
		{Nameservers: ns, SearchDomains: []string{"net.beam.internal"}, MatchDomains: []string{"--set-dns=203.0.113.66"}},
	} {
		if err := m.Set(cfg); !errors.Is(err, ErrBadDomain) {
			t.Errorf("Set(%q) = %v, want ErrBadDomain", cfg.SearchDomains, err)
		}
		if got, _ := os.ReadFile(conf); string(got) != orig {
			t.Errorf("resolver file after a refused Set:\n%s\nwant it unchanged", got)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, recordName)); !os.IsNotExist(err) {
		t.Errorf("record written for a refused Set: %v", err)
	}
}
