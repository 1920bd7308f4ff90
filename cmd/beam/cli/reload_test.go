//go:build unix

package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/configs"
)

// syncBuffer is a log sink tests can read while a goroutine writes.
type syncBuffer struct {
	mu   sync.Mutex
	b    bytes.Buffer
	grew chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	select {
	case s.grew <- struct{}{}:
	default:
	}
	return n, err
}

// waitFor waits until the log holds want, or fails after d.
func (s *syncBuffer) waitFor(t *testing.T, want string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		s.mu.Lock()
		ok := strings.Contains(s.b.String(), want)
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.grew:
		case <-deadline:
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("log has no %q after %v:\n%s", want, d, s.b.String())
		}
	}
}

// TestSIGHUPReload sends this process SIGHUP: a file with an unknown key
// or a bad value is refused and the running config stays; a good one is
// applied, the log naming what was reloaded and what needs a restart; a
// flag given at start still wins over the file.
func TestSIGHUPReload(t *testing.T) {
	path := writeConfig(t, `{"addr": "127.0.0.1:1", "log_level": "info", "policy_file": ""}`)
	logs := &syncBuffer{grew: make(chan struct{}, 1)}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	start := configs.DefaultCoordinator()
	if _, err := configs.LoadFile(path, &start); err != nil {
		t.Fatal(err)
	}
	start.BaseDomain = "flag.test" // as if --base-domain flag.test
	var mu sync.Mutex
	var applied []*configs.Coordinator
	stop := watchReload(context.Background(), reloadSpec[configs.Coordinator]{
		ConfigFile: path, Defaults: configs.DefaultCoordinator, Start: &start, Cmdline: []string{"base_domain"},
		Validate: validateOnly[configs.Coordinator], Logger: logger,
		Apply: func(_, next *configs.Coordinator) ([]string, error) {
			mu.Lock()
			defer mu.Unlock()
			applied = append(applied, next)
			return []string{"log_level"}, nil
		},
	})
	defer stop()
	hup := func() {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	os.WriteFile(path, []byte("{\n\"log_levl\": \"debug\"\n}"), 0o600)
	hup()
	logs.waitFor(t, `unknown key \"log_levl\"`, 10*time.Second)
	os.WriteFile(path, []byte(`{"log_level": "loud"}`), 0o600)
	hup()
	logs.waitFor(t, "log_level", 10*time.Second)
	logs.waitFor(t, "loud", 10*time.Second)
	mu.Lock()
	if len(applied) != 0 {
		t.Fatalf("a refused file was applied: %+v", applied[0])
	}
	mu.Unlock()
	logs.mu.Lock()
	if got := strings.Count(logs.b.String(), "config reload refused"); got != 2 {
		t.Errorf("%d refusals logged, want 2:\n%s", got, logs.b.String())
	}
	logs.mu.Unlock()

	os.WriteFile(path, []byte(`{"addr": "127.0.0.1:2", "log_level": "debug", "base_domain": "file.test"}`), 0o600)
	hup()
	logs.waitFor(t, "config reloaded", 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(applied) != 1 || applied[0].LogLevel != "debug" || applied[0].BaseDomain != "flag.test" || applied[0].Addr != "127.0.0.1:2" {
		t.Fatalf("applied %+v; want log_level debug, the flag's base_domain, the file's addr", applied)
	}
	logs.waitFor(t, "reloaded=[log_level] needs_restart=[addr]", time.Second)
}

// TestReloadUnchangedFile: reloading the file a role started with changes
// no setting, so a reload never asks for a restart it does not need (a
// default kept outside configs would show here).
func TestReloadUnchangedFile(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	dir := filepath.Join("..", "..", "..", "configs")
	logger := slog.New(slog.DiscardHandler)
	none := func() ([]string, error) { return nil, nil }
	check := func(name string, changed []string, err error) {
		t.Helper()
		if err != nil || len(changed) > 0 {
			t.Errorf("%s: reload of the same file: changed %v, err %v; want nothing changed", name, changed, err)
		}
	}
	args := func(file string, extra ...string) []string {
		return append([]string{"--config", filepath.Join(dir, file)}, extra...)
	}

	var s *ServerOptions
	sc := NewCmdServer(f, func(o *ServerOptions) error { s = o; return nil })
	quiet(sc, args("server.hujson", "--log-level", "debug"))
	if err := sc.Execute(); err != nil {
		t.Fatal(err)
	}
	sspec := reloadSpec[configs.Server]{ConfigFile: s.ConfigFile, Defaults: configs.DefaultServer, Start: &s.Server, Cmdline: s.cmdline,
		Validate: settleServer, Logger: logger, Apply: func(_, _ *configs.Server) ([]string, error) { return none() }}
	next, err := sspec.reload(&s.Server)
	if err == nil {
		check("server", configs.ChangedKeys(&s.Server, next), nil)
		if next.LogLevel != "debug" {
			t.Errorf("server: log_level %q after reload, want the flag's debug", next.LogLevel)
		}
	} else {
		check("server", nil, err)
	}

	var c *CoordinatorOptions
	cc := NewCmdCoordinator(f, func(o *CoordinatorOptions) error { c = o; return nil })
	quiet(cc, args("coordinator.hujson"))
	if err := cc.Execute(); err != nil {
		t.Fatal(err)
	}
	cspec := reloadSpec[configs.Coordinator]{ConfigFile: c.ConfigFile, Defaults: configs.DefaultCoordinator, Start: &c.Coordinator, Cmdline: c.cmdline,
		Validate: validateOnly[configs.Coordinator], Logger: logger, Apply: func(_, _ *configs.Coordinator) ([]string, error) { return none() }}
	if cn, err := cspec.reload(&c.Coordinator); err == nil {
		check("coordinator", configs.ChangedKeys(&c.Coordinator, cn), nil)
	} else {
		check("coordinator", nil, err)
	}

	var d *DERPOptions
	dc := NewCmdDERP(f, func(o *DERPOptions) error { d = o; return nil })
	quiet(dc, args("derp.hujson"))
	if err := dc.Execute(); err != nil {
		t.Fatal(err)
	}
	dspec := reloadSpec[configs.DERP]{ConfigFile: d.ConfigFile, Defaults: configs.DefaultDERP, Start: &d.DERP, Cmdline: d.cmdline,
		Validate: validateOnly[configs.DERP], Logger: logger, Apply: func(_, _ *configs.DERP) ([]string, error) { return none() }}
	if dn, err := dspec.reload(&d.DERP); err == nil {
		check("derp", configs.ChangedKeys(&d.DERP, dn), nil)
	} else {
		check("derp", nil, err)
	}

	var dm *DaemonOptions
	dmc := NewCmdDaemon(f, &instanceFlags{state: t.TempDir()}, func(o *DaemonOptions) error { dm = o; return nil })
	quiet(dmc, args("daemon.hujson"))
	if err := dmc.Execute(); err != nil {
		t.Fatal(err)
	}
	dmspec := reloadSpec[configs.Daemon]{ConfigFile: dm.ConfigFile, Defaults: configs.DefaultDaemon, Start: &dm.Daemon, Cmdline: dm.cmdline,
		Validate: validateOnly[configs.Daemon], Logger: logger, Apply: func(_, _ *configs.Daemon) ([]string, error) { return none() }}
	if dn, err := dmspec.reload(&dm.Daemon); err == nil {
		check("daemon", configs.ChangedKeys(&dm.Daemon, dn), nil)
	} else {
		check("daemon", nil, err)
	}

	var e *EdgeOptions
	ec := NewCmdEdge(f, &instanceFlags{}, func(o *EdgeOptions) error { e = o; return nil })
	quiet(ec, args("edge.hujson"))
	if err := ec.Execute(); err != nil {
		t.Fatal(err)
	}
	espec := reloadSpec[configs.Edge]{ConfigFile: e.ConfigFile, Defaults: configs.DefaultEdge, Start: &e.Edge, Cmdline: e.cmdline,
		Validate: validateOnly[configs.Edge], Logger: logger, Apply: func(_, _ *configs.Edge) ([]string, error) { return none() }}
	if en, err := espec.reload(&e.Edge); err == nil {
		check("edge", configs.ChangedKeys(&e.Edge, en), nil)
	} else {
		check("edge", nil, err)
	}
}

// TestReloadLogWithoutConfig: without --config the reload log names what
// was read again and no empty file; a refused reload names no file either.
func TestReloadLogWithoutConfig(t *testing.T) {
	logs := &syncBuffer{grew: make(chan struct{}, 1)}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	start := configs.DefaultCoordinator()
	var mu sync.Mutex
	fail := false
	hup := make(chan os.Signal, 1)
	stop := watchReload(context.Background(), reloadSpec[configs.Coordinator]{
		Defaults: configs.DefaultCoordinator, Start: &start,
		Validate: validateOnly[configs.Coordinator], Logger: logger, HUP: hup,
		Apply: func(_, _ *configs.Coordinator) ([]string, error) {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				return nil, errors.New("admin token in DATA/admin.token is too short")
			}
			return []string{"log_level", "admin_token"}, nil
		},
	})
	defer stop()
	hup <- syscall.SIGHUP
	logs.waitFor(t, "config reloaded", 10*time.Second)
	logs.waitFor(t, "reloaded=[admin_token]", time.Second)
	mu.Lock()
	fail = true
	mu.Unlock()
	hup <- syscall.SIGHUP
	logs.waitFor(t, "config reload refused", 10*time.Second)
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if strings.Contains(logs.b.String(), "file=") {
		t.Errorf("log names a file without --config:\n%s", logs.b.String())
	}
}
