package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// PingOptions are the flags of beam ping.
type PingOptions struct {
	Host        string
	Count       int
	UntilDirect bool
	Timeout     time.Duration
}

// NewCmdPing returns the beam ping command.
func NewCmdPing(f *Factory, in *instanceFlags) *cobra.Command {
	o := &PingOptions{}
	cmd := &cobra.Command{
		Use:   "ping NAME",
		Short: "Ping a peer over the mesh with disco pings and show the path each pong took",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Host = args[0]
			return runPing(cmd.Context(), f, in, o)
		},
	}
	cmd.Flags().IntVarP(&o.Count, "count", "c", 10, "number of pings (with --until-direct: the most to send)")
	cmd.Flags().BoolVar(&o.UntilDirect, "until-direct", false, "stop at the first pong over a direct path; exit non-zero if none")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 5*time.Second, "how long to wait for each pong")
	return cmd
}

func runPing(ctx context.Context, f *Factory, in *instanceFlags, o *PingOptions) error {
	lc := in.client(f)
	answered := 0
	for i := 0; i < o.Count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
		pctx, cancel := context.WithTimeout(ctx, o.Timeout)
		r, err := lc.PingPeer(pctx, o.Host)
		cancel()
		if err != nil {
			fmt.Fprintf(f.Out, "no pong from %s: %s\n", o.Host, ErrorMessage(err))
			continue
		}
		answered++
		via := r.Relay
		switch r.Path {
		case "direct":
			via = r.Endpoint
		case "peer-relay":
			via = "peer-relay " + r.Via
		}
		fmt.Fprintf(f.Out, "pong from %s (%s) via %s in %s\n", r.Name, r.IP, via, r.Latency.Round(100*time.Microsecond))
		if o.UntilDirect && r.Path == "direct" {
			return nil
		}
	}
	if o.UntilDirect {
		return &exitError{code: 1, err: fmt.Errorf("no direct path to %s after %d pings", o.Host, o.Count)}
	}
	if answered == 0 {
		return &exitError{code: 1, err: errors.New("no pongs")}
	}
	return nil
}

// NewCmdNetcheck returns the beam netcheck command.
func NewCmdNetcheck(f *Factory, in *instanceFlags) *cobra.Command {
	var asJSON, server bool
	so := &netcheckServerOptions{}
	cmd := &cobra.Command{
		Use:   "netcheck",
		Short: "Report UDP reachability, public address, NAT kind and relay latencies; with --server, check the public server's setup",
		Long: `Report UDP reachability, public address, NAT kind and relay latencies.

With --server, check from this device the public server it joined, as beam
server check does on the server: whether the domain's delegation points at
the server's zone (through this device's resolver), whether the server's
ports answer from here, and whether its certificate was issued. Each failure
says what to fix; the exit status is 1 if any check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server {
				if asJSON {
					return errors.New("--json and --server: pick one")
				}
				return runNetcheckServer(cmd.Context(), f, in, so)
			}
			r, err := in.client(f).Netcheck(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(f.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			fmt.Fprintf(f.Out, "Report:\n\t* UDP: %v\n", r.UDP)
			if len(r.LocalAddrs) > 0 {
				fmt.Fprintf(f.Out, "\t* Local addresses: %s\n", strings.Join(r.LocalAddrs, " "))
			}
			// What STUN tells: only when some STUN server answered.
			if len(r.RegionLatency) > 0 {
				if r.GlobalV4 != "" {
					fmt.Fprintf(f.Out, "\t* IPv4: %s\n", r.GlobalV4)
				} else {
					fmt.Fprintf(f.Out, "\t* IPv4: (no public address seen)\n")
				}
				if r.GlobalV6 != "" {
					fmt.Fprintf(f.Out, "\t* IPv6: %s\n", r.GlobalV6)
				} else {
					fmt.Fprintf(f.Out, "\t* IPv6: no\n")
				}
				switch {
				case r.MappingVariesByDestIP == nil:
					fmt.Fprintf(f.Out, "\t* MappingVariesByDestIP: unknown\n")
				default:
					fmt.Fprintf(f.Out, "\t* MappingVariesByDestIP: %v\n", *r.MappingVariesByDestIP)
				}
			}
			if r.PreferredRelay != "" {
				fmt.Fprintf(f.Out, "\t* Nearest relay: %s\n", r.PreferredRelay)
			}
			if len(r.RegionLatency) > 0 {
				fmt.Fprintf(f.Out, "\t* Relay latency:\n")
				for _, name := range slices.Sorted(maps.Keys(r.RegionLatency)) {
					fmt.Fprintf(f.Out, "\t\t- %s: %s\n", name, r.RegionLatency[name].Round(100*time.Microsecond))
				}
			}
			fmt.Fprintf(f.Out, "\t* PortMapping: %s\n", portMappingLine(r.PortMapping))
			for _, m := range r.Missing {
				fmt.Fprintf(f.Out, "\t* Missing: %s\n", m)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	fl.BoolVar(&server, "server", false, "check the public server this device joined: delegation, ports, certificate")
	fl.StringVar(&so.Resolver, "resolver", "", "with --server: recursive resolver HOST:PORT to look the delegation up through (default: the system's)")
	fl.StringVar(&so.CertRoot, "cert-root", "", "with --server: PEM root the edge's certificate must chain to (default: the system's roots)")
	fl.DurationVar(&so.Timeout, "timeout", 5*time.Second, "with --server: how long each probe waits")
	return cmd
}
