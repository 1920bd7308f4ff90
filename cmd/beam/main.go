// Command beam is Beam's one binary: the daemon, the CLI, and the servers.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"beam.dev/beam/cmd/beam/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewCmdRoot(cli.NewFactory()).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "beam:", cli.ErrorMessage(err))
		os.Exit(cli.ExitCode(err))
	}
}
