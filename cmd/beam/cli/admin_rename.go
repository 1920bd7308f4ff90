package cli

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
)

func newCmdAdminRename(f *Factory, a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rename NAME NEW",
		Short: "Rename a node; its MagicDNS name becomes NEW.<network domain>",
		Long: `Rename a node (NAME, NETWORK/NAME or nodekey:...) to NEW, a DNS label
(a-z, 0-9 and '-') not used by another node of its network. Every peer
resolves the new name, and no longer the old one, within a second. The
node keeps the name when it rejoins.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			n, err := ad.RenameNode(ctxOf(cmd), args[0], args[1])
			if err != nil {
				var ce *coordclient.Error
				switch {
				case errors.Is(err, coordclient.ErrNotFound):
					return fmt.Errorf("no node %q", args[0])
				case errors.As(err, &ce) && (ce.Status == http.StatusConflict || ce.Status == http.StatusBadRequest):
					return fmt.Errorf("rename %s: %s", args[0], ce.Message)
				}
				return adminErr(err)
			}
			fmt.Fprintf(f.Out, "%s is now %s (%s)\n", args[0], n.Name, n.DNSName)
			return nil
		},
	}
}
