package cli

import (
	"io"
	"net"
	"testing"

	"github.com/spf13/cobra"
)

func TestRedirectPort(t *testing.T) {
	listener := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 8443}
	for _, tc := range []struct {
		name     string
		https    net.Addr
		override uint16
		want     uint16
	}{
		{"the listener's port", listener, 0, 8443},
		{"a port mapping's", listener, 443, 443},
		{"no HTTPS listener", nil, 443, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := redirectPort(tc.https, tc.override); got != tc.want {
				t.Errorf("redirectPort(%v, %d) = %d, want %d", tc.https, tc.override, got, tc.want)
			}
		})
	}
}

// TestRedirectPortFlag checks beam server and beam edge take
// --https-redirect-port, and that it defaults to 0 (the listener's own).
func TestRedirectPortFlag(t *testing.T) {
	f := &Factory{In: nil, Out: io.Discard, ErrOut: io.Discard}
	for _, tc := range []struct {
		args []string
		want uint16
	}{
		{nil, 0},
		{[]string{"--https-redirect-port", "443"}, 443},
	} {
		var server, edgeOpt uint16
		cmd := NewCmdServer(f, func(o *ServerOptions) error { server = o.RedirectPort; return nil })
		quiet(cmd, append([]string{"--dev"}, tc.args...))
		if err := cmd.Execute(); err != nil {
			t.Fatalf("beam server %v: %v", tc.args, err)
		}
		cmd = NewCmdEdge(f, &instanceFlags{}, func(o *EdgeOptions) error { edgeOpt = o.RedirectPort; return nil })
		quiet(cmd, append([]string{"--coordinator", "http://127.0.0.1:1", "--domain", "example.test"}, tc.args...))
		if err := cmd.Execute(); err != nil {
			t.Fatalf("beam edge %v: %v", tc.args, err)
		}
		if server != tc.want || edgeOpt != tc.want {
			t.Errorf("%v: server %d, edge %d; want %d", tc.args, server, edgeOpt, tc.want)
		}
	}
	cmd := NewCmdServer(f, func(*ServerOptions) error { return nil })
	quiet(cmd, []string{"--dev", "--https-redirect-port", "70000"})
	if err := cmd.Execute(); err == nil {
		t.Error("--https-redirect-port 70000 accepted")
	}
}

// quiet sets cmd's arguments and discards its usage and error output.
func quiet(cmd *cobra.Command, args []string) {
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
}
