package cli

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/wire"
)

// newCmdAdminRoutes returns beam admin routes: list and remove public routes.
func newCmdAdminRoutes(f *Factory, a *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "routes", Aliases: []string{"route"}, Short: "List and remove public edge routes"}

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the routes published on the public edge",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			routes, err := ad.ListRoutes(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			if asJSON {
				if routes == nil {
					routes = []*wire.RouteInfo{}
				}
				return printJSON(f, routes)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "URL\tPROTO\tNETWORK\tNODE\tTARGET\tOPTIONS")
			for _, r := range routes {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.URL, r.Proto, r.Network, r.NodeName, r.Target, strings.Join(r.Options.Names(), ","))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	remove := &cobra.Command{
		Use:   "remove HOST",
		Short: "Withdraw every route of a public host name (all nodes and protocols)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			if err := ad.RemoveRoutes(ctxOf(cmd), args[0]); err != nil {
				if errors.Is(err, coordclient.ErrNotFound) {
					return fmt.Errorf("no route for %q", args[0])
				}
				return adminErr(err)
			}
			return nil
		},
	}
	cmd.AddCommand(list, remove)
	return cmd
}

// newCmdAdminDomains returns beam admin domains: custom domain proofs.
func newCmdAdminDomains(f *Factory, a *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "domains", Aliases: []string{"domain"}, Short: "Verify, list and remove custom domains"}

	var network string
	verify := &cobra.Command{
		Use:   "verify DOMAIN",
		Short: "Start or check a network's proof of control of a custom domain",
		Long: `Start or check a network's proof of control of a custom domain.

The first run prints the TXT record to publish. Publish it (or a CNAME of
the domain to a name the network exposes under the edge domain) and run
the command again; once verified, nodes of the network may expose the
domain with beam expose --domain.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			st, err := ad.VerifyDomain(ctxOf(cmd), args[0], network)
			if err != nil {
				if errors.Is(err, coordclient.ErrNotFound) {
					return fmt.Errorf("no network %q", network)
				}
				return adminErr(err)
			}
			if st.Verified {
				fmt.Fprintf(f.Out, "%s is verified for network %s (since %s)\n", st.Domain, st.Network, fmtTime(st.VerifiedAt))
				if st.ACMEChallengeCNAME != "" {
					fmt.Fprintf(f.Out, "For devices' own certificates (beam expose --tls-passthrough --domain %s\non a device started with --acme-ca), publish this CNAME record once:\n\n  %s.  CNAME  %s.\n",
						st.Domain, st.ACMEChallenge, st.ACMEChallengeCNAME)
				}
				return nil
			}
			fmt.Fprintf(f.Out, "%s is not verified yet for network %s.\nPublish this TXT record, then run this command again:\n\n  %s.  TXT  %q\n\n%s\n",
				st.Domain, st.Network, st.TXTName, st.Token, st.Problem)
			return nil
		},
	}
	verify.Flags().StringVar(&network, "network", "", "network claiming the domain (default \"default\")")

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List custom domain claims",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			ds, err := ad.ListDomains(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			if asJSON {
				if ds == nil {
					ds = []*wire.DomainStatus{}
				}
				return printJSON(f, ds)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DOMAIN\tNETWORK\tVERIFIED\tTXT RECORD")
			for _, d := range ds {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s=%s\n", d.Domain, d.Network, d.Verified, d.TXTName, d.Token)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var removeNetwork string
	remove := &cobra.Command{
		Use:   "remove DOMAIN",
		Short: "Remove custom domain claims and the routes on them",
		Long: `Remove custom domain claims and the routes on them.

Removes every network's claim on DOMAIN (only one network's with
--network) and withdraws those networks' routes on the domain. A network
that wants it back runs beam admin domains verify again and gets a new
token.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			if err := ad.RemoveDomain(ctxOf(cmd), args[0], removeNetwork); err != nil {
				if errors.Is(err, coordclient.ErrNotFound) {
					if removeNetwork != "" {
						return fmt.Errorf("no claim of network %q on %q", removeNetwork, args[0])
					}
					return fmt.Errorf("no claim on %q", args[0])
				}
				return adminErr(err)
			}
			return nil
		},
	}
	remove.Flags().StringVar(&removeNetwork, "network", "", "remove only this network's claim")
	cmd.AddCommand(verify, list, remove)
	return cmd
}
