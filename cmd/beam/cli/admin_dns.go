package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/wire"
)

// newCmdAdminDNS returns beam admin dns: the DNS settings every node gets
// and TXT records of the public zone.
func newCmdAdminDNS(f *Factory, a *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "dns", Short: "Manage DNS settings and public zone TXT records"}

	config := &cobra.Command{Use: "config", Short: "Show or replace the DNS settings handed to every node"}
	get := &cobra.Command{
		Use:   "get",
		Short: "Print the DNS settings as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			c, err := ad.DNSConfig(ctxOf(cmd))
			if err != nil {
				return adminErr(err)
			}
			return printJSON(f, c)
		},
	}
	set := &cobra.Command{
		Use:   "set FILE",
		Short: "Replace the DNS settings with a JSON file (- for stdin)",
		Long: `Replace the DNS settings with a JSON file (- for stdin), for example:

  {"nameservers": ["192.0.2.53:53"],
   "routes": {"corp.example": ["100.64.0.9:53"]},
   "extra_records": [{"name": "db.default.beam.internal", "type": "A", "value": "100.64.0.9"}]}

Every node gets the new settings within a second.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readDNSConfigFile(args[0], cmd.InOrStdin())
			if err != nil {
				return err
			}
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			c, err := ad.SetDNSConfig(ctxOf(cmd), raw)
			if err != nil {
				return adminErr(err)
			}
			return printJSON(f, c)
		},
	}
	config.AddCommand(get, set)

	txt := &cobra.Command{Use: "txt", Short: "Set or delete TXT records in the public zone"}
	txtSet := &cobra.Command{
		Use:   "set NAME VALUE...",
		Short: "Set the TXT records of NAME (replacing any before)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			if err := ad.SetTXT(ctxOf(cmd), args[0], args[1:]); err != nil {
				return txtErr(err)
			}
			return nil
		},
	}
	txtDel := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete the TXT records of NAME",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ad, err := a.client(f)
			if err != nil {
				return err
			}
			if err := ad.DeleteTXT(ctxOf(cmd), args[0]); err != nil {
				return txtErr(err)
			}
			return nil
		},
	}
	txt.AddCommand(txtSet, txtDel)
	cmd.AddCommand(config, txt)
	return cmd
}

func txtErr(err error) error {
	if errors.Is(err, coordclient.ErrEdgeDisabled) {
		return errors.New("the coordinator has no public DNS zone (run beam server, which serves one)")
	}
	return adminErr(err)
}

// readDNSConfigFile reads and strictly checks a DNS settings file.
func readDNSConfigFile(path string, stdin io.Reader) (json.RawMessage, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read DNS config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c wire.DNSSettings
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("parse DNS config %s: %w", path, err)
	}
	return b, nil
}
