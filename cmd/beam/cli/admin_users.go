package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
)

func newCmdAdminUsers(f *Factory, a *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "users", Aliases: []string{"user"}, Short: "Create, list and delete users"}
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user (auth keys and approvals can then name it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			if _, err := ad.CreateUser(ctxOf(cmd), args[0]); err != nil {
				return adminErr(err)
			}
			return nil
		},
	}
	var asJSON, withNodes bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			users, err := ad.ListUsers(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			if asJSON {
				return printJSON(f, users)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED")
			for _, u := range users {
				fmt.Fprintf(tw, "%s\t%s\n", u.Name, fmtTime(u.CreatedAt))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a user that owns no nodes or auth keys (or, with --with-nodes, remove them too) and is not named by the policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			del := ad.DeleteUser
			if withNodes {
				del = ad.DeleteUserAndNodes
			}
			if err := del(ctxOf(cmd), args[0]); err != nil {
				if errors.Is(err, coordclient.ErrNotFound) {
					return fmt.Errorf("no user %q", args[0])
				}
				return adminErr(err)
			}
			return nil
		},
	}
	del.Flags().BoolVar(&withNodes, "with-nodes", false, "also remove the user's devices and delete their auth keys")
	cmd.AddCommand(create, list, del)
	return cmd
}
