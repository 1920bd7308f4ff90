package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// DERPOptions are the flags of beam derp.
type DERPOptions struct{}

// NewCmdDERP returns the beam derp command.
func NewCmdDERP(f *Factory, runF func(*DERPOptions) error) *cobra.Command {
	return &cobra.Command{Use: "derp", Short: "Run a relay server with a STUN responder", RunE: func(*cobra.Command, []string) error {
		return errors.New("derp: not built yet")
	}}
}
