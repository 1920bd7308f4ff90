package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// completionTimeout bounds how long a shell completion waits for the
// daemon: a completion that hangs is worse than none.
const completionTimeout = 2 * time.Second

// addCompletions makes shell completion (beam completion bash|zsh|fish)
// offer what the daemon knows: peer names for the commands whose first
// argument is a peer, route names for beam expose stop. It is one place
// for the whole tree, so commands need not know about completion.
func addCompletions(root *cobra.Command, f *Factory, in *instanceFlags) {
	for _, path := range [][]string{{"nc"}, {"ping"}, {"ip"}} {
		if c, _, err := root.Find(path); err == nil && c != root {
			c.ValidArgsFunction = completeFirst(func(ctx context.Context) ([]string, error) { return peerNames(ctx, f, in) })
		}
	}
	if c, _, err := root.Find([]string{"expose", "stop"}); err == nil && c.Name() == "stop" {
		c.ValidArgsFunction = completeFirst(func(ctx context.Context) ([]string, error) { return routeNames(ctx, f, in) })
	}
}

// completeFirst completes the first argument from list, filtered by the
// prefix typed so far; later arguments (a port) get no file names either.
func completeFirst(list func(context.Context) ([]string, error)) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(ctxOf(cmd), completionTimeout)
		defer cancel()
		names, err := list(ctx)
		if err != nil {
			cobra.CompDebugln(ErrorMessage(err), true)
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, n := range names {
			if strings.HasPrefix(n, toComplete) {
				out = append(out, n)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// peerNames returns the names of the daemon's peers.
func peerNames(ctx context.Context, f *Factory, in *instanceFlags) ([]string, error) {
	st, err := in.client(f).Status(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range st.Peers {
		names = append(names, p.Name)
	}
	return names, nil
}

// routeNames returns the names beam expose stop takes for the daemon's
// routes: an HTTP or TLS route's first label, PROTO:PORT for the others.
func routeNames(ctx context.Context, f *Factory, in *instanceFlags) ([]string, error) {
	routes, err := in.client(f).ExposeList(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range routes {
		switch {
		case r.Host != "":
			label, _, _ := strings.Cut(r.Host, ".")
			names = append(names, label)
		case r.PublicPort != 0:
			names = append(names, fmt.Sprintf("%s:%d", r.Proto, r.PublicPort))
		}
	}
	return names, nil
}
