package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestWriteMetricsWithPrefix(t *testing.T) {
	text := []byte(`# HELP beam_daemon_peers Peers in the netmap.
# TYPE beam_daemon_peers gauge
beam_daemon_peers 2
# HELP beam_daemon_peer_rx_bytes_total Bytes received.
# TYPE beam_daemon_peer_rx_bytes_total counter
beam_daemon_peer_rx_bytes_total{path="direct",peer="beta"} 100
beam_build_info{version="x"} 1
`)
	for _, tc := range []struct {
		name     string
		prefixes []string
		want     string // lines printed
		err      string // "" for none
	}{
		{"one", []string{"beam_daemon_peer_rx"}, "# HELP beam_daemon_peer_rx_bytes_total Bytes received.\n# TYPE beam_daemon_peer_rx_bytes_total counter\nbeam_daemon_peer_rx_bytes_total{path=\"direct\",peer=\"beta\"} 100\n", ""},
		{"overlapping prefixes print a line once", []string{"beam_daemon_peers", "beam_daemon_peer"}, "# HELP beam_daemon_peers Peers in the netmap.\n# TYPE beam_daemon_peers gauge\nbeam_daemon_peers 2\n# HELP beam_daemon_peer_rx_bytes_total Bytes received.\n# TYPE beam_daemon_peer_rx_bytes_total counter\nbeam_daemon_peer_rx_bytes_total{path=\"direct\",peer=\"beta\"} 100\n", ""},
		{"a mistyped prefix is an error", []string{"beam_build", "beam_peer"}, "beam_build_info{version=\"x\"} 1\n", `no metric name starts with "beam_peer"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := writeMetricsWithPrefix(&Factory{Out: &out}, text, tc.prefixes)
			if got := out.String(); got != tc.want {
				t.Errorf("printed:\n%s\nwant:\n%s", got, tc.want)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("err = %v, want nil", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("err = %v, want one containing %q", err, tc.err)
			}
		})
	}
}
