package cli

import (
	"strings"

	"github.com/spf13/cobra"

	"beam.dev/beam/configs"
)

// checkNodeFlags makes cmd (beam up or beam daemon) validate the node
// settings among its flags before it runs.
func checkNodeFlags(cmd *cobra.Command) *cobra.Command {
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		fl := cmd.Flags()
		str := func(name string) string {
			v, _ := fl.GetString(name) // "" for a flag this command lacks
			return v
		}
		ups, _ := fl.GetStringSlice("dns-upstream")
		coords, _ := fl.GetStringSlice("coordinator") // beam up's; nil for beam daemon
		cfg := configs.Node{
			Coordinator: strings.Join(coords, ","), SOCKS5: str("socks5"), HTTPProxy: str("http-proxy"), DNSListen: str("dns-listen"),
			DNSUpstreams: ups, ACMECA: str("acme-ca"), LogLevel: str("log-level"),
		}
		return cfg.Validate()
	}
	return cmd
}
