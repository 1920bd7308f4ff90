package nslab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseNetem(t *testing.T) {
	tests := []struct {
		spec    string
		want    netemSpec
		wantErr bool
	}{
		{spec: "", want: netemSpec{}},
		{spec: "delay 50ms", want: netemSpec{delay: 50 * time.Millisecond}},
		{spec: "loss 5% delay 50ms", want: netemSpec{delay: 50 * time.Millisecond, loss: 0.05}},
		{spec: "delay 30ms 5ms loss 0.5%", want: netemSpec{delay: 30 * time.Millisecond, jitter: 5 * time.Millisecond, loss: 0.005}},
		{spec: "loss 100%", want: netemSpec{loss: 1}},
		{spec: "delay", wantErr: true},
		{spec: "delay fast", wantErr: true},
		{spec: "delay 10ms 20ms", wantErr: true}, // jitter above delay
		{spec: "loss 5", wantErr: true},          // no percent sign
		{spec: "loss 101%", wantErr: true},
		{spec: "loss -1%", wantErr: true},
		{spec: "loss", wantErr: true},
		{spec: "delay 1ms delay 2ms", wantErr: true},
		{spec: "rate 1mbit", wantErr: true},
		{spec: "duplicate 1%", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := parseNetem(tt.spec)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseNetem(%q) error = %v, want error %v", tt.spec, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("parseNetem(%q) = %+v, want %+v", tt.spec, got, tt.want)
			}
		})
	}
}

func TestParseCounters(t *testing.T) {
	const out = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"counter": {"family": "ip", "name": "udp_out", "table": "nslab", "handle": 3, "packets": 7, "bytes": 700}},
{"counter": {"family": "ip", "name": "udp_in", "table": "nslab", "handle": 4, "packets": 6, "bytes": 600}},
{"counter": {"family": "ip", "name": "tcp_out", "table": "nslab", "handle": 5, "packets": 5, "bytes": 500}},
{"counter": {"family": "ip", "name": "tcp_in", "table": "nslab", "handle": 6, "packets": 4, "bytes": 400}},
{"counter": {"family": "ip", "name": "dropped_in", "table": "nslab", "handle": 7, "packets": 3, "bytes": 300}}]}`
	got, err := parseCounters([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := Counters{UDPOut: 7, UDPIn: 6, TCPOut: 5, TCPIn: 4, DroppedIn: 3}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseCounters mismatch (-want +got):\n%s", diff)
	}
	for _, bad := range []string{"", "{}", `{"nftables": []}`, `{"nftables": [{"counter": {"name": "udp_out", "packets": 1}}]}`} {
		if _, err := parseCounters([]byte(bad)); err == nil {
			t.Errorf("parseCounters(%q) succeeded, want an error", bad)
		}
	}
}

func TestOwnerPID(t *testing.T) {
	tests := []struct {
		ns   string
		pid  int
		want bool
	}{
		{"nsl-a1b2c3-1234-inet", 1234, true},
		{"nsl-a1b2c3-1234-h-alice", 1234, true},
		{"nsl-a1b2c3-1234", 0, false},
		{"nsl-zzzzzz-1234-inet", 0, false},
		{"nsl-a1b2-1234-inet", 0, false},
		{"nsl-a1b2c3-x-inet", 0, false},
		{"nsl-a1b2c3-0-inet", 0, false},
		{"other-a1b2c3-1234-inet", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		pid, ok := ownerPID(tt.ns)
		if pid != tt.pid || ok != tt.want {
			t.Errorf("ownerPID(%q) = %d, %v; want %d, %v", tt.ns, pid, ok, tt.pid, tt.want)
		}
	}
	got := parseNetnsList([]byte("nsl-a1b2c3-1-inet (id: 3)\nplain\n\n"))
	if diff := cmp.Diff([]string{"nsl-a1b2c3-1-inet", "plain"}, got); diff != "" {
		t.Errorf("parseNetnsList mismatch (-want +got):\n%s", diff)
	}
}

func TestAddressPlan6(t *testing.T) {
	tests := []struct {
		lan        string // the LAN's IPv4 /29
		v4         string // an address in it
		wantPrefix string
		wantAddr   string
	}{
		{"198.51.100.0/29", "198.51.100.1", "2001:db8:1::/64", "2001:db8:1::1"},
		{"198.51.100.0/29", "198.51.100.2", "2001:db8:1::/64", "2001:db8:1::2"},
		{"198.51.100.8/29", "198.51.100.14", "2001:db8:2::/64", "2001:db8:2::6"},
		{"198.51.100.248/29", "198.51.100.250", "2001:db8:20::/64", "2001:db8:20::2"},
		{"192.0.2.0/29", "192.0.2.3", "2001:db8:21::/64", "2001:db8:21::3"},
		{"192.0.2.248/29", "192.0.2.249", "2001:db8:40::/64", "2001:db8:40::1"},
	}
	for _, tt := range tests {
		lan := netip.MustParsePrefix(tt.lan)
		p6 := lanPrefix6(lan)
		if p6.String() != tt.wantPrefix {
			t.Errorf("lanPrefix6(%v) = %v, want %v", lan, p6, tt.wantPrefix)
		}
		if got := lanAddr6(p6, lan, netip.MustParseAddr(tt.v4)); got.String() != tt.wantAddr {
			t.Errorf("lanAddr6(%v, %v, %v) = %v, want %v", p6, lan, tt.v4, got, tt.wantAddr)
		}
	}
	if got := publicAddr6(netip.MustParseAddr("203.0.113.12")); got.String() != "2001:db8::12" {
		t.Errorf("publicAddr6(203.0.113.12) = %v, want 2001:db8::12", got)
	}
	if got := publicAddr6(netip.MustParseAddr("203.0.113.254")); got.String() != "2001:db8::254" {
		t.Errorf("publicAddr6(203.0.113.254) = %v, want 2001:db8::254", got)
	}
}

// TestRemoveEndedBuilds: the build directory of a test process that ended
// is removed; those of running processes (this one, PID 1) stay.
func TestRemoveEndedBuilds(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	ended := cmd.ProcessState.Pid()
	mk := func(pid int) string {
		d, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", buildDirPrefix, pid))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		if err := os.WriteFile(filepath.Join(d, "beam"), []byte("binary"), 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	gone, mine, initd := mk(ended), mk(os.Getpid()), mk(1)
	removeEndedBuilds()
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Errorf("build directory of ended process %d: %v, want removed", ended, err)
	}
	for _, d := range []string{mine, initd} {
		if _, err := os.Stat(filepath.Join(d, "beam")); err != nil {
			t.Errorf("build directory of a running process: %v, want kept", err)
		}
	}
}
