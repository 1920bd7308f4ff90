package cli

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// NewCmdMetrics returns beam metrics: the daemon's Prometheus metrics,
// read through its local API socket.
func NewCmdMetrics(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "metrics [PREFIX...]",
		Short: "Print the daemon's Prometheus metrics (traffic per peer and path, handshakes, DNS, proxies)",
		Long: `Print the daemon's metrics in Prometheus's text format, read through its
local API socket; with PREFIX arguments, only the metrics whose names
start with one of them (e.g. beam metrics beam_daemon_peer_rx).

A Prometheus server scrapes the same metrics from a daemon started with
--metrics-addr 127.0.0.1:PORT.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := in.client(f).Metrics(cmd.Context())
			if err != nil {
				return err
			}
			if len(args) == 0 {
				_, err = f.Out.Write(b)
				return err
			}
			return writeMetricsWithPrefix(f, b, args)
		},
	}
}

// writeMetricsWithPrefix writes the lines of the text exposition b that
// belong to metrics whose names start with one of prefixes.
func writeMetricsWithPrefix(f *Factory, b []byte, prefixes []string) error {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name := line
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			// "# HELP name ..." and "# TYPE name ...".
			if _, after, ok := strings.Cut(rest, " "); ok {
				name = after
			}
		}
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				if _, err := fmt.Fprintln(f.Out, line); err != nil {
					return err
				}
				break
			}
		}
	}
	return sc.Err()
}
