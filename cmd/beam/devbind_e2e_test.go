package main

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procListeners returns the local addresses, as /proc/net writes them
// (hex, "0100007F" for 127.0.0.1), of this network namespace's sockets
// on port for proto "tcp" (listening) or "udp" (bound), IPv4 and IPv6.
func procListeners(t *testing.T, proto string, port int) []string {
	t.Helper()
	var out []string
	for _, f := range []string{proto, proto + "6"} {
		b, err := os.ReadFile("/proc/net/" + f)
		if err != nil {
			if f == proto {
				t.Fatal(err)
			}
			continue // no IPv6
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 4 {
				continue
			}
			host, p, ok := strings.Cut(fs[1], ":")
			if !ok || p != fmt.Sprintf("%04X", port) {
				continue
			}
			if proto == "tcp" && fs[3] != "0A" { // TCP_LISTEN
				continue
			}
			out = append(out, host)
		}
	}
	return out
}

// TestServerDevRoutePortsOnLoopback: beam server --dev prints tcp and udp
// route URLs on 127.0.0.1, and its edge listens for them there only, not
// on every address of the development machine.
func TestServerDevRoutePortsOnLoopback(t *testing.T) {
	c, _ := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	echo := echoServer(t)
	for _, proto := range []string{"tcp", "udp"} {
		out := strings.TrimSpace(c.mustBeam(alpha.args("expose", "--"+proto, strconv.Itoa(echo), "--bg", "--name", "r"+proto)...))
		m := regexp.MustCompile(`^` + proto + `://127\.0\.0\.1:(\d+)$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s expose printed %q, want %s://127.0.0.1:PORT", proto, out, proto)
		}
		port, _ := strconv.Atoi(m[1])
		var addrs []string
		waitFor(t, 10*time.Second, proto+" route port listening", func() bool {
			addrs = procListeners(t, proto, port)
			return len(addrs) > 0
		})
		for _, a := range addrs {
			if a != "0100007F" {
				t.Errorf("%s route port %d listens on %s (hex, as /proc/net writes it), want 127.0.0.1 (0100007F) only", proto, port, a)
			}
		}
	}
}
