package cli

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// NewCmdDNS returns the beam dns command group.
func NewCmdDNS(f *Factory, in *instanceFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "dns", Short: "Query and inspect MagicDNS"}
	cmd.AddCommand(&cobra.Command{
		Use:   "query NAME [TYPE]",
		Short: "Ask the daemon's MagicDNS resolver",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ := "A"
			if len(args) == 2 {
				typ = args[1]
			}
			res, err := in.client(f).DNSQuery(cmd.Context(), args[0], typ)
			if err != nil {
				return err
			}
			fmt.Fprintf(f.Out, "%s %s: %s\n", res.Name, res.Type, res.Rcode)
			for _, a := range res.Answers {
				fmt.Fprintln(f.Out, a)
			}
			if res.Rcode != "NOERROR" {
				return &exitError{code: 1, err: fmt.Errorf("%s", res.Rcode)}
			}
			return nil
		},
	})
	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the MagicDNS domain, search path, upstreams and split routes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := in.client(f).DNSStatus(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(f.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			fmt.Fprintf(f.Out, "domain:     %s\n", st.Domain)
			fmt.Fprintf(f.Out, "search:     %s\n", strings.Join(st.SearchDomains, " "))
			fmt.Fprintf(f.Out, "resolvers:  %s\n", strings.Join(st.Resolvers, " "))
			fmt.Fprintf(f.Out, "upstreams:  %s\n", strings.Join(st.Upstreams, " "))
			fmt.Fprintf(f.Out, "names:      %d\n", st.Names)
			suffixes := slices.Sorted(maps.Keys(st.Routes))
			for _, s := range suffixes {
				fmt.Fprintf(f.Out, "route:      %s -> %s\n", s, strings.Join(st.Routes[s], " "))
			}
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(status)
	return cmd
}
