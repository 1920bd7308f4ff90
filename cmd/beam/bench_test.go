package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rssMiB returns the resident set size of pid in MiB, from /proc.
func rssMiB(t testing.TB, pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// maxDaemonIdleRSSMiB bounds an idle daemon's resident memory. Measured
// 20.4-20.5 MiB (a daemon with two peers on direct paths); the bound
// leaves room for growth and for the allocator's slack.
const maxDaemonIdleRSSMiB = 40

// daemonIdleRSS starts three real daemons, has one of them ping both
// others until it reaches them over direct paths (handshakes done), and
// returns that daemon's resident memory in MiB.
func daemonIdleRSS(tb testing.TB) float64 {
	c := newClusterTB(tb)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable"))
	var devs []*device
	for _, name := range []string{"alpha", "beta", "gamma"} {
		d := c.device(name)
		d.mustUp("--authkey", key)
		devs = append(devs, d)
	}
	// Peers join WireGuard on traffic: ping each peer alpha lists and has
	// no direct path to yet, so the idle daemon holds two live sessions,
	// until both paths are direct. A peer that joined a moment ago may
	// not be listed at first, and a ping may time out on a path still
	// forming; the next round pings again.
	waitFor(c.t, 30*time.Second, "alpha on direct paths to two peers", func() bool {
		direct := 0
		for _, p := range devs[0].status().Peers {
			if p.Path == "direct" {
				direct++
				continue
			}
			c.beam(nil, devs[0].args("ping", p.Name, "-c", "1")...)
		}
		return direct == 2
	})
	pidb, err := os.ReadFile(filepath.Join(devs[0].state, "daemon.pid"))
	if err != nil {
		tb.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if err != nil {
		tb.Fatalf("daemon.pid: %v", err)
	}
	return rssMiB(tb, pid)
}

// BenchmarkDaemonIdleRSS reports the resident memory of one real, idle
// daemon with two peers (see daemonIdleRSS). Each iteration starts its
// own three daemons.
func BenchmarkDaemonIdleRSS(b *testing.B) {
	for range b.N {
		b.ReportMetric(daemonIdleRSS(b), "idle-RSS-MiB")
	}
}

// TestDaemonIdleRSS holds an idle daemon to maxDaemonIdleRSSMiB.
func TestDaemonIdleRSS(t *testing.T) {
	rss := daemonIdleRSS(t)
	t.Logf("idle daemon with two peers: %.1f MiB resident", rss)
	if rss > maxDaemonIdleRSSMiB {
		t.Errorf("idle daemon holds %.1f MiB resident, want at most %d MiB", rss, maxDaemonIdleRSSMiB)
	}
}
