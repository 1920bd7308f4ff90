package cli

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestBadFlags runs every role's command with one bad domain, address,
// port range, URL or prefix flag: each is refused before the role starts,
// with an error naming the flag, and nothing panics.
func TestBadFlags(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	ran := false
	commands := map[string]func() *cobra.Command{
		"server": func() *cobra.Command { return NewCmdServer(f, func(*ServerOptions) error { ran = true; return nil }) },
		"coordinator": func() *cobra.Command {
			return NewCmdCoordinator(f, func(*CoordinatorOptions) error { ran = true; return nil })
		},
		"derp": func() *cobra.Command { return NewCmdDERP(f, func(*DERPOptions) error { ran = true; return nil }) },
		"edge": func() *cobra.Command {
			return NewCmdEdge(f, &instanceFlags{}, func(*EdgeOptions) error { ran = true; return nil })
		},
		"up": func() *cobra.Command {
			return checkNodeFlags(NewCmdUp(f, &instanceFlags{}, func(*UpOptions) error { ran = true; return nil }))
		},
		"daemon": func() *cobra.Command {
			return checkNodeFlags(NewCmdDaemon(f, &instanceFlags{}, func(*DaemonOptions) error { ran = true; return nil }))
		},
	}
	edgeBase := []string{"--coordinator", "http://127.0.0.1:1", "--domain", "example.test"}
	for _, tc := range []struct {
		cmd  string
		args []string
		flag string // the error must name it
	}{
		{"server", []string{"--domain", "a..b"}, "--domain"},
		{"server", []string{"--domain", "-a.test"}, "--domain"},
		{"server", []string{"--domain", "Example.Test"}, "--domain"},
		{"server", []string{"--domain", "a_b.test"}, "--domain"},
		{"server", []string{"--domain", strings.Repeat("a", 64) + ".test"}, "--domain"},
		{"server", []string{"--domain", "example.test."}, "--domain"},
		{"server", []string{"--dev", "--addr", "127.0.0.1"}, "--addr"},
		{"server", []string{"--dev", "--addr", "127.0.0.1:70000"}, "--addr"},
		{"server", []string{"--dev", "--http-addr", "nohost"}, "--http-addr"},
		{"server", []string{"--dev", "--https-addr", ":https"}, "--https-addr"},
		{"server", []string{"--dev", "--tcp-ports", "30000-20000"}, "--tcp-ports"},
		{"server", []string{"--dev", "--tcp-ports", "0-10"}, "--tcp-ports"},
		{"server", []string{"--dev", "--udp-ports", "1-70000"}, "--udp-ports"},
		{"server", []string{"--dev", "--udp-ports", "x"}, "--udp-ports"},
		{"server", []string{"--dev", "--stun-addr", "127.0.0.1:-1"}, "--stun-addr"},
		{"server", []string{"--dev", "--dns-addr", "[::1:53"}, "--dns-addr"},
		{"server", []string{"--dev", "--public-ip", "198.51.100.300"}, "--public-ip"},
		{"server", []string{"--dev", "--public-url", "ftp://x"}, "--public-url"},
		{"server", []string{"--dev", "--acme-ca", "not a url"}, "--acme-ca"},
		{"server", []string{"--dev", "--log-level", "loud"}, "--log-level"},
		{"server", []string{"--dev", "--max-edge-ports-per-network", "-2"}, "--max-edge-ports-per-network"},
		{"coordinator", []string{"--addr", "localhost"}, "--addr"},
		{"coordinator", []string{"--base-domain", "a..b"}, "--base-domain"},
		{"coordinator", []string{"--derp", "relay.example:3340"}, "--derp"},
		{"coordinator", []string{"--derp", "http://r.example", "--stun", "r.example"}, "--stun"},
		{"coordinator", []string{"--edge-domain", "a..b"}, "--edge-domain"},
		{"coordinator", []string{"--edge-domain", "e.test", "--edge-host", "bad host"}, "--edge-host"},
		{"coordinator", []string{"--edge-tcp-ports", "9-8"}, "--edge-tcp-ports"},
		{"coordinator", []string{"--edge-udp-ports", "65536"}, "--edge-udp-ports"},
		{"coordinator", []string{"--edge-http-url", "{host}:80"}, "--edge-http-url"},
		{"coordinator", []string{"--max-edge-ports-per-network", "-5"}, "--max-edge-ports-per-network"},
		{"derp", []string{"--addr", ":99999"}, "--addr"},
		{"derp", []string{"--stun-addr", "3478"}, "--stun-addr"},
		{"derp", []string{"--mesh-with", "relay2:3340"}, "--mesh-with"},
		{"derp", []string{"--relay-rate", "fast"}, "--relay-rate"},
		{"derp", []string{"--relay-burst", "1kB"}, "--relay-burst"},
		{"server", []string{"--dev", "--relay-rate", "10"}, "--relay-rate"},
		{"derp", []string{"--verify-clients", "coord.example"}, "--verify-clients"},
		{"edge", append([]string{"--domain", "a..b"}, edgeBase[:2]...), "--domain"},
		{"edge", append([]string{"--coordinator", "127.0.0.1:8080"}, edgeBase[2:]...), "--coordinator"},
		{"edge", append([]string{"--http-addr", "80"}, edgeBase...), "--http-addr"},
		{"edge", append([]string{"--https-addr", "host:x"}, edgeBase...), "--https-addr"},
		{"edge", append([]string{"--bind-host", "example.test"}, edgeBase...), "--bind-host"},
		{"edge", append([]string{"--acme-ca", "acme.example/dir"}, edgeBase...), "--acme-ca"},
		{"up", []string{"--coordinator", "coord.example:8080"}, "--coordinator"},
		{"up", []string{"--coordinator", "http://c1.example:8080,c2.example:8080"}, "--coordinator"},
		{"up", []string{"--coordinator", "http://c1.example:8080", "--coordinator", "ftp://c2.example"}, "--coordinator"},
		{"edge", append([]string{"--coordinator", "http://c1.example,c2.example:8080"}, edgeBase[2:]...), "--coordinator"},
		{"up", []string{"--socks5", "0.0.0.0:1080"}, "--socks5"},
		{"up", []string{"--http-proxy", "localhost"}, "--http-proxy"},
		{"up", []string{"--dns-upstream", "dns.example"}, "--dns-upstream"},
		{"daemon", []string{"--dns-listen", "198.51.100.1:53"}, "--dns-listen"},
		{"daemon", []string{"--acme-ca", "x"}, "--acme-ca"},
		{"daemon", []string{"--log-level", "verbose"}, "--log-level"},
	} {
		t.Run(tc.cmd+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			ran = false
			cmd := commands[tc.cmd]()
			quiet(cmd, tc.args)
			var err error
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("panic: %v", p)
					}
				}()
				err = cmd.Execute()
			}()
			if err == nil || ran {
				t.Fatalf("accepted (ran=%v, err=%v), want it refused before the run", ran, err)
			}
			if !strings.Contains(err.Error(), tc.flag) {
				t.Errorf("error %q does not name %s", err, tc.flag)
			}
		})
	}
	// Good values pass.
	for name, args := range map[string][]string{
		"server":      {"--domain", "beam.example.test", "--addr", "[::1]:0", "--public-ip", "2001:db8::1", "--tcp-ports", "20000"},
		"coordinator": {"--derp", "https://relay.example:443", "--stun", "relay.example:3478", "--edge-domain", "e.example", "--edge-http-url", "http://{host}:18081"},
		"derp":        {"--addr", "localhost:3340", "--stun-addr", ""},
		"edge":        append([]string{"--bind-host", "::"}, edgeBase...),
		"up":          {"--socks5", "127.0.0.1:1080", "--dns-upstream", "192.0.2.53:5353"},
		"daemon":      {"--http-proxy", "[::1]:8080"},
	} {
		ran = false
		cmd := commands[name]()
		quiet(cmd, args)
		if err := cmd.Execute(); err != nil || !ran {
			t.Errorf("%s %v: err %v, ran %v; want it run", name, args, err, ran)
		}
	}
}
