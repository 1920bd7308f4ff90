package cli

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"beam.dev/beam/localapi/apitype"
)

func TestParseRelayServer(t *testing.T) {
	tests := []struct {
		in      string
		on      bool
		port    int // -1: no port given
		wantErr bool
	}{
		{"on", true, -1, false},
		{"true", true, -1, false},
		{"off", false, -1, false},
		{"false", false, -1, false},
		{"41700", true, 41700, false},
		{"0", true, 0, false},
		{"65536", false, -1, true},
		{"-1", false, -1, true},
		{"relay", false, -1, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			on, port, err := parseRelayServer(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			got := -1
			if port != nil {
				got = int(*port)
			}
			if on != tc.on || got != tc.port {
				t.Errorf("got on %v port %d, want on %v port %d", on, got, tc.on, tc.port)
			}
		})
	}
}

// TestRelayLimitFlags: beam set, up and daemon (flags and config file)
// turn the peer relay limits into settings for the daemon, and refuse
// bad values naming the flag (or config key) before anything runs.
func TestRelayLimitFlags(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	// run executes cmd (set, up or daemon) with args and returns the
	// settings it would send to the daemon; ran is false if it refused.
	run := func(t *testing.T, name string, args []string) (p apitype.PrefsPatch, ran bool, err error) {
		t.Helper()
		var cmd *cobra.Command
		switch name {
		case "set":
			cmd = NewCmdSet(f, &instanceFlags{}, func(o *SetOptions) error { p, ran = o.Prefs, true; return nil })
		case "up":
			cmd = NewCmdUp(f, &instanceFlags{}, func(o *UpOptions) error { p, ran = o.Daemon.Prefs, true; return nil })
		case "daemon":
			cmd = NewCmdDaemon(f, &instanceFlags{state: t.TempDir()}, func(o *DaemonOptions) error { p, ran = o.Prefs, true; return nil })
		}
		quiet(cmd, args)
		err = cmd.Execute()
		return p, ran, err
	}
	intOr := func(v *int) int {
		if v == nil {
			return -1
		}
		return *v
	}
	rateOr := func(v *int64) int64 {
		if v == nil {
			return -1
		}
		return *v
	}
	for _, name := range []string{"set", "up", "daemon"} {
		t.Run(name, func(t *testing.T) {
			p, ran, err := run(t, name, []string{"--relay-server-max-sessions", "100", "--relay-server-max-sessions-per-peer", "4", "--relay-server-session-rate", "100Mbit"})
			if err != nil || !ran {
				t.Fatalf("err %v ran %v, want it run", err, ran)
			}
			if got := [3]int64{int64(intOr(p.RelayServerMaxSessions)), int64(intOr(p.RelayServerMaxSessionsPerPeer)), rateOr(p.RelayServerSessionRate)}; got != [3]int64{100, 4, 12_500_000} {
				t.Errorf("max sessions, per peer, rate = %v, want [100 4 12500000]", got)
			}
			// Only the flags given become settings.
			p, _, err = run(t, name, []string{"--relay-server-session-rate", "12MiB"})
			if err != nil {
				t.Fatal(err)
			}
			if p.RelayServerMaxSessions != nil || p.RelayServerMaxSessionsPerPeer != nil || rateOr(p.RelayServerSessionRate) != 12<<20 {
				t.Errorf("with --relay-server-session-rate alone: %+v, want the rate 12 MiB/s only", p)
			}
			// 0 puts the default back.
			p, _, err = run(t, name, []string{"--relay-server-max-sessions", "0", "--relay-server-session-rate", "0"})
			if err != nil || intOr(p.RelayServerMaxSessions) != 0 || rateOr(p.RelayServerSessionRate) != 0 {
				t.Errorf("zeros: err %v prefs %+v, want both set to 0", err, p)
			}
			for _, bad := range []struct {
				args []string
				want string
			}{
				{[]string{"--relay-server-max-sessions", "-1"}, "--relay-server-max-sessions"},
				{[]string{"--relay-server-max-sessions", "2000000"}, "--relay-server-max-sessions"},
				{[]string{"--relay-server-max-sessions-per-peer", "-3"}, "--relay-server-max-sessions-per-peer"},
				{[]string{"--relay-server-max-sessions", "10", "--relay-server-max-sessions-per-peer", "11"}, "more than --relay-server-max-sessions"},
				{[]string{"--relay-server-session-rate", "100"}, "unit"},
				{[]string{"--relay-server-session-rate", "10furlongs"}, "unknown unit"},
				{[]string{"--relay-server-session-rate", "1kbit"}, "64kbit to 100Gbit"},
				{[]string{"--relay-server-session-rate", "1Tbit"}, "--relay-server-session-rate"},
				{[]string{"--relay-server-max-sessions", "many"}, "--relay-server-max-sessions"},
			} {
				_, ran, err := run(t, name, bad.args)
				if err == nil || ran {
					t.Errorf("%v: accepted (ran %v), want it refused", bad.args, ran)
					continue
				}
				if !strings.Contains(err.Error(), bad.want) {
					t.Errorf("%v: error %q does not say %q", bad.args, err, bad.want)
				}
			}
		})
	}
	t.Run("config file", func(t *testing.T) {
		path := writeConfig(t, `{"relay_server": "41700", "relay_server_max_sessions": 64, "relay_server_session_rate": "1Gbit"}`)
		p, ran, err := run(t, "daemon", []string{"--config", path, "--relay-server-max-sessions-per-peer", "2"})
		if err != nil || !ran {
			t.Fatalf("err %v ran %v", err, ran)
		}
		if intOr(p.RelayServerMaxSessions) != 64 || intOr(p.RelayServerMaxSessionsPerPeer) != 2 || rateOr(p.RelayServerSessionRate) != 125_000_000 || p.RelayServerPort == nil || *p.RelayServerPort != 41700 {
			t.Errorf("prefs %+v, want 64 sessions, 2 per peer, 125000000 B/s on port 41700", p)
		}
		for body, want := range map[string]string{
			`{"relay_server_max_sessions": -5}`:           "relay_server_max_sessions",
			`{"relay_server_session_rate": "fast"}`:       "relay_server_session_rate",
			`{"relay_server_max_sessions_per_peer": "x"}`: "relay_server_max_sessions_per_peer",
		} {
			_, ran, err := run(t, "daemon", []string{"--config", writeConfig(t, body)})
			if err == nil || ran || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: err %v ran %v, want it refused naming %s", body, err, ran, want)
			}
		}
	})
}
