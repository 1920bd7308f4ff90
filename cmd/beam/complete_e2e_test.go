package main

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// completions runs beam's hidden __complete command as a shell would and
// returns the offered words (without cobra's trailing :DIRECTIVE line).
func completions(t *testing.T, c *cluster, args ...string) []string {
	t.Helper()
	out := c.mustBeam(append([]string{"__complete"}, args...)...)
	var words []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && !strings.HasPrefix(l, ":") {
			words = append(words, l)
		}
	}
	return words
}

// TestShellCompletion: shell completion offers the daemon's peer names
// for nc, ping and ip, and its route names for expose stop.
func TestShellCompletion(t *testing.T) {
	c, _ := startDevServer(t)
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp()
	beta.mustUp()
	waitFor(t, 10*time.Second, "alpha sees beta", func() bool {
		return slices.Contains(completions(t, c, alpha.args("ping", "")...), "beta")
	})
	for _, cmd := range []string{"nc", "ping", "ip"} {
		if got := completions(t, c, alpha.args(cmd, "b")...); !slices.Equal(got, []string{"beta"}) {
			t.Errorf("complete %s b: got %q, want [beta]", cmd, got)
		}
	}
	if got := completions(t, c, alpha.args("nc", "beta", "")...); len(got) != 0 {
		t.Errorf("complete nc beta <port>: got %q, want nothing", got)
	}

	c.mustBeam(alpha.args("expose", strconv.Itoa(freePort(t)), "--name", "web", "--bg")...)
	if got := completions(t, c, alpha.args("expose", "stop", "")...); !slices.Contains(got, "web") {
		t.Errorf("complete expose stop: got %q, want web among them", got)
	}
	// No daemon: no words, and no error for the shell to print.
	if got := completions(t, c, "--socket", c.dir+"/none.sock", "ping", ""); len(got) != 0 {
		t.Errorf("complete without a daemon: got %q, want nothing", got)
	}
}
