package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestUnknownSubcommands: every command group (a command with
// subcommands), walked from the root, refuses a word that names none of
// its subcommands, with a suggestion where one is close, instead of
// printing its help and succeeding; alone it prints its help.
func TestUnknownSubcommands(t *testing.T) {
	newRoot := func() (*cobra.Command, *bytes.Buffer) {
		var out bytes.Buffer
		root := NewCmdRoot(&Factory{Out: &out, ErrOut: &out, Getenv: func(string) string { return "" }})
		root.SetOut(&out)
		root.SetErr(&out)
		return root, &out
	}
	run := func(args ...string) (string, error) {
		root, out := newRoot()
		root.SetArgs(args)
		err := root.Execute()
		return out.String(), err
	}
	var groups [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		if c.HasSubCommands() {
			groups = append(groups, path)
		}
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string(nil), path...), sub.Name()))
		}
	}
	root, _ := newRoot()
	walk(root, nil)
	if len(groups) < 5 {
		t.Fatalf("found %d command groups, want the root, admin, admin nodes, dns and more: %v", len(groups), groups)
	}
	for _, g := range groups {
		name := strings.Join(append([]string{"beam"}, g...), " ")
		t.Run(name, func(t *testing.T) {
			// A group that runs itself (beam expose TARGET) refuses
			// the words by its own rules; the others as unknown.
			c, _, _ := root.Find(g)
			group := c.Annotations[groupAnnotation] != ""
			out, err := run(append(g, "frob", "x")...)
			switch {
			case err == nil:
				t.Errorf("%s frob x: no error (printed %.200q)", name, out)
			case group && !strings.Contains(err.Error(), `unknown command "frob"`):
				t.Errorf("%s frob x: error %v, want unknown command", name, err)
			}
		})
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"admin", "nodes", "delete", "gamma"}, `unknown command "delete" for "beam admin nodes"`},
		{[]string{"admin", "foo"}, `unknown command "foo" for "beam admin"`},
		{[]string{"admin", "authkey", "revok", "x"}, `unknown command "revok" for "beam admin authkey"`},
		{[]string{"dns", "frob"}, `unknown command "frob" for "beam dns"`},
		{[]string{"admin", "nodez"}, `did you mean "nodes"?`},
		{[]string{"admin", "authkey", "lst"}, `did you mean "list"?`},
		{[]string{"exposee"}, `did you mean "expose"?`},
		{[]string{"help", "frob"}, `unknown help topic "frob"`},
	} {
		if _, err := run(tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("beam %s: error %v, want %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
	// A group alone, and help for a command, still print help.
	for _, args := range [][]string{{"admin"}, {"admin", "nodes"}, {"help", "admin"}} {
		if out, err := run(args...); err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("beam %s: %v, printed %.200q; want its help", strings.Join(args, " "), err, out)
		}
	}
}
