package cli

import (
	"fmt"

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
	return cmd
}
