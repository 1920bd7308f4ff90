package configs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestExampleFiles decodes and validates every example config, so they
// cannot drift from the types.
func TestExampleFiles(t *testing.T) {
	for _, tc := range []struct {
		file string
		cfg  interface{ Validate() error }
		keys int // at least this many keys set
	}{
		{"server.hujson", ptr(DefaultServer()), 10},
		{"coordinator.hujson", ptr(DefaultCoordinator()), 5},
		{"derp.hujson", ptr(DefaultDERP()), 4},
		{"edge.hujson", ptr(DefaultEdge()), 5},
		{"daemon.hujson", ptr(DefaultDaemon()), 3},
		{"beam.hujson", &Tunnels{}, 1},
	} {
		t.Run(tc.file, func(t *testing.T) {
			keys, err := LoadFile(tc.file, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) < tc.keys {
				t.Errorf("got %d keys, want at least %d", len(keys), tc.keys)
			}
			if err := tc.cfg.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
	var tu Tunnels
	if _, err := LoadFile("beam.hujson", &tu); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tu.Labels(), ","); got != "api,db,web" {
		t.Errorf("tunnels = %s, want api,db,web", got)
	}
	if tu.Tunnels["db"].Port != 5432 || !tu.Tunnels["db"].TCP {
		t.Errorf("db = %+v", tu.Tunnels["db"])
	}
}

func ptr[T any](v T) *T { return &v }

func TestDecode(t *testing.T) {
	s := DefaultServer()
	keys, err := Decode("s.hujson", []byte("{\n// a comment\n\"domain\": \"b.example\",\n\"body_timeout\": \"1m\",\n\"public_ip\": [\"192.0.2.1\",],\n}"), &s)
	if err != nil {
		t.Fatal(err)
	}
	if s.Domain != "b.example" || time.Duration(s.BodyTimeout) != time.Minute || len(s.PublicIPs) != 1 {
		t.Errorf("got %+v", s)
	}
	if s.Addr != ":8080" || s.LogLevel != "info" {
		t.Errorf("absent keys lost their defaults: addr %q log_level %q", s.Addr, s.LogLevel)
	}
	if !keys["domain"] || !keys["public_ip"] || keys["addr"] {
		t.Errorf("keys = %v", keys)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		v        any
		key      string // the error must name it (as a FileError's Key)
		line     int
		want     string
	}{
		{"unknown", "{\n\"domain\": \"a.test\",\n\"domian\": \"x\"\n}", &Server{}, "domian", 3, `unknown key "domian"`},
		{"case", "{\n\"Domain\": \"a.test\"\n}", &Server{}, "Domain", 2, `unknown key "Domain"`},
		{"nested unknown", "{\"tunnels\": {\"web\": {\n\"port\": 1,\n\"prot\": 2}}}", &Tunnels{}, "prot", 3, `unknown key "prot"`},
		{"type", "{\n\"max_conns\": \"many\"\n}", &Server{}, "max_conns", 2, "want an integer"},
		{"port range", "{\"https_redirect_port\": 70000}", &Server{}, "https_redirect_port", 1, "0-65535"},
		{"duplicate", "{\"addr\": \":1\",\n\"addr\": \":2\"}", &Server{}, "addr", 2, "twice"},
		{"syntax", "{\n\"addr\": \n}", &Server{}, "", 3, "syntax error"},
		{"not object", "[1]", &Server{}, "", 1, "want one object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode("f.hujson", []byte(tc.in), tc.v)
			fe, ok := errors.AsType[*FileError](err)
			if !ok {
				t.Fatalf("err = %v, want a *FileError", err)
			}
			if fe.Key != tc.key || fe.Line != tc.line || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "f.hujson") {
				t.Errorf("got %q (key %q line %d), want key %q line %d and %q", err, fe.Key, fe.Line, tc.key, tc.line, tc.want)
			}
		})
	}
	// A bad duration names its key.
	s := DefaultServer()
	if _, err := Decode("f", []byte(`{"body_timeout": "soon"}`), &s); err == nil || !strings.Contains(err.Error(), "body_timeout") {
		t.Errorf("bad duration: err = %v, want it to name body_timeout", err)
	}
}

// TestValidateNamesKey: a bad value is refused naming both its flag and
// its config key.
func TestValidateNamesKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  interface{ Validate() error }
		want []string
	}{
		{"server tcp_ports", &Server{Domain: "a.test", Addr: ":1", TCPPorts: "9-1"}, []string{"--tcp-ports", "tcp_ports"}},
		{"server public_ip", &Server{Domain: "a.test", Addr: ":1", Zone: Zone{PublicIPs: []string{"x"}}}, []string{"--public-ip", "public_ip"}},
		{"server body_timeout", &Server{Domain: "a.test", Addr: ":1", BodyTimeout: -1}, []string{"body_timeout"}},
		{"coordinator edge_domain", &Coordinator{Addr: ":1", BaseDomain: "b.test", CoordinatorEdge: CoordinatorEdge{Domain: "A..b"}}, []string{"edge_domain"}},
		{"edge tls", &Edge{Domain: "a.test", TLSCert: "c.pem"}, []string{"tls_cert"}},
		{"server node_rate", &Server{Domain: "a.test", Addr: ":1", NodeRate: -2}, []string{"--node-rate", "node_rate", "-1 for no limit"}},
		{"coordinator node_rate", &Coordinator{Addr: ":1", BaseDomain: "b.test", NodeRate: 2_000_000}, []string{"--node-rate", "node_rate"}},
		{"coordinator oidc_max_sign_ins", &Coordinator{Addr: ":1", BaseDomain: "b.test", OIDC: OIDC{OIDCProvider: OIDCProvider{MaxSignIns: -2}}}, []string{"--oidc-max-sign-ins", "oidc_max_sign_ins"}},
		{"server per address over total", &Server{Domain: "a.test", Addr: ":1", OIDC: OIDC{OIDCProvider: OIDCProvider{MaxSignIns: 10, MaxSignInsPerAddress: 11}}}, []string{"oidc_max_sign_ins_per_address", "at most --oidc-max-sign-ins (10)"}},
		{"edge oidc_max_sign_ins_per_address", &Edge{Domain: "a.test", OIDCProvider: OIDCProvider{MaxSignInsPerAddress: -7}}, []string{"--oidc-max-sign-ins-per-address"}},
		{"derp addr", &DERP{Addr: "x"}, []string{"--addr", "addr"}},
		{"daemon socks5", &Daemon{SOCKS5: "0.0.0.0:1080"}, []string{"socks5"}},
		{"tunnels none", &Tunnels{}, []string{"none given"}},
		{"tunnel two protos", &Tunnels{Tunnels: map[string]Tunnel{"a": {Port: 1, TCP: true, UDP: true}}}, []string{`tunnel "a"`, "one of tcp"}},
		{"tunnel no port", &Tunnels{Tunnels: map[string]Tunnel{"a": {}}}, []string{`tunnel "a"`, "port or target"}},
		{"tunnel label", &Tunnels{Tunnels: map[string]Tunnel{"a.b": {Port: 1}}}, []string{`tunnel "a.b"`, "label"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if err == nil {
				t.Fatal("valid, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to name %q", err, w)
				}
			}
		})
	}
	for name, c := range map[string]interface{ Validate() error }{
		"server": &Server{Domain: "a.test", Addr: ":1"}, "coordinator": ptr(DefaultCoordinator()), "derp": ptr(DefaultDERP()),
		"daemon": ptr(DefaultDaemon()), "edge": &Edge{Domain: "a.test"},
		"no limits": &Coordinator{Addr: ":1", BaseDomain: "b.test", NodeRate: -1, MachineRate: -1, OIDC: OIDC{OIDCProvider: OIDCProvider{MaxSignIns: -1, MaxSignInsPerAddress: -1}}},
		"caps":      &Server{Domain: "a.test", Addr: ":1", NodeRate: 50, OIDC: OIDC{OIDCProvider: OIDCProvider{MaxSignIns: 100, MaxSignInsPerAddress: 100}}},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzDecode: no input makes Decode panic, and what it accepts it
// accepts again after a round trip through its keys.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"domain": "a.test", /* c */ "public_ip": ["192.0.2.1",],}`))
	f.Add([]byte(`{"tunnels": {"web": {"port": 3000}}}`))
	f.Add([]byte(`{"max_conns": 1e99}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := DefaultServer()
		Decode("f", b, &s)
		var tu Tunnels
		Decode("f", b, &tu)
	})
}

func TestCopyAndChangedKeys(t *testing.T) {
	a, b := DefaultServer(), DefaultServer()
	b.Domain, b.LogLevel, b.PublicIPs, b.MetricsAddr = "b.test", "debug", []string{"192.0.2.1"}, "127.0.0.1:1"
	if got := strings.Join(ChangedKeys(&a, &b), ","); got != "domain,log_level,metrics_addr,public_ip" {
		t.Errorf("ChangedKeys = %s", got)
	}
	CopyKeys(&a, &b, []string{"public_ip", "metrics_addr", "no_such_key"})
	if a.MetricsAddr != "127.0.0.1:1" || len(a.PublicIPs) != 1 || a.Domain != "" {
		t.Errorf("after CopyKeys: %+v", a)
	}
}

// TestREADMEConfigs decodes the README's ```hujson examples: a server
// config and a tunnels file, so they cannot drift from the types.
func TestREADMEConfigs(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, part := range strings.Split(string(b), "```hujson\n")[1:] {
		blk, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatal("unclosed ```hujson block")
		}
		blocks = append(blocks, blk)
	}
	if len(blocks) < 2 {
		t.Fatalf("%d hujson blocks in the README, want a server config and a tunnels file", len(blocks))
	}
	for i, blk := range blocks {
		var cfg interface{ Validate() error }
		if strings.Contains(blk, `"tunnels"`) {
			cfg = &Tunnels{}
		} else {
			cfg = ptr(DefaultServer())
		}
		if _, err := Decode(fmt.Sprintf("README block %d", i+1), []byte(blk), cfg); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("README block %d: %v", i+1, err)
		}
	}
}

// TestValidateDB: --db (key db) is empty or a PostgreSQL URL, and a bad
// one is refused without its password.
func TestValidateDB(t *testing.T) {
	for _, tc := range []struct {
		db string
		ok bool
	}{
		{"", true},
		{"postgres://beam:pw@db.example.test:5432/beam?sslmode=require", true},
		{"postgresql://beam@/beam?host=/run/postgresql", true},
		{"postgres://beam:s3cret@db.example.test/beam", true},
		{"/var/lib/beam/coordinator.db", false},
		{"mysql://beam:s3cret@db.example.test/beam", false},
		{"postgres://beam:s3cret@db.example.test:99999/beam", false},
		{"postgres://beam:s3cret@/beam", false},
		{"postgres://beam:s3cret@[::1/beam", false},
	} {
		t.Run(tc.db, func(t *testing.T) {
			co := DefaultCoordinator()
			co.DB = tc.db
			s := Server{Domain: "a.test", Addr: ":1", DB: tc.db}
			for name, cfg := range map[string]interface{ Validate() error }{"coordinator": &co, "server": &s} {
				err := cfg.Validate()
				if (err == nil) != tc.ok {
					t.Fatalf("%s: err = %v, want ok %v", name, err, tc.ok)
				}
				if err == nil {
					continue
				}
				if !strings.Contains(err.Error(), "--db") || !strings.Contains(err.Error(), "config key db") {
					t.Errorf("%s: err = %q, want it to name --db and key db", name, err)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("%s: err = %q shows the password", name, err)
				}
			}
		})
	}
}

func TestRedactDB(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://beam:s3cret@db.example.test:5432/beam", "postgres://beam:xxxxx@db.example.test:5432/beam"},
		{"postgres://beam@db.example.test/beam?password=s3cret&sslmode=require", "postgres://beam@db.example.test/beam?password=xxxxx&sslmode=require"},
		{"postgres://beam:s3cret@[::1/beam", "postgres://beam:xxxxx@[::1/beam"},
		{"postgres://beam@db.example.test/beam", "postgres://beam@db.example.test/beam"},
		{"postgres://beam:s3cret@db.example.test/beam?sslpassword=k3y", "postgres://beam:xxxxx@db.example.test/beam?sslpassword=xxxxx"},
	} {
		if got := RedactDB(tc.in); got != tc.want {
			t.Errorf("RedactDB(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
