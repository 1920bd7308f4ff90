package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/wire"
)

// adminFlags are the flags every beam admin command shares.
type adminFlags struct {
	coordinator string
	tokenFile   string
	dataDir     string
}

// client builds the admin API client. It is the one place that finds the
// coordinator and its token, for every admin command:
//
//   - URL: --coordinator, else BEAM_COORDINATOR, else the discovery file
//     of a coordinator on this host (DATA/coordinator.json with --data,
//     else the user's copy; see coorddiscovery.go).
//   - token: --token-file, else BEAM_ADMIN_TOKEN, else the token file the
//     discovery file names, used only when the URL is the discovered one
//     (a token is never sent to a coordinator it does not belong to).
func (a *adminFlags) client(f *Factory) (*coordclient.Admin, error) {
	server, token, err := a.target(f)
	if err != nil {
		return nil, err
	}
	return coordclient.NewAdmin(server, token, nil), nil
}

// target returns the coordinator URL (several, comma-separated) and the
// admin token for client, found and checked as client says.
func (a *adminFlags) target(f *Factory) (server, token string, err error) {
	server = a.coordinator
	if server == "" {
		server = f.getenv("BEAM_COORDINATOR")
	}
	d, dpath, err := discover(f, a.dataDir)
	if err != nil {
		return "", "", err
	}
	if server == "" && d != nil {
		server = d.URL
	}
	if server == "" {
		return "", "", errors.New("no coordinator found: pass --coordinator URL or set BEAM_COORDINATOR (on the coordinator's host, beam admin finds one that runs as this user, or pass --data DIR)")
	}
	for u := range strings.SplitSeq(server, ",") {
		if u, err := url.Parse(strings.TrimSpace(u)); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", "", fmt.Errorf("bad coordinator URL %q: want http(s)://host:port (several: comma-separated)", server)
		}
	}
	switch {
	case a.tokenFile != "":
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return "", "", fmt.Errorf("read --token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	case f.getenv("BEAM_ADMIN_TOKEN") != "":
		token = strings.TrimSpace(f.getenv("BEAM_ADMIN_TOKEN"))
	case d != nil && strings.TrimRight(server, "/") == d.URL:
		b, err := os.ReadFile(d.TokenFile)
		if err != nil {
			return "", "", fmt.Errorf("read the admin token named in %s: %w (run beam admin as the coordinator's user, or set BEAM_ADMIN_TOKEN)", dpath, err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return "", "", errors.New("no admin token: set BEAM_ADMIN_TOKEN or pass --token-file (the coordinator writes DATA/admin.token)")
	}
	if d != nil && strings.TrimRight(server, "/") == d.URL {
		// The URL is only what a file says a coordinator used: check that
		// the coordinator still answers there before any token goes.
		if err := checkDiscovered(context.Background(), d, dpath); err != nil {
			return "", "", err
		}
	}
	return server, token, nil
}

// adminErr makes an admin API error one readable line.
func adminErr(err error) error {
	switch {
	case errors.Is(err, coordclient.ErrUnauthorized):
		return errors.New("the coordinator refused the admin token (check BEAM_ADMIN_TOKEN or --token-file)")
	case errors.Is(err, coordclient.ErrUnreachable):
		// Say where and why, not the HTTP client's request line.
		msg := "cannot reach the coordinator"
		if ue, ok := errors.AsType[*url.Error](err); ok {
			if u, perr := url.Parse(ue.URL); perr == nil {
				msg += " at " + u.Scheme + "://" + u.Host
			}
		}
		if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Err != nil {
			msg += " (" + oe.Err.Error() + ")"
		}
		return errors.New(msg + ": check --coordinator or BEAM_COORDINATOR, and that the coordinator runs")
	}
	return err
}

func ctxOf(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// NewCmdAdmin returns the beam admin command group.
func NewCmdAdmin(f *Factory) *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Administer a coordinator",
		Long: `Administer a coordinator through its admin API.

The coordinator URL comes from --coordinator or BEAM_COORDINATOR; the admin
token from --token-file or BEAM_ADMIN_TOKEN. On the coordinator's own host
neither is needed: beam coordinator and beam server write DATA/coordinator.json
(URL and token file) and a copy in $XDG_RUNTIME_DIR/beam (else the user's
config directory), which beam admin reads when run by the same user. --data
DIR reads DIR/coordinator.json instead.`,
	}
	cmd.PersistentFlags().StringVar(&a.coordinator, "coordinator", "", "coordinator URL (env BEAM_COORDINATOR)")
	cmd.PersistentFlags().StringVar(&a.tokenFile, "token-file", "", "file holding the admin token (default: env BEAM_ADMIN_TOKEN, else the local coordinator's)")
	cmd.PersistentFlags().StringVar(&a.dataDir, "data", "", "data directory of a coordinator on this host: read its URL and token from DIR/coordinator.json")
	cmd.AddCommand(newCmdAdminAuthKey(f, a), newCmdAdminNodes(f, a))
	cmd.AddCommand(newCmdAdminRoutes(f, a), newCmdAdminDomains(f, a), newCmdAdminDNS(f, a))
	cmd.AddCommand(newCmdAdminUsers(f, a), newCmdAdminPolicy(f, a), newCmdAdminAudit(f, a))
	cmd.AddCommand(newCmdAdminConsole(f, a))
	return cmd
}

func newCmdAdminAuthKey(f *Factory, a *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "authkey", Aliases: []string{"authkeys"}, Short: "Create, list and delete auth keys"}

	var req coordclient.AuthKeyRequest
	var tags []string
	var keyExpiry string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an auth key and print it (it is shown only once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req.Tags = append(req.Tags, tags...)
			if keyExpiry != "" {
				d, err := parseExpiryArg(keyExpiry)
				if keyExpiry == "0" {
					d, err = 0, nil
				}
				if err != nil {
					return err
				}
				req.KeyExpiry = d
				if d == 0 {
					req.KeyExpiry = -1 // never
				}
			}
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			secret, _, err := ad.CreateAuthKey(ctxOf(cmd), req)
			if err != nil {
				return adminErr(err)
			}
			fmt.Fprintln(f.Out, secret)
			return nil
		},
	}
	create.Flags().BoolVar(&req.Reusable, "reusable", false, "the key may register any number of nodes")
	create.Flags().BoolVar(&req.Ephemeral, "ephemeral", false, "nodes are deleted soon after they go offline")
	create.Flags().DurationVar(&req.Expiry, "expiry", 0, "how long the key stays valid (e.g. 1h); 0 means forever")
	create.Flags().StringSliceVar(&req.Tags, "tags", nil, "tags given to nodes (comma-separated)")
	create.Flags().StringVar(&req.User, "user", "", "user that owns the nodes")
	create.Flags().StringArrayVar(&tags, "tag", nil, "tag given to nodes, like tag:server (repeatable; the policy's tagOwners must list it)")
	create.Flags().StringVar(&keyExpiry, "key-expiry", "", "node key expiry of its nodes (e.g. 720h, 30d; 0 or never for none; default: the coordinator's --node-key-expiry (180d) for untagged nodes, none for tagged)")
	create.Flags().StringVar(&req.Network, "network", "", "network to join (default \"default\")")
	create.Flags().BoolVar(&req.Edge, "edge", false, "the key registers public edge nodes")

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List auth keys (by prefix; secrets are never shown)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			keys, err := ad.ListAuthKeys(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			if asJSON {
				return printJSON(f, keys)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PREFIX\tNETWORK\tREUSABLE\tEPHEMERAL\tUSED\tEXPIRES\tVALID\tTAGS")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%v\t%d\t%s\t%v\t%s\n", k.Prefix, k.Network, k.Reusable, k.Ephemeral, k.UseCount,
					fmtTime(k.Expiry), k.Valid, strings.Join(k.Tags, ","))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	del := &cobra.Command{
		Use:   "delete PREFIX",
		Short: "Delete an auth key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			if err := ad.DeleteAuthKey(ctxOf(cmd), args[0]); err != nil {
				if errors.Is(err, coordclient.ErrNotFound) {
					return fmt.Errorf("no auth key with prefix %q", args[0])
				}
				return adminErr(err)
			}
			return nil
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

func newCmdAdminNodes(f *Factory, a *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "nodes", Aliases: []string{"node"}, Short: "List, rename, remove and expire nodes"}

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List nodes of all networks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			nodes, err := ad.ListNodes(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			if asJSON {
				return printJSON(f, nodes)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDNS NAME\tADDRESSES\tONLINE\tLAST SEEN\tKEY EXPIRY\tOS\tOWNER")
			var ungranted bool
			for _, n := range nodes {
				addrs := make([]string, len(n.Addresses))
				for i, p := range n.Addresses {
					addrs[i] = p.Addr().String()
				}
				online := fmt.Sprint(n.Online)
				if n.Unknown {
					online = "unknown" // its coordinator stopped answering
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(n.Name), cell(n.DNSName), strings.Join(addrs, ","), online,
					fmtTime(n.LastSeen), fmtTime(n.KeyExpiry), cell(n.OS), cell(nodeOwner(n)))
				ungranted = ungranted || len(n.UngrantedTags) > 0
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if ungranted {
				fmt.Fprintln(f.Out, "(no owner): a tag the policy's tagOwners no longer lists; the node does not hold it for the policy")
			}
			return nil
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	byName := func(use, short string, do func(*coordclient.Admin, context.Context, string) error) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				ad, err := a.client(f)
				if err != nil {
					return err
				}
				if err := do(ad, ctxOf(cmd), args[0]); err != nil {
					if errors.Is(err, coordclient.ErrNotFound) {
						return fmt.Errorf("no node %q", args[0])
					}
					return adminErr(err)
				}
				return nil
			},
		}
	}
	cmd.AddCommand(list,
		byName("remove", "Remove a node (NAME, NETWORK/NAME or nodekey:...)", (*coordclient.Admin).RemoveNode),
		byName("expire", "Expire a node's key now", (*coordclient.Admin).ExpireNode),
		newCmdAdminRename(f, a),
		newCmdAdminSetExpiry(f, a), newCmdAdminApprove(f, a), newCmdAdminPending(f, a),
	)
	return cmd
}

func printJSON(f *Factory, v any) error {
	enc := json.NewEncoder(f.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

// nodeOwner is the OWNER column of beam admin nodes list: the node's tags
// (those no owner grants marked "(no owner)") or its user, "-" for neither.
func nodeOwner(n *wire.Node) string {
	if len(n.Tags) == 0 {
		if n.User == "" {
			return "-"
		}
		return n.User
	}
	tags := make([]string, len(n.Tags))
	for i, t := range n.Tags {
		tags[i] = t
		if slices.Contains(n.UngrantedTags, t) {
			tags[i] += "(no owner)"
		}
	}
	return strings.Join(tags, ",")
}
