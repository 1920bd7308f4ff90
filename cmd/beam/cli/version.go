package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/internal/version"
)

// NewCmdVersion returns the beam version command: this binary's version,
// Go version and platform, and the daemon's version if one answers.
func NewCmdVersion(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print beam's version (and the daemon's, if one runs), for bug reports",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(f.Out, "beam %s\n", version.Long())
			ctx, cancel := context.WithTimeout(ctxOf(cmd), 2*time.Second)
			defer cancel()
			if st, err := in.client(f).Status(ctx); err == nil && st.Version != "" {
				fmt.Fprintf(f.Out, "daemon %s (socket %s)\n", st.Version, in.socketPath(f))
			}
			return nil
		},
	}
}
