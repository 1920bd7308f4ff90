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

// BenchmarkDaemonIdleRSS starts three real daemons (each sees two peers),
// lets them settle, and reports the resident memory of one idle daemon.
// Target: under 40 MiB.
func BenchmarkDaemonIdleRSS(b *testing.B) {
	for range b.N {
		c := newClusterTB(b)
		key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable"))
		var devs []*device
		for _, name := range []string{"alpha", "beta", "gamma"} {
			d := c.device(name)
			d.mustUp("--authkey", key)
			devs = append(devs, d)
		}
		waitFor(c.t, 15*time.Second, "alpha sees two peers", func() bool { return len(devs[0].status().Peers) == 2 })
		// Let the daemon settle (handshakes, first keepalives) before measuring.
		time.Sleep(2 * time.Second)
		pidb, err := os.ReadFile(filepath.Join(devs[0].state, "daemon.pid"))
		if err != nil {
			b.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
		b.ReportMetric(rssMiB(b, pid), "idle-RSS-MiB")
	}
}
