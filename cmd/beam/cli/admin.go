package cli

import "github.com/spf13/cobra"

// NewCmdAdmin returns the beam admin command group.
func NewCmdAdmin(f *Factory) *cobra.Command {
	return &cobra.Command{Use: "admin", Short: "Administer a coordinator"}
}
