package cli

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"
)

// NewCmdNC returns the beam nc command.
func NewCmdNC(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "nc HOST PORT",
		Short: "Connect stdin and stdout to a TCP port on a peer",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, err := strconv.ParseUint(args[1], 10, 16)
			if err != nil || port == 0 {
				return fmt.Errorf("bad port %q", args[1])
			}
			c, err := in.client(f).Dial(cmd.Context(), "tcp", args[0], uint16(port))
			if err != nil {
				return err
			}
			defer c.Close()
			go func() {
				io.Copy(c, f.In)
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			}()
			_, err = io.Copy(f.Out, c)
			return err
		},
	}
}
