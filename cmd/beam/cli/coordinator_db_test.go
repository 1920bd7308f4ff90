package cli

import (
	"io"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/configs"
)

// TestDBFlagAndKey: beam coordinator and beam server take the database
// from the config key db or the flag --db, the flag winning, and refuse a
// URL that is not PostgreSQL's without showing its password.
func TestDBFlagAndKey(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	const file = "postgres://beam@db.example.test:5432/file"
	const flag = "postgres://beam@db.example.test:5432/flag"
	cpath := writeConfig(t, `{"db": "`+file+`"}`)
	spath := writeConfig(t, `{"db": "`+file+`", "domain": "a.example"}`)
	for _, tc := range []struct {
		name         string
		cargs, sargs []string
		want         string
	}{
		{"file", []string{"--config", cpath}, []string{"--config", spath}, file},
		{"flag over file", []string{"--config", cpath, "--db", flag}, []string{"--config", spath, "--db", flag}, flag},
		{"neither", nil, []string{"--domain", "a.example"}, ""},
	} {
		var co *CoordinatorOptions
		cc := NewCmdCoordinator(f, func(o *CoordinatorOptions) error { co = o; return nil })
		quiet(cc, tc.cargs)
		var so *ServerOptions
		sc := NewCmdServer(f, func(o *ServerOptions) error { so = o; return nil })
		quiet(sc, tc.sargs)
		if err := cc.Execute(); err != nil {
			t.Fatalf("%s: coordinator: %v", tc.name, err)
		}
		if err := sc.Execute(); err != nil {
			t.Fatalf("%s: server: %v", tc.name, err)
		}
		if co.DB != tc.want || so.DB != tc.want {
			t.Errorf("%s: coordinator db %q, server db %q; want %q", tc.name, co.DB, so.DB, tc.want)
		}
	}
	for _, db := range []string{"sqlite:///var/lib/beam/c.db", "postgres://beam:s3cret@/nohost"} {
		cc := NewCmdCoordinator(f, func(*CoordinatorOptions) error { return nil })
		quiet(cc, []string{"--db", db})
		err := cc.Execute()
		if err == nil || !strings.Contains(err.Error(), "--db") || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("--db %s: %v; want an error naming --db without the password", db, err)
		}
	}
}

// TestKeepAliveFlagAndKey: beam coordinator takes the map streams'
// keepalive from --keepalive or the config key keepalive, and refuses one
// outside 1s-5m naming both.
func TestKeepAliveFlagAndKey(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	path := writeConfig(t, `{"keepalive": "2s"}`)
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 0},
		{[]string{"--config", path}, 2 * time.Second},
		{[]string{"--config", path, "--keepalive", "10s"}, 10 * time.Second},
	} {
		var co *CoordinatorOptions
		cc := NewCmdCoordinator(f, func(o *CoordinatorOptions) error { co = o; return nil })
		quiet(cc, tc.args)
		if err := cc.Execute(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := time.Duration(co.KeepAlive); got != tc.want {
			t.Errorf("%v: keepalive %v, want %v", tc.args, got, tc.want)
		}
	}
	for _, bad := range []string{"500ms", "10m", "-1s"} {
		cc := NewCmdCoordinator(f, func(*CoordinatorOptions) error { return nil })
		quiet(cc, []string{"--keepalive", bad})
		if err := cc.Execute(); err == nil || !strings.Contains(err.Error(), "--keepalive") || !strings.Contains(err.Error(), "config key keepalive") {
			t.Errorf("--keepalive %s: %v; want an error naming the flag and the key", bad, err)
		}
	}
}

// TestReplicaTimesFlagsAndKeys: beam coordinator takes the stale time of
// replicas' heartbeats and the unknown timeout from --stale-after and
// --unknown-timeout or the config keys stale_after and unknown_timeout,
// the flag winning, and refuses values out of bounds naming the flag and
// the key.
func TestReplicaTimesFlagsAndKeys(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	path := writeConfig(t, `{"stale_after": "20s", "unknown_timeout": "30s"}`)
	for _, tc := range []struct {
		args             []string
		stale, unknownTO time.Duration
	}{
		{nil, 0, 0},
		{[]string{"--config", path}, 20 * time.Second, 30 * time.Second},
		{[]string{"--config", path, "--stale-after", "6s"}, 6 * time.Second, 30 * time.Second},
		{[]string{"--unknown-timeout", "24h"}, 0, 24 * time.Hour},
	} {
		var co *CoordinatorOptions
		cc := NewCmdCoordinator(f, func(o *CoordinatorOptions) error { co = o; return nil })
		quiet(cc, tc.args)
		if err := cc.Execute(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := time.Duration(co.StaleAfter); got != tc.stale {
			t.Errorf("%v: stale after %v, want %v", tc.args, got, tc.stale)
		}
		if got := time.Duration(co.UnknownTimeout); got != tc.unknownTO {
			t.Errorf("%v: unknown timeout %v, want %v", tc.args, got, tc.unknownTO)
		}
	}
	for _, bad := range []struct{ flag, v string }{
		{"--stale-after", "5s"}, {"--stale-after", "11m"}, {"--stale-after", "-1s"},
		{"--unknown-timeout", "4s"}, {"--unknown-timeout", "25h"}, {"--unknown-timeout", "-5s"},
	} {
		cc := NewCmdCoordinator(f, func(*CoordinatorOptions) error { return nil })
		quiet(cc, []string{bad.flag, bad.v})
		key := "config key " + strings.ReplaceAll(strings.TrimPrefix(bad.flag, "--"), "-", "_")
		if err := cc.Execute(); err == nil || !strings.Contains(err.Error(), bad.flag) || !strings.Contains(err.Error(), key) {
			t.Errorf("%s %s: %v; want an error naming the flag and %s", bad.flag, bad.v, err, key)
		}
	}
}

// TestServerReplicaTimesFlagsAndKeys: beam server takes --keepalive,
// --stale-after and --unknown-timeout (config keys keepalive, stale_after
// and unknown_timeout) as beam coordinator does, the flag winning, and
// refuses the same values out of bounds naming the flag and the key.
func TestServerReplicaTimesFlagsAndKeys(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	path := writeConfig(t, `{"domain": "beam.example.com", "keepalive": "2s", "stale_after": "20s", "unknown_timeout": "30s"}`)
	dom := []string{"--domain", "beam.example.com"}
	for _, tc := range []struct {
		args                        []string
		keepalive, stale, unknownTO time.Duration
	}{
		{dom, 0, 0, 0},
		{[]string{"--config", path}, 2 * time.Second, 20 * time.Second, 30 * time.Second},
		{[]string{"--config", path, "--keepalive", "10s", "--stale-after", "6s"}, 10 * time.Second, 6 * time.Second, 30 * time.Second},
		{append([]string{"--unknown-timeout", "24h", "--stale-after", "10m", "--keepalive", "5m"}, dom...), 5 * time.Minute, 10 * time.Minute, 24 * time.Hour},
	} {
		var so *ServerOptions
		sc := NewCmdServer(f, func(o *ServerOptions) error { so = o; return nil })
		quiet(sc, tc.args)
		if err := sc.Execute(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := time.Duration(so.KeepAlive); got != tc.keepalive {
			t.Errorf("%v: keepalive %v, want %v", tc.args, got, tc.keepalive)
		}
		if got := time.Duration(so.StaleAfter); got != tc.stale {
			t.Errorf("%v: stale after %v, want %v", tc.args, got, tc.stale)
		}
		if got := time.Duration(so.UnknownTimeout); got != tc.unknownTO {
			t.Errorf("%v: unknown timeout %v, want %v", tc.args, got, tc.unknownTO)
		}
		if st := replicaStore(&so.ReplicaTimes); st.StaleAfter != tc.stale || st.UnknownTimeout != tc.unknownTO {
			t.Errorf("%v: store options %+v, want stale after %v, unknown timeout %v", tc.args, st, tc.stale, tc.unknownTO)
		}
	}
	for _, bad := range []struct{ flag, v string }{
		{"--keepalive", "500ms"}, {"--keepalive", "6m"}, {"--keepalive", "-1s"},
		{"--stale-after", "5s"}, {"--stale-after", "11m"}, {"--stale-after", "-1s"},
		{"--unknown-timeout", "4s"}, {"--unknown-timeout", "25h"}, {"--unknown-timeout", "-5s"},
	} {
		sc := NewCmdServer(f, func(*ServerOptions) error { return nil })
		quiet(sc, append([]string{bad.flag, bad.v}, dom...))
		key := "config key " + configs.FlagKey(bad.flag)
		if err := sc.Execute(); err == nil || !strings.Contains(err.Error(), bad.flag) || !strings.Contains(err.Error(), key) {
			t.Errorf("%s %s: %v; want an error naming the flag and %s", bad.flag, bad.v, err, key)
		}
	}
	// A bad value in the file is refused too, naming the flag and key.
	badFile := writeConfig(t, `{"domain": "beam.example.com", "stale_after": "3s"}`)
	sc := NewCmdServer(f, func(*ServerOptions) error { return nil })
	quiet(sc, []string{"--config", badFile})
	if err := sc.Execute(); err == nil || !strings.Contains(err.Error(), "--stale-after") || !strings.Contains(err.Error(), "config key stale_after") {
		t.Errorf("stale_after 3s in the file: %v; want an error naming the flag and the key", err)
	}
}

// TestOnlineGraceFlagAndKey: beam coordinator and beam server take the
// online grace from --online-grace or the config key online_grace, the
// flag winning, and refuse values out of bounds naming the flag and the
// key.
func TestOnlineGraceFlagAndKey(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	path := writeConfig(t, `{"online_grace": "20s"}`)
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 0},
		{[]string{"--config", path}, 20 * time.Second},
		{[]string{"--config", path, "--online-grace", "2m"}, 2 * time.Minute},
	} {
		var co *CoordinatorOptions
		cc := NewCmdCoordinator(f, func(o *CoordinatorOptions) error { co = o; return nil })
		quiet(cc, tc.args)
		if err := cc.Execute(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := time.Duration(co.OnlineGrace); got != tc.want {
			t.Errorf("%v: online grace %v, want %v", tc.args, got, tc.want)
		}
	}
	var so *ServerOptions
	sc := NewCmdServer(f, func(o *ServerOptions) error { so = o; return nil })
	quiet(sc, []string{"--domain", "beam.example.com", "--online-grace", "30s"})
	if err := sc.Execute(); err != nil || time.Duration(so.OnlineGrace) != 30*time.Second {
		t.Errorf("beam server --online-grace 30s: %v; want 30s", err)
	}
	for _, v := range []string{"11s", "11m", "-1s"} {
		cc := NewCmdCoordinator(f, func(*CoordinatorOptions) error { return nil })
		quiet(cc, []string{"--online-grace", v})
		if err := cc.Execute(); err == nil || !strings.Contains(err.Error(), "--online-grace") || !strings.Contains(err.Error(), "config key online_grace") {
			t.Errorf("--online-grace %s: %v; want an error naming the flag and the key", v, err)
		}
	}
}
