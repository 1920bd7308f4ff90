package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
)

func newCmdAdminPolicy(f *Factory, a *adminFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Show, check and set the access policy",
		Long: `Show, check and set the access policy (HuJSON: JSON with comments and
trailing commas). A policy is refused if it does not parse, names a user that
does not exist, or one of its tests fails against the current nodes; the
problems are printed as FILE:LINE:COLUMN: message.`,
	}
	get := &cobra.Command{
		Use:   "get",
		Short: "Print the policy in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			src, err := ad.GetPolicy(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			f.Out.Write(src)
			if len(src) > 0 && src[len(src)-1] != '\n' {
				fmt.Fprintln(f.Out)
			}
			return nil
		},
	}
	withFile := func(use, short string, apply bool) *cobra.Command {
		return &cobra.Command{
			Use:   use + " FILE",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				src, err := os.ReadFile(args[0])
				if err != nil {
					return fmt.Errorf("read policy: %w", err)
				}
				ad, err := a.client(f)
				if err != nil {
					return err
				}
				if apply {
					err = ad.SetPolicy(ctxOf(cmd), src)
				} else {
					err = ad.CheckPolicy(ctxOf(cmd), src)
				}
				if pe, ok := errors.AsType[*coordclient.PolicyError](err); ok {
					for _, p := range pe.Problems {
						prefix := ""
						if p.TestFailed {
							prefix = "test failed: "
						}
						if p.Line > 0 {
							fmt.Fprintf(f.ErrOut, "%s:%d:%d: %s%s\n", args[0], p.Line, p.Column, prefix, p.Message)
						} else {
							fmt.Fprintf(f.ErrOut, "%s: %s%s\n", args[0], prefix, p.Message)
						}
					}
					return fmt.Errorf("policy %s refused (%d problem(s))", args[0], len(pe.Problems))
				}
				if err != nil {
					return adminErr(err)
				}
				if apply {
					fmt.Fprintln(f.Out, "policy applied")
				} else {
					fmt.Fprintln(f.Out, "policy OK")
				}
				return nil
			},
		}
	}
	cmd.AddCommand(get,
		withFile("set", "Check a policy file and apply it to every node", true),
		withFile("check", "Check a policy file without applying it", false),
	)
	return cmd
}
