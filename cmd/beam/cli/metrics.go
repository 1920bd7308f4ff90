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
// belong to metrics whose names start with one of prefixes. A prefix no
// metric has is an error, so a mistyped name is not an empty answer.
func writeMetricsWithPrefix(f *Factory, b []byte, prefixes []string) error {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	matched := make([]bool, len(prefixes))
	for sc.Scan() {
		line := sc.Text()
		name := line
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			// "# HELP name ..." and "# TYPE name ...".
			if _, after, ok := strings.Cut(rest, " "); ok {
				name = after
			}
		}
		printed := false
		for i, p := range prefixes {
			if !strings.HasPrefix(name, p) {
				continue
			}
			matched[i] = true
			if !printed {
				if _, err := fmt.Fprintln(f.Out, line); err != nil {
					return err
				}
				printed = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	for i, p := range prefixes {
		if !matched[i] {
			return fmt.Errorf("no metric name starts with %q (the daemon's names start with beam_daemon_, beam_build_, beam_go_ or beam_process_)", p)
		}
	}
	return nil
}
