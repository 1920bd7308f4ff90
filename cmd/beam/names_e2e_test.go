package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCoordinatorURLWithPath: beam up refuses a coordinator URL with a
// path at once, saying why, and starts no daemon.
func TestCoordinatorURLWithPath(t *testing.T) {
	c := newCluster(t)
	d := c.device("alpha")
	for _, u := range []string{c.url + "/path", c.url + "/beam/", c.url + "?x=1"} {
		_, errOut, err := d.c.beam(nil, d.args("up", "--coordinator", u, "--hostname", "alpha", "--timeout", "20s")...)
		if err == nil || !strings.Contains(errOut, "has no path") || !strings.Contains(errOut, "http(s)://host[:port]") {
			t.Errorf("beam up --coordinator %s: %v, stderr %q; want a refusal naming the URL's form", u, err, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(d.state, "daemon.pid")); err == nil {
		t.Errorf("beam up with a bad coordinator URL started a daemon")
	}
	// A trailing slash is fine.
	d.mustUp("--coordinator", c.url+"/", "--authkey", strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url)))
}

// TestPunycodeRouteName: a public route name in punycode (xn--, which a
// browser shows in another script) or another reserved "??--" form is
// refused with a message saying why; an ordinary name with "--" later
// is fine.
func TestPunycodeRouteName(t *testing.T) {
	c, _ := startDevServer(t)
	d := c.device("alpha")
	d.mustUp()
	port := strconv.Itoa(echoServer(t))
	for _, name := range []string{"xn--80ak6aa92e", "XN--80AK6AA92E", "ab--cd"} {
		_, errOut, err := c.beam(nil, d.args("expose", port, "--name", name, "--bg")...)
		if err == nil || !strings.Contains(errOut, "reserved") || !strings.Contains(errOut, "punycode") {
			t.Errorf("beam expose --name %s: %v, stderr %q; want it refused as reserved (punycode)", name, err, errOut)
		}
	}
	out, errOut, err := c.beam(nil, d.args("expose", port, "--name", "app--one", "--bg")...)
	if err != nil || !strings.Contains(out, "app--one.") {
		t.Errorf("beam expose --name app--one: %v, %q %q; want it published", err, out, errOut)
	}
}
