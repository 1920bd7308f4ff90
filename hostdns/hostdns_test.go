package hostdns

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileSetCloseRestores(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	orig := "nameserver 198.51.100.53\nsearch example.org\noptions ndots:1\n"
	if err := os.WriteFile(conf, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	m, err := New(Options{StateDir: state, Mode: ModeFile, ResolvConf: conf})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Nameservers: []netip.Addr{netip.MustParseAddr("100.100.100.100")}, SearchDomains: []string{"net.beam.internal"}, MatchDomains: []string{"net.beam.internal"}}
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(conf)
	for _, want := range []string{"nameserver 100.100.100.100\n", "search net.beam.internal example.org\n", "options ndots:1\n"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("managed file lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(string(got), "198.51.100.53") {
		t.Errorf("managed file still names the original nameserver:\n%s", got)
	}
	if b, err := OriginalResolvConf(state, conf); err != nil || string(b) != orig {
		t.Errorf("OriginalResolvConf = %q, %v; want the original", b, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(conf); string(got) != orig {
		t.Errorf("after Close: %q, want %q", got, orig)
	}
	if _, err := os.Stat(filepath.Join(state, recordName)); !os.IsNotExist(err) {
		t.Errorf("record left after Close: %v", err)
	}
}

// TestRecoverAfterCrash: a manager that never closed (its process died)
// leaves a record; Recover restores the original from it, once, and
// leaves alone a file someone else has changed since.
func TestRecoverAfterCrash(t *testing.T) {
	cfg := Config{Nameservers: []netip.Addr{netip.MustParseAddr("100.100.100.100")}, SearchDomains: []string{"n.beam.internal"}}
	orig := "nameserver 198.51.100.53\n"
	tests := []struct {
		name    string
		symlink bool
		edit    string // written over the managed file before Recover; "" none
		want    string
	}{
		{"restores the original", false, "", orig},
		{"restores a symlink", true, "", orig},
		{"keeps someone else's file", false, "nameserver 203.0.113.9\n", "nameserver 203.0.113.9\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			conf := filepath.Join(dir, "resolv.conf")
			target := filepath.Join(dir, "real-resolv.conf")
			if err := os.WriteFile(target, []byte(orig), 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.symlink {
				if err := os.Symlink(target, conf); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Rename(target, conf); err != nil {
				t.Fatal(err)
			}
			m, err := New(Options{StateDir: dir, Mode: ModeFile, ResolvConf: conf})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Set(cfg); err != nil {
				t.Fatal(err)
			}
			if tt.symlink {
				if fi, err := os.Lstat(conf); err != nil || fi.Mode()&os.ModeSymlink != 0 {
					t.Fatalf("managed file is still a symlink (%v): Beam would write through it", err)
				}
				if b, _ := os.ReadFile(target); string(b) != orig {
					t.Fatalf("symlink target changed: %q", b)
				}
			}
			if tt.edit != "" {
				if err := os.WriteFile(conf, []byte(tt.edit), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// m is dropped without Close: the process "crashed".
			if err := Recover(dir, nil); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(conf); string(got) != tt.want {
				t.Errorf("after Recover: %q, want %q", got, tt.want)
			}
			if tt.symlink {
				if got, err := os.Readlink(conf); err != nil || got != target {
					t.Errorf("after Recover: symlink to %q (%v), want %q", got, err, target)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, recordName)); !os.IsNotExist(err) {
				t.Errorf("record left after Recover: %v", err)
			}
			if err := Recover(dir, nil); err != nil {
				t.Errorf("second Recover: %v", err)
			}
		})
	}
}

func TestResolvedCommands(t *testing.T) {
	got := resolvedCommands("beam0", Config{
		Nameservers:   []netip.Addr{netip.MustParseAddr("100.100.100.100")},
		SearchDomains: []string{"n.beam.internal"},
		MatchDomains:  []string{"n.beam.internal", "corp.example.com."},
	})
	want := [][]string{
		{"dns", "beam0", "100.100.100.100"},
		{"domain", "beam0", "n.beam.internal", "~corp.example.com"},
		{"default-route", "beam0", "false"},
	}
	if len(got) != len(want) {
		t.Fatalf("resolvedCommands = %q, want %q", got, want)
	}
	for i := range want {
		if strings.Join(got[i], " ") != strings.Join(want[i], " ") {
			t.Errorf("command %d = %q, want %q", i, got[i], want[i])
		}
	}
}

func TestNameservers(t *testing.T) {
	conf := "# comment\nnameserver 198.51.100.53\nnameserver  2001:db8::53\nnameserver bogus\nsearch x\n"
	got := Nameservers([]byte(conf))
	want := []netip.Addr{netip.MustParseAddr("198.51.100.53"), netip.MustParseAddr("2001:db8::53")}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Nameservers = %v, want %v", got, want)
	}
}

// TestResolvedMode drives ModeResolved against a stand-in resolvectl that
// logs its arguments: Set configures the link, an unchanged Set does
// nothing, Close reverts it, and a crashed run's record makes Recover
// revert the link too.
func TestResolvedMode(t *testing.T) {
	bin := t.TempDir()
	logFile := filepath.Join(bin, "calls")
	script := "#!/bin/sh\necho \"$@\" >> " + logFile + "\n"
	if err := os.WriteFile(filepath.Join(bin, "resolvectl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	calls := func() []string {
		b, _ := os.ReadFile(logFile)
		os.Remove(logFile)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	state := t.TempDir()
	m, err := New(Options{StateDir: state, Mode: ModeResolved, Interface: "beam0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Nameservers: []netip.Addr{netip.MustParseAddr("100.100.100.100")}, SearchDomains: []string{"n.beam.internal"}, MatchDomains: []string{"n.beam.internal"}}
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	want := []string{"dns beam0 100.100.100.100", "domain beam0 n.beam.internal", "default-route beam0 false"}
	if got := calls(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Set ran %q, want %q", got, want)
	}
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if got := calls(); strings.Join(got, "") != "" {
		t.Errorf("an unchanged Set ran %q, want nothing", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := calls(); strings.Join(got, "|") != "revert beam0" {
		t.Errorf("Close ran %q, want revert beam0", got)
	}
	if _, err := os.Stat(filepath.Join(state, recordName)); !os.IsNotExist(err) {
		t.Errorf("record left after Close: %v", err)
	}

	// A run that dies after Set leaves its record; Recover reverts.
	m, err = New(Options{StateDir: state, Mode: ModeResolved, Interface: "beam0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	calls()
	if err := Recover(state, nil); err != nil {
		t.Fatal(err)
	}
	if got := calls(); strings.Join(got, "|") != "revert beam0" {
		t.Errorf("Recover ran %q, want revert beam0", got)
	}
	if _, err := os.Stat(filepath.Join(state, recordName)); !os.IsNotExist(err) {
		t.Errorf("record left after Recover: %v", err)
	}
}
