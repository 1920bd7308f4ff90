package main

import (
	"fmt"
	"strings"
	"testing"
)

// memTransferBytes is the size of each of TestDaemonMemoryReturns's
// transfers.
const memTransferBytes = 192 << 20

// TestDaemonMemoryReturns sends five successive bulk transfers, each on
// its own connection, through two real daemons (alpha's SOCKS5 proxy to
// beta's forward to its loopback), and fails if the daemons' resident
// memory keeps growing: after the fifth transfer each daemon must hold
// no more than after the second plus memGrowthMiB. It logs every
// reading and each daemon's peak.
func TestDaemonMemoryReturns(t *testing.T) {
	p := newOverlayPair(t)
	sink := newCountSink(t)
	names := []string{"alpha", "beta"}
	rss := make([][]float64, len(p.pids)) // per daemon, after each transfer
	var log strings.Builder
	for i := range 5 {
		c := p.dialBeta(t, sink.port())
		s := newBulkStream(c, sink)
		d := s.sendBytes(t, memTransferBytes)
		c.Close()
		fmt.Fprintf(&log, "transfer %d: %.0f Mbit/s;", i+1, float64(memTransferBytes)*8/d.Seconds()/1e6)
		for j, pid := range p.pids {
			v := procStatusMiB(t, pid, "VmRSS")
			rss[j] = append(rss[j], v)
			fmt.Fprintf(&log, " %s %.1f MiB", names[j], v)
		}
		log.WriteString("\n")
	}
	for j, pid := range p.pids {
		fmt.Fprintf(&log, "%s: peak %.1f MiB resident\n", names[j], procStatusMiB(t, pid, "VmHWM"))
	}
	t.Logf("daemon RSS after each transfer:\n%s", log.String())
	for j := range p.pids {
		if second, fifth := rss[j][1], rss[j][4]; fifth > second+memGrowthMiB {
			t.Errorf("%s holds %.1f MiB after the fifth transfer, %.1f MiB after the second: want at most %d MiB more", names[j], fifth, second, memGrowthMiB)
		}
	}
}

// memGrowthMiB is how much more a daemon may hold after the fifth
// transfer than after the second (see TestDaemonMemoryReturns).
const memGrowthMiB = 16
