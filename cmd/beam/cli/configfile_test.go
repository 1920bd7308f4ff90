package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/edge"
)

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.hujson")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigFlagOverridesFile: a file's keys replace the defaults, a flag
// given on the command line wins over the file, and a key the file leaves
// out keeps its default.
func TestConfigFlagOverridesFile(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	path := writeConfig(t, `{
		// comments and trailing commas are fine
		"domain": "file.example",
		"addr": "127.0.0.1:9000",
		"public_ip": ["192.0.2.1", "192.0.2.2"],
		"tcp_ports": "30000-30099",
		"body_timeout": "45s",
		"max_conns": 7,
		"metrics_addr": "127.0.0.1:9999",
	}`)
	var got *ServerOptions
	cmd := NewCmdServer(f, func(o *ServerOptions) error { got = o; return nil })
	quiet(cmd, []string{"--config", path, "--addr", "127.0.0.1:9100", "--public-ip", "198.51.100.7", "--max-conns", "0"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ what, got, want string }{
		{"domain (file)", got.Domain, "file.example"},
		{"addr (flag over file)", got.Addr, "127.0.0.1:9100"},
		{"public_ip (flag over file)", strings.Join(got.PublicIPs, ","), "198.51.100.7"},
		{"tcp_ports (file)", got.TCPPorts, "30000-30099"},
		{"udp_ports (default)", got.UDPPorts, configs.DefaultServer().UDPPorts},
		{"body_timeout (file)", time.Duration(got.BodyTimeout).String(), "45s"},
		{"metrics_addr (file)", got.MetricsAddr, "127.0.0.1:9999"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.what, c.got, c.want)
		}
	}
	if got.MaxConns != 0 {
		t.Errorf("max_conns: got %d, want the flag's 0 over the file's 7", got.MaxConns)
	}

	// beam daemon: settings the file gives replace the stored ones, as
	// flags do; a flag still wins.
	dpath := writeConfig(t, `{"socks5": "127.0.0.1:1081", "hostname": "filehost", "log_level": "debug"}`)
	var d *DaemonOptions
	dcmd := checkNodeFlags(NewCmdDaemon(f, &instanceFlags{state: t.TempDir()}, func(o *DaemonOptions) error { d = o; return nil }))
	quiet(dcmd, []string{"--config", dpath, "--log-level", "warn"})
	if err := dcmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if d.Hostname != "filehost" || d.LogLevel != "warn" || d.Prefs.SOCKS5 == nil || *d.Prefs.SOCKS5 != "127.0.0.1:1081" || d.Prefs.HTTPProxy != nil {
		t.Errorf("daemon: hostname %q log_level %q prefs %+v; want filehost, warn, socks5 from the file only", d.Hostname, d.LogLevel, d.Prefs)
	}
}

// TestUpConfig: beam up --config fills the join's settings and the
// daemon settings it passes on from the file, a flag wins over it, and
// the file's state and socket apply unless beam's flags name them.
func TestUpConfig(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard, Getenv: func(string) string { return "" }}
	dir := t.TempDir()
	path := writeConfig(t, fmt.Sprintf(`{
		"state": %q,
		"socket": %q,
		"coordinator": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"],
		"authkey": "beamkey-from-file",
		"hostname": "filehost",
		"shields_up": true,
		"timeout": "45s",
		"socks5": "127.0.0.1:1081",
		"dns_upstream": ["192.0.2.53"],
		"relay_server": "off",
	}`, filepath.Join(dir, "state"), filepath.Join(dir, "beam.sock")))
	run := func(in *instanceFlags, args ...string) *UpOptions {
		t.Helper()
		var got *UpOptions
		cmd := checkNodeFlags(NewCmdUp(f, in, func(o *UpOptions) error { got = o; return nil }))
		quiet(cmd, append([]string{"--config", path}, args...))
		if err := cmd.Execute(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	o := run(&instanceFlags{}, "--hostname", "flaghost", "--http-proxy", "127.0.0.1:8118")
	for _, c := range []struct{ what, got, want string }{
		{"coordinator (file)", o.Coordinator, "http://127.0.0.1:9001,http://127.0.0.1:9002"},
		{"authkey (file)", o.AuthKey, "beamkey-from-file"},
		{"hostname (flag over file)", o.Hostname, "flaghost"},
		{"timeout (file)", o.Timeout.String(), "45s"},
		{"state (file)", o.Daemon.StateDir, filepath.Join(dir, "state")},
		{"socket (file)", o.Daemon.Socket, filepath.Join(dir, "beam.sock")},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.what, c.got, c.want)
		}
	}
	p := o.Daemon.Prefs
	if !o.ShieldsUp || !o.shieldsUpSet || p.SOCKS5 == nil || *p.SOCKS5 != "127.0.0.1:1081" || p.HTTPProxy == nil || *p.HTTPProxy != "127.0.0.1:8118" ||
		p.DNSUpstreams == nil || strings.Join(*p.DNSUpstreams, ",") != "192.0.2.53" || p.RelayServer == nil || *p.RelayServer || p.DNSListen != nil {
		t.Errorf("shields_up %v (set %v), prefs %+v; want shields up, socks5, dns_upstream and relay_server from the file, http_proxy from the flag, nothing else", o.ShieldsUp, o.shieldsUpSet, p)
	}
	// beam's --state and --socket win over the file's.
	o = run(&instanceFlags{state: filepath.Join(dir, "other")})
	if o.Daemon.StateDir != filepath.Join(dir, "other") || o.Daemon.Socket != filepath.Join(dir, "beam.sock") {
		t.Errorf("state %q socket %q; want --state's and the file's socket", o.Daemon.StateDir, o.Daemon.Socket)
	}
}

// TestConfigFileRefused: each role's command refuses an unknown key
// naming it, and a bad value naming its key, before it runs.
func TestConfigFileRefused(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	ran := false
	for _, tc := range []struct {
		cmd, body string
		want      []string
	}{
		{"server", "{\"domain\": \"a.test\",\n\"tcp_port\": \"1-2\"}", []string{`unknown key "tcp_port"`, ":2:"}},
		{"server", `{"domain": "a.test", "tcp_ports": "9-1"}`, []string{"tcp_ports", "9-1"}},
		{"server", `{"domain": "a.test", "max_conns": "lots"}`, []string{"max_conns", "integer"}},
		{"coordinator", `{"edge_domain": "A..b"}`, []string{"edge_domain"}},
		{"coordinator", `{"edge": {"domain": "a.test"}}`, []string{`unknown key "edge"`}},
		{"derp", `{"mesh_with": ["relay2:3340"]}`, []string{"mesh_with"}},
		{"edge", `{"coordinator": "http://127.0.0.1:1", "domain": "a.test", "bind_host": "x"}`, []string{"bind_host"}},
		{"daemon", `{"socks5": "0.0.0.0:1080"}`, []string{"socks5", "loopback"}},
		{"daemon", `{"sock5": "127.0.0.1:1080"}`, []string{`unknown key "sock5"`}},
		{"up", `{"socks5": "0.0.0.0:1080"}`, []string{"socks5", "loopback"}},
		{"up", `{"coordinator": ["ftp://x"]}`, []string{"coordinator"}},
		{"up", `{"timeout": "soon"}`, []string{"timeout"}},
		{"up", `{"port_mapping": true}`, []string{`unknown key "port_mapping"`, "known keys"}},
		{"up", `{"force_reauth": true}`, []string{`unknown key "force_reauth"`}},
	} {
		t.Run(tc.cmd+" "+tc.body, func(t *testing.T) {
			ran = false
			mark := func() error { ran = true; return nil }
			cmd := map[string]func() *cobra.Command{
				"server":      func() *cobra.Command { return NewCmdServer(f, func(*ServerOptions) error { return mark() }) },
				"coordinator": func() *cobra.Command { return NewCmdCoordinator(f, func(*CoordinatorOptions) error { return mark() }) },
				"derp":        func() *cobra.Command { return NewCmdDERP(f, func(*DERPOptions) error { return mark() }) },
				"edge": func() *cobra.Command {
					return NewCmdEdge(f, &instanceFlags{state: t.TempDir()}, func(*EdgeOptions) error { return mark() })
				},
				"daemon": func() *cobra.Command {
					return NewCmdDaemon(f, &instanceFlags{state: t.TempDir()}, func(*DaemonOptions) error { return mark() })
				},
				"up": func() *cobra.Command {
					return NewCmdUp(f, &instanceFlags{state: t.TempDir()}, func(*UpOptions) error { return mark() })
				},
			}[tc.cmd]()
			quiet(cmd, nil)
			cmd.SetArgs([]string{"--config", writeConfig(t, tc.body)})
			err := cmd.Execute()
			if err == nil || ran {
				t.Fatalf("accepted (ran %v, err %v), want it refused", ran, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q does not name %q", err, w)
				}
			}
		})
	}
}

// TestExampleConfigsRun: each role's command takes its example file
// from configs/ and fills its settings from it.
func TestExampleConfigsRun(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	dir := filepath.Join("..", "..", "..", "configs")
	var s *ServerOptions
	sc := NewCmdServer(f, func(o *ServerOptions) error { s = o; return nil })
	quiet(sc, []string{"--config", filepath.Join(dir, "server.hujson")})
	if err := sc.Execute(); err != nil || s.Domain != "beam.example.com" || len(s.PublicIPs) != 1 {
		t.Errorf("server.hujson: err %v, got %+v", err, s)
	}
	var c *CoordinatorOptions
	cc := NewCmdCoordinator(f, func(o *CoordinatorOptions) error { c = o; return nil })
	quiet(cc, []string{"--config", filepath.Join(dir, "coordinator.hujson")})
	if err := cc.Execute(); err != nil || c.CoordinatorEdge.Domain != "beam.example.com" || c.PolicyFile == "" {
		t.Errorf("coordinator.hujson: err %v, got %+v", err, c)
	}
	var d *DERPOptions
	dc := NewCmdDERP(f, func(o *DERPOptions) error { d = o; return nil })
	quiet(dc, []string{"--config", filepath.Join(dir, "derp.hujson")})
	if err := dc.Execute(); err != nil || d.StateDir != "/var/lib/beam-derp" {
		t.Errorf("derp.hujson: err %v, got %+v", err, d)
	}
	var e *EdgeOptions
	ec := NewCmdEdge(f, &instanceFlags{}, func(o *EdgeOptions) error { e = o; return nil })
	quiet(ec, []string{"--config", filepath.Join(dir, "edge.hujson")})
	if err := ec.Execute(); err != nil || e.StateDir != "/var/lib/beam-edge" || e.Domain != "beam.example.com" {
		t.Errorf("edge.hujson: err %v, got %+v", err, e)
	}
}

// TestConfigDefaultsMatchComponents: the defaults configs may not import
// are the components' own.
func TestConfigDefaultsMatchComponents(t *testing.T) {
	if time.Duration(configs.DefaultBodyTimeout) != edge.DefaultBodyTimeout {
		t.Errorf("configs.DefaultBodyTimeout %v, edge's %v", time.Duration(configs.DefaultBodyTimeout), edge.DefaultBodyTimeout)
	}
	if configs.DefaultBaseDomain != coordinator.DefaultBaseDomain {
		t.Errorf("configs.DefaultBaseDomain %q, coordinator's %q", configs.DefaultBaseDomain, coordinator.DefaultBaseDomain)
	}
}

// TestLoadTunnels: the example tunnels file becomes the requests beam
// expose sends for the same flags; a bad option is refused naming its
// tunnel, and a TARGET or route flag next to --config is refused.
func TestLoadTunnels(t *testing.T) {
	ts, err := loadTunnels(filepath.Join("..", "..", "..", "configs", "beam.hujson"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tu := range ts {
		got = append(got, fmt.Sprintf("%s:%s:%s:%d:%s", tu.label, tu.req.Proto, tu.req.Name, tu.req.Port, tu.req.Upstream))
	}
	want := "api:http:api:8443:https://localhost:8443 db:tcp::5432: web:http:web:3000:"
	if strings.Join(got, " ") != want {
		t.Errorf("got %s, want %s", strings.Join(got, " "), want)
	}
	if web := ts[2].req; len(web.Options.BasicAuth) != 1 || !web.Inspect {
		t.Errorf("web options = %+v, inspect %v", web.Options, web.Inspect)
	}
	for body, want := range map[string]string{
		`{"tunnels": {"a": {"port": 1, "basic_auth": ["nopass"]}}}`:   `tunnel "a": --basic-auth "nopass"`,
		`{"tunnels": {"b": {"target": "ftp://x:1"}}}`:                 `tunnel "b": bad target`,
		`{"tunnels": {"c": {"port": 1, "udp": true, "target": "1"}}}`: `tunnel "c": give port or target`,
		`{"tunnels": {"d": {"port": 1, "rate": "1/s"}}}`:              `unknown key "rate"`,
		`{"tunnel": {}}`: `unknown key "tunnel"`,
	} {
		if _, err := loadTunnels(writeConfig(t, body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", body, err, want)
		}
	}
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	for _, args := range [][]string{{"--config", "x.hujson", "3000"}, {"--config", "x.hujson", "--tcp"}} {
		ran := false
		cmd := NewCmdExpose(f, &instanceFlags{}, func(*ExposeOptions) error { ran = true; return nil })
		quiet(cmd, args)
		if err := cmd.Execute(); err == nil || ran {
			t.Errorf("%v: accepted (err %v)", args, err)
		}
	}
}

// TestDaemonConfigStateSocket: a daemon file's state and socket apply
// unless beam's --state/--socket (or BEAM_STATE/BEAM_SOCKET) name them.
func TestDaemonConfigStateSocket(t *testing.T) {
	env := map[string]string{}
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard, Getenv: func(k string) string { return env[k] }}
	dir := t.TempDir()
	path := writeConfig(t, fmt.Sprintf(`{"state": %q, "socket": %q}`, filepath.Join(dir, "st"), filepath.Join(dir, "d.sock")))
	for _, tc := range []struct {
		name              string
		in                instanceFlags
		env               map[string]string
		wantState, wantSo string
	}{
		{"file", instanceFlags{}, nil, filepath.Join(dir, "st"), filepath.Join(dir, "d.sock")},
		{"flags win", instanceFlags{state: "/flag/st", socket: "/flag/s.sock"}, nil, "/flag/st", "/flag/s.sock"},
		{"env wins", instanceFlags{}, map[string]string{"BEAM_STATE": "/env/st", "BEAM_SOCKET": "/env/s.sock"}, "/env/st", "/env/s.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env = tc.env
			var got *DaemonOptions
			in := tc.in
			cmd := NewCmdDaemon(f, &in, func(o *DaemonOptions) error { got = o; return nil })
			quiet(cmd, []string{"--config", path})
			if err := cmd.Execute(); err != nil {
				t.Fatal(err)
			}
			if got.StateDir != tc.wantState || got.Socket != tc.wantSo {
				t.Errorf("state %q socket %q, want %q %q", got.StateDir, got.Socket, tc.wantState, tc.wantSo)
			}
		})
	}
}

// TestConfigSecretModeWarning: a config file that holds an auth key and
// that group or others may read gets a warning naming the file and the
// fix, as ssh warns of a readable private key; the command still runs.
func TestConfigSecretModeWarning(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  string // up or edge
		body string
		mode os.FileMode
		warn bool
	}{
		{"up authkey 0644", "up", `{"authkey": "beamkey-x"}`, 0o644, true},
		{"up authkey 0640", "up", `{"authkey": "beamkey-x"}`, 0o640, true},
		{"up authkey 0604", "up", `{"authkey": "beamkey-x"}`, 0o604, true},
		{"up authkey 0600", "up", `{"authkey": "beamkey-x"}`, 0o600, false},
		{"up authkey 0400", "up", `{"authkey": "beamkey-x"}`, 0o400, false},
		{"up no secret 0644", "up", `{"hostname": "h"}`, 0o644, false},
		{"edge authkey 0644", "edge", `{"authkey": "beamkey-x", "domain": "example.test"}`, 0o644, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.body)
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			var errOut strings.Builder
			f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: &errOut, Getenv: func(string) string { return "" }}
			dir := t.TempDir()
			in := &instanceFlags{state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "beam.sock")}
			ran := false
			var cmd *cobra.Command
			switch tc.cmd {
			case "up":
				cmd = NewCmdUp(f, in, func(*UpOptions) error { ran = true; return nil })
			case "edge":
				cmd = NewCmdEdge(f, in, func(*EdgeOptions) error { ran = true; return nil })
			}
			quiet(cmd, []string{"--config", path})
			if err := cmd.Execute(); err != nil {
				t.Fatal(err)
			}
			if !ran {
				t.Fatal("command did not run")
			}
			got := errOut.String()
			if !tc.warn {
				if got != "" {
					t.Fatalf("stderr %q, want nothing", got)
				}
				return
			}
			for _, want := range []string{"warning: config " + path, "authkey", "readable by group or others", fmt.Sprintf("%04o", tc.mode), "chmod 600 " + path} {
				if !strings.Contains(got, want) {
					t.Errorf("stderr %q does not say %q", got, want)
				}
			}
		})
	}
}
