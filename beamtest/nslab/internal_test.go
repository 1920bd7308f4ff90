package nslab

import (
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
