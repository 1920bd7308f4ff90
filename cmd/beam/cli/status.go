package cli

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/localapi/apitype"
)

// NewCmdStatus returns the beam status command.
func NewCmdStatus(f *Factory, in *instanceFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node, its peers and the path to each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := in.client(f).Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(f.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(f, st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printStatus(f *Factory, st *apitype.Status) {
	if st.Self == nil {
		fmt.Fprintf(f.Out, "state: %s\n", st.State)
		for _, h := range st.Health {
			fmt.Fprintf(f.Out, "health: %s\n", h)
		}
		return
	}
	tw := tabwriter.NewWriter(f.Out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(st.Self.Name), joinAddrs(st.Self.IPs), "self", string(st.State))
	now := time.Now()
	for _, p := range st.Peers {
		online := "offline"
		switch {
		case p.Online:
			online = "online"
		case p.Unknown:
			online = "unknown"
		}
		if p.Expired {
			online = "expired"
		}
		path := p.Path
		switch {
		case p.Path == "direct" && p.Endpoint != "":
			path = "direct " + p.Endpoint
		case p.Path == "relay" && p.Relay != "":
			path = "relay " + p.Relay
		case p.Path == "peer-relay" && p.Via != "":
			path = "peer-relay via " + p.Via
		}
		hs := "-"
		if !p.LastHandshake.IsZero() {
			hs = "handshake " + now.Sub(p.LastHandshake).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\trx %d tx %d\n", cell(p.Name), joinAddrs(p.IPs), online, cell(path), hs, p.RxBytes, p.TxBytes)
	}
	tw.Flush()
	if st.TUN != "" {
		fmt.Fprintf(f.Out, "# kernel TUN mode: device %s\n", st.TUN)
	}
	if r := st.PeerRelay; r != nil {
		fmt.Fprintf(f.Out, "# peer relay server on UDP port %d: %d sessions (%d bound), %d packets forwarded, %d dropped over the rate bound\n",
			r.Port, r.Sessions, r.Bound, r.Packets, r.DroppedRate)
		if r.Mapped != "" {
			fmt.Fprintf(f.Out, "# peer relay port mapped to %s by %s\n", r.Mapped, r.MappingProtocol)
		}
		if !r.Offered {
			fmt.Fprintln(f.Out, "# peer relay server not offered to peers: the policy's peerRelays does not name this node")
		}
	}
	switch {
	case st.CoordinatorKeyChange != nil:
		fmt.Fprintln(f.Out, "# coordinator refused (its machine key changed; see health): running on the last netmap")
	case !st.CoordinatorOnline:
		fmt.Fprintln(f.Out, "# coordinator unreachable: running on the last netmap")
	case st.CoordinatorStream != "":
		fmt.Fprintf(f.Out, "# coordinator: %s\n", st.CoordinatorStream)
	}
	for _, h := range st.Health {
		fmt.Fprintf(f.Out, "# health: %s\n", h)
	}
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

// NewCmdIP returns the beam ip command.
func NewCmdIP(f *Factory, in *instanceFlags) *cobra.Command {
	var v4, v6 bool
	cmd := &cobra.Command{
		Use:   "ip [NAME]",
		Short: "Print this node's (or a peer's) overlay addresses",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := in.client(f).Status(cmd.Context())
			if err != nil {
				return err
			}
			target := st.Self
			if len(args) == 1 {
				target = nil
				for i := range st.Peers {
					p := &st.Peers[i]
					if p.Name == args[0] || strings.TrimSuffix(p.DNSName, ".") == strings.TrimSuffix(args[0], ".") {
						target = p
					}
				}
				if st.Self != nil && st.Self.Name == args[0] {
					target = st.Self
				}
				if target == nil {
					return fmt.Errorf("no peer named %q", args[0])
				}
			}
			if target == nil {
				return fmt.Errorf("not in the mesh (state %s); run beam up", st.State)
			}
			for _, a := range target.IPs {
				if (v4 && !a.Is4()) || (v6 && !a.Is6()) {
					continue
				}
				fmt.Fprintln(f.Out, a)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&v4, "4", "4", false, "only IPv4")
	cmd.Flags().BoolVarP(&v6, "6", "6", false, "only IPv6")
	return cmd
}
