package cli

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
)

func newCmdAdminApprove(f *Factory, a *adminFlags) *cobra.Command {
	var user string
	var tags []string
	cmd := &cobra.Command{
		Use:   "approve CODE",
		Short: "Approve a node waiting to join with CODE (shown by the node)",
		Long: `Approve a node waiting to join with CODE (shown by the node and at its
login URL). The node joins the default network owned by --user, or carrying
the --tag tags (which the policy's tagOwners must list), or neither.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if user != "" && len(tags) > 0 {
				return errors.New("use --user or --tag, not both")
			}
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			if err := ad.Approve(ctxOf(cmd), args[0], user, tags); err != nil {
				if errors.Is(err, coordclient.ErrNotFound) {
					return fmt.Errorf("no node is waiting with code %q (codes expire after 10 minutes)", args[0])
				}
				return adminErr(err)
			}
			fmt.Fprintln(f.Out, "approved")
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "user that owns the node")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag for the node, like tag:server (repeatable)")
	return cmd
}

func newCmdAdminPending(f *Factory, a *adminFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pending",
		Short: "List nodes waiting for approval",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			ps, err := ad.ListPending(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			if asJSON {
				return printJSON(f, ps)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CODE\tHOSTNAME\tOS\tEXPIRES")
			for _, p := range ps {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(p.Code), cell(p.Hostname), cell(p.OS), fmtTime(p.Expires))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newCmdAdminSetExpiry(f *Factory, a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "set-expiry NAME DURATION|never",
		Short: "Set when a node's key expires (DURATION from now, e.g. 720h, or never)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := parseExpiryArg(args[1])
			if err != nil {
				return err
			}
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			n, err := ad.SetNodeExpiry(ctxOf(cmd), args[0], d)
			if err != nil {
				if errors.Is(err, coordclient.ErrNotFound) {
					return fmt.Errorf("no node %q", args[0])
				}
				return adminErr(err)
			}
			fmt.Fprintf(f.Out, "%s: key expires %s\n", n.Name, fmtExpiry(n.KeyExpiry))
			return nil
		},
	}
}

// parseExpiryArg parses "never" (0) or a positive duration; days ("180d")
// are accepted too.
func parseExpiryArg(s string) (time.Duration, error) {
	if s == "never" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if _, err := fmt.Sscanf(days, "%d", &n); err == nil && n > 0 && fmt.Sprint(n) == days {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("bad expiry %q: want a duration like 720h or 30d, or never", s)
	}
	return d, nil
}

func fmtExpiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return fmtTime(t)
}
