package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
	"beam.dev/beam/localapi/apitype"
)

// SetOptions are the flags of beam set.
type SetOptions struct {
	Daemon    DaemonOptions
	Hostname  string
	ShieldsUp bool
	Operator  string
	JSON      bool
	// RelayServer is --relay-server: "on", a port, or "off".
	RelayServer string

	// Prefs holds the settings given on the command line.
	Prefs apitype.PrefsPatch
}

// NewCmdSet returns the beam set command: change daemon settings without
// joining again.
func NewCmdSet(f *Factory, in *instanceFlags, runF func(*SetOptions) error) *cobra.Command {
	o := &SetOptions{}
	cmd := &cobra.Command{
		Use:   "set",
		Short: "Change daemon settings at once, without joining again (no flags: show them)",
		Long: `Change the running daemon's settings. They apply at once and are kept in the
state directory, so a restarted daemon keeps them. Only the flags given change;
an empty value ("") stops a listener or resets a setting to its default.
A new --hostname of a registered node renames it at the coordinator when the
name is free. Without flags, beam set prints the settings.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Prefs = prefsFromFlags(cmd.Flags().Changed, &o.Daemon)
			fl := cmd.Flags()
			if fl.Changed("hostname") {
				o.Prefs.Hostname = &o.Hostname
			}
			if fl.Changed("shields-up") {
				o.Prefs.ShieldsUp = &o.ShieldsUp
			}
			if fl.Changed("operator") {
				o.Prefs.Operator = &o.Operator
			}
			if fl.Changed("relay-server") {
				on, port, err := parseRelayServer(o.RelayServer)
				if err != nil {
					return err
				}
				o.Prefs.RelayServer, o.Prefs.RelayServerPort = &on, port
			}
			if err := checkRelayFlags(fl.Changed, &o.Daemon); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runSet(cmd.Context(), f, in, o)
		},
	}
	fl := cmd.Flags()
	fl.Uint16Var(&o.Daemon.Port, "port", 0, "UDP port for WireGuard (0 picks one); the engine restarts on it")
	fl.StringVar(&o.Daemon.SOCKS5, "socks5", "", "serve a SOCKS5 proxy into the mesh on this loopback address (\"\" stops it)")
	fl.StringVar(&o.Daemon.HTTPProxy, "http-proxy", "", "serve an HTTP proxy into the mesh on this loopback address (\"\" stops it)")
	fl.StringVar(&o.Daemon.DNSListen, "dns-listen", "", "serve MagicDNS on this loopback address, UDP and TCP (\"\" stops it)")
	fl.StringSliceVar(&o.Daemon.DNSUpstreams, "dns-upstream", nil, "upstream resolvers for other names (\"\" resets to the default: env BEAM_DNS_UPSTREAM of the daemon, else /etc/resolv.conf)")
	fl.StringVar(&o.Hostname, "hostname", "", "the node's hostname; renames a registered node when the name is free")
	fl.BoolVar(&o.ShieldsUp, "shields-up", false, "refuse all inbound connections from peers")
	fl.StringVar(&o.Operator, "operator", "", "local user who may use the daemon's socket besides its own user and root (\"\" removes it)")
	fl.StringVar(&o.RelayServer, "relay-server", "", relayServerUsage)
	fl.Lookup("relay-server").NoOptDefVal = "on"
	relayLimitFlags(fl, &o.Daemon, "")
	fl.BoolVar(&o.JSON, "json", false, "print the result as JSON")
	return cmd
}

// relayServerUsage is the help of --relay-server.
const relayServerUsage = "run a UDP peer relay server, on PORT when given (--relay-server=PORT; best a public or mapped port), for peers of this node that cannot reach each other directly; --relay-server=off stops it; the engine restarts"

// relayLimitFlags registers the peer relay server's limits on fl; note
// ends each help text.
func relayLimitFlags(fl *pflag.FlagSet, o *DaemonOptions, note string) {
	fl.IntVar(&o.RelayServerMaxSessions, "relay-server-max-sessions", 0, "most sessions the peer relay server holds at once (0: 1024)"+note)
	fl.IntVar(&o.RelayServerMaxSessionsPerPeer, "relay-server-max-sessions-per-peer", 0, "most peer relay sessions one peer takes part in (0: 32)"+note)
	fl.StringVar(&o.RelayServerSessionRate, "relay-server-session-rate", "", "most one peer relay session forwards per second, both ways together, e.g. 100Mbit or 12MiB (0: 128MiB)"+note)
}

// checkRelayFlags checks the --relay-server flags given (on the command
// line or in the config file).
func checkRelayFlags(given func(flag string) bool, o *DaemonOptions) error {
	if given("relay-server") {
		if _, _, err := parseRelayServer(o.RelayServer); err != nil {
			return err
		}
	}
	// Only the limits given: one from the state is checked by the daemon.
	d := configs.Daemon{}
	if given("relay-server-max-sessions") {
		d.RelayServerMaxSessions = o.RelayServerMaxSessions
	}
	if given("relay-server-max-sessions-per-peer") {
		d.RelayServerMaxSessionsPerPeer = o.RelayServerMaxSessionsPerPeer
	}
	if given("relay-server-session-rate") {
		d.RelayServerSessionRate = o.RelayServerSessionRate
	}
	return d.ValidateRelayLimits()
}

// parseRelayServer reads --relay-server: "on" (or "true") keeps the port
// set before (a free port if none), a port number sets it too, "off" (or
// "false") stops the server.
func parseRelayServer(s string) (on bool, port *uint16, err error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on", "true":
		return true, nil, nil
	case "off", "false", "":
		return false, nil, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return false, nil, fmt.Errorf("--relay-server %q: want on, off or a UDP port", s)
	}
	p := uint16(n)
	return true, &p, nil
}

func runSet(ctx context.Context, f *Factory, in *instanceFlags, o *SetOptions) error {
	lc := in.client(f)
	if o.Prefs.IsZero() {
		p, err := lc.Prefs(ctx)
		if err != nil {
			return err
		}
		if o.JSON {
			return writeIndentedJSON(f.Out, p)
		}
		printPrefs(f.Out, p)
		return nil
	}
	resp, err := lc.SetPrefs(ctx, o.Prefs)
	if err != nil {
		return err
	}
	if o.JSON {
		return writeIndentedJSON(f.Out, resp)
	}
	if resp.NameChanged {
		fmt.Fprintf(f.ErrOut, "note: the name for hostname %q is taken; this node stays %q\n", resp.Prefs.Hostname, resp.Name)
	} else if resp.Name != "" {
		fmt.Fprintf(f.ErrOut, "this node is now %q\n", resp.Name)
	}
	printPrefs(f.Out, &resp.Prefs)
	return nil
}

func writeIndentedJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printPrefs prints one setting per line; unset ones show their default.
func printPrefs(w io.Writer, p *apitype.Prefs) {
	or := func(s, def string) string {
		if s == "" {
			return def
		}
		return s
	}
	port := "auto"
	if p.Port != 0 {
		port = fmt.Sprint(p.Port)
	}
	fmt.Fprintf(w, "hostname      %s\n", or(p.Hostname, "(the host's name)"))
	fmt.Fprintf(w, "shields-up    %v\n", p.ShieldsUp)
	fmt.Fprintf(w, "socks5        %s\n", or(p.SOCKS5, "off"))
	fmt.Fprintf(w, "http-proxy    %s\n", or(p.HTTPProxy, "off"))
	fmt.Fprintf(w, "dns-listen    %s\n", or(p.DNSListen, "off"))
	fmt.Fprintf(w, "dns-upstream  %s\n", or(strings.Join(p.DNSUpstreams, ","), "(the host's resolvers)"))
	fmt.Fprintf(w, "port          %s\n", port)
	fmt.Fprintf(w, "operator      %s\n", or(p.Operator, "(none)"))
	relay := "off"
	switch {
	case p.RelayServer && p.RelayServerPort != 0:
		relay = fmt.Sprintf("on, UDP port %d", p.RelayServerPort)
	case p.RelayServer:
		relay = "on, a free UDP port"
	}
	fmt.Fprintf(w, "relay-server  %s\n", relay)
	limits := []string{"max sessions 1024 (default)", "per peer 32 (default)", "session rate 128MiB/s (default)"}
	if v := p.RelayServerMaxSessions; v != 0 {
		limits[0] = fmt.Sprintf("max sessions %d", v)
	}
	if v := p.RelayServerMaxSessionsPerPeer; v != 0 {
		limits[1] = fmt.Sprintf("per peer %d", v)
	}
	if v := p.RelayServerSessionRate; v != 0 {
		limits[2] = "session rate " + configs.FormatByteRate(v) + "/s"
	}
	fmt.Fprintf(w, "  limits      %s\n", strings.Join(limits, ", "))
}
