package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// rejectUnknownSubcommands makes each command group in the tree under c
// (a command with subcommands that does nothing itself, such as beam
// admin) fail on an argument that names none of its subcommands, with
// cobra's suggestions, instead of printing its help and exiting 0 as if
// the command had run. A group alone still prints its help.
func rejectUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		rejectUnknownSubcommands(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	c.Args = unknownSubcommand
	c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[groupAnnotation] = "true"
}

// groupAnnotation marks the command groups rejectUnknownSubcommands
// made refuse unknown words.
const groupAnnotation = "beam-command-group"

// rejectUnknownHelpTopic makes beam help TOPIC fail when TOPIC names no
// command (cobra's help prints "Unknown help topic" and exits 0).
func rejectUnknownHelpTopic(root *cobra.Command) {
	for _, c := range root.Commands() {
		if c.Name() != "help" || c.Run == nil {
			continue
		}
		run := c.Run
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				if found, rest, err := root.Find(args); err != nil || len(rest) > 0 {
					at := root
					if err == nil {
						at = found
					}
					return fmt.Errorf("unknown help topic %q%s (beam --help lists the commands)", strings.Join(args, " "), didYouMean(at, args[len(args)-len(rest)]))
				}
			}
			run(cmd, args)
			return nil
		}
	}
}

// unknownSubcommand is the Args of a command group: no argument, or the
// first names no subcommand.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return fmt.Errorf("unknown command %q for %q%s (%s --help lists them)", args[0], cmd.CommandPath(), didYouMean(cmd, args[0]), cmd.CommandPath())
}

// didYouMean returns "; did you mean "x"?" with cobra's suggestions for
// the unknown subcommand arg of cmd, or "".
func didYouMean(cmd *cobra.Command, arg string) string {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default, set only as it runs
	}
	s := cmd.SuggestionsFor(arg)
	if len(s) == 0 {
		return ""
	}
	q := make([]string, len(s))
	for i, n := range s {
		q[i] = fmt.Sprintf("%q", n)
	}
	return "; did you mean " + strings.Join(q, " or ") + "?"
}
