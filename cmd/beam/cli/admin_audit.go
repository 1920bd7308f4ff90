package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newCmdAdminAudit(f *Factory, a *adminFlags) *cobra.Command {
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			entries, err := ad.Audit(ctxOf(cmd), limit)
			if err != nil {
				return adminErr(err)
			}
			if asJSON {
				return printJSON(f, entries)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tTARGET\tDETAIL")
			for _, e := range entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", fmtTime(e.Time), cell(e.Actor), cell(e.Action), cell(e.Target), cell(e.Detail))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", 100, "how many entries to show")
	return cmd
}
