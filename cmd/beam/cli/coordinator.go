package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// CoordinatorOptions are the flags of beam coordinator.
type CoordinatorOptions struct{}

// NewCmdCoordinator returns the beam coordinator command.
func NewCmdCoordinator(f *Factory, runF func(*CoordinatorOptions) error) *cobra.Command {
	return &cobra.Command{Use: "coordinator", Short: "Run the coordination server", RunE: func(*cobra.Command, []string) error {
		return errors.New("coordinator: not built yet")
	}}
}
