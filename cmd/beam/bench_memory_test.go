//go:build !race

// The race detector does not change the daemons (the binary is built
// without it) but slows this process, the transfers' sender and sink, so
// these checks run in make test's pass without it.

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// memTransferBytes is the size of each of TestDaemonMemory's
	// transfers.
	memTransferBytes = 192 << 20
	// memRelayTransferBytes is the size of each of
	// TestDaemonMemoryRelay's transfers.
	memRelayTransferBytes = 96 << 20
	// memGrowthMiB is how much more a daemon may hold right after the
	// fifth transfer than right after the second. Measured growth: 1.5-7.7
	// MiB in four runs direct (the heap goal and wireguard-go's buffer
	// pool follow the fastest transfer so far), 12.7-13.4 MiB for the
	// relay's receiving daemon in two runs on a machine loaded to 20
	// runnable threads, whose transfers sped up from 240 to 870 Mbit/s
	// (it levels off: 58.8 MiB after the fourth and the fifth); a leak of
	// the transfers' buffers would be hundreds.
	memGrowthMiB = 16
	// memIdleMiB is how much more than before any traffic a daemon may
	// hold within memIdleWithin of the last transfer, and memIdleAnonMiB
	// the most private (anonymous) memory it may hold by then. Issue 13's
	// target is 30 MiB in all, which this binary cannot meet even before
	// any traffic: a daemon that just came up holds 29.7-30.2 MiB, of
	// which 24.7-25.4 MiB are file pages of its own executable (see
	// memFileMiB) against 4.6-5.0 MiB private. So the bounds are on what
	// the daemon controls: its private memory, back to 6.0-6.7 MiB
	// (measured) 15-25 s after the transfers (the rest is wireguard-go's
	// 64 KiB buffers that its receive and TUN-read goroutines hold for
	// good, now partly written), and the whole within memIdleMiB of
	// before (measured 2.1-2.7 MiB above). Without the idle release
	// (startMemoryRelease) a daemon stayed 20-28 MiB higher.
	memIdleMiB     = 6
	memIdleAnonMiB = 10
	memIdleWithin  = time.Minute
	// memFileMiB is the most file-backed memory (the executable's own
	// pages, mapped as it runs) an idle daemon may hold. Measured on the
	// static binary that ships (CGO_ENABLED=0, as buildBeam builds it):
	// 24.7-25.4 MiB just up, 25.7-26.4 MiB after the transfers, of a 52
	// MB binary: 11.9-12.8 of its 16 MiB of text, 4.5 of 4.5 MiB of
	// rodata and 7-9 of 13 MiB of pclntab. The kernel maps a file page
	// fault's 64 KiB around it (fault-around), so what counts is how many
	// 64 KiB windows a process touches, and the init functions of the
	// binary's 240 packages (every role's, since one binary carries them
	// all) touch about 190 of the 258 windows of text before main runs;
	// the runtime's itab table, built at start, reads a type descriptor
	// in nearly every window of rodata; and unwinding stacks (stack
	// growth, the collector's scans) reads the pclntab of every function
	// found on them. `beam version` holds 19.8-20.9 MiB of file pages as
	// it exits (11.1-12.1 text). How much a fault maps also depends on
	// how the file came into the page cache: the same bytes written by
	// the linker map 12.1 MiB of text, copied with cat 11.1 (measured),
	// so comparing two builds needs each written the same way. The bound
	// catches a change that makes every process touch more of the binary
	// (init-time work, a large table built at start).
	memFileMiB = 30
	// memPeakMiB is the most a daemon may hold at any moment of the
	// transfers (VmHWM; the target of issue 13). Measured before
	// wireguard-go's in-flight packets were bounded: 45-60 MiB, with
	// 140-180 MB of heap (mostly untouched 64 KiB buffers, which a
	// collection makes whole when they are reused); with them 42.1-46.9
	// MiB direct and 50.1-58.8 MiB over the relay (the receiving daemon;
	// 39.7-47 the sender). The relay's receiver follows its heap goal:
	// with GOGC=50 it peaked at 45.2-45.5 MiB against 51.1-56.3 in the
	// same run, but the direct path then took about 20% more daemon CPU
	// per GiB (interleaved, five pairs, noisy), so the daemon keeps Go's
	// default.
	memPeakMiB = 64
	// memHeapMiB is the most heap (HeapSys: all the heap a daemon ever
	// took) the transfers may leave a daemon with. Pages the collector
	// frees and the allocator hands out again are zeroed, so a heap this
	// size can become resident after enough collections even while most
	// of it is untouched at first. Measured 131 MiB each before the
	// in-flight windows, 39-59 MiB with them.
	memHeapMiB = 64
)

// TestDaemonMemory sends five successive bulk transfers, each on its own
// connection, through two real daemons (alpha's SOCKS5 proxy to beta's
// forward to its loopback) over the direct path. It fails if a daemon's
// resident memory ever exceeded memPeakMiB, if it keeps growing from
// transfer to transfer, or if it is not back under the idle bounds
// within memIdleWithin of the last. It logs every reading, each daemon's
// peak and the highest resident memory sampled during the transfers.
func TestDaemonMemory(t *testing.T) {
	testDaemonMemory(t, "direct", memTransferBytes)
}

// TestDaemonMemoryRelay is TestDaemonMemory over the relay of `beam
// server` (the daemons run with BEAM_DEBUG_ALWAYS_RELAY=1), with smaller
// transfers: the relay path is slower.
func TestDaemonMemoryRelay(t *testing.T) {
	testDaemonMemory(t, "relay", memRelayTransferBytes, "BEAM_DEBUG_ALWAYS_RELAY=1")
}

// testDaemonMemory runs the checks of TestDaemonMemory on a pair of
// daemons started with env, whose path must be wantPath, with transfers
// of size bytes.
func testDaemonMemory(t *testing.T, wantPath string, size int64, env ...string) {
	p := newOverlayPair(t, env...)
	sink := newCountSink(t)
	names := []string{"alpha", "beta"}
	rss := make([][]float64, len(p.pids)) // per daemon, after each transfer
	var log strings.Builder
	defer func() { t.Logf("daemon RSS (%s path):\n%s", wantPath, log.String()) }()
	before := make([]float64, len(p.pids))
	for j, pid := range p.pids {
		m := readMemParts(t, pid)
		before[j] = m.total
		fmt.Fprintf(&log, "%s before any traffic: %s\n", names[j], m)
	}
	sampled := sampleRSS(t, p.pids)
	for i := range 5 {
		c := p.dialBeta(t, sink.port())
		s := newBulkStream(c, sink)
		d := s.sendBytes(t, size)
		c.Close()
		if i == 0 {
			if got := p.path(); got != wantPath {
				t.Fatalf("alpha reaches beta over %q, want %q", got, wantPath)
			}
		}
		fmt.Fprintf(&log, "after transfer %d (%.0f Mbit/s):", i+1, float64(size)*8/d.Seconds()/1e6)
		for j, pid := range p.pids {
			v := procStatusMiB(t, pid, "VmRSS")
			rss[j] = append(rss[j], v)
			fmt.Fprintf(&log, " %s %.1f MiB", names[j], v)
		}
		log.WriteString("\n")
	}
	high := sampled()
	for j, pid := range p.pids {
		peak := procStatusMiB(t, pid, "VmHWM")
		fmt.Fprintf(&log, "%s: peak %.1f MiB (VmHWM), highest sampled %.1f MiB\n", names[j], peak, high[j])
		if peak > memPeakMiB {
			t.Errorf("%s peaked at %.1f MiB resident, want at most %d MiB", names[j], peak, memPeakMiB)
		}
		if second, fifth := rss[j][1], rss[j][4]; fifth > second+memGrowthMiB {
			t.Errorf("%s holds %.1f MiB after the fifth transfer, %.1f MiB after the second: want at most %d MiB more", names[j], fifth, second, memGrowthMiB)
		}
		fmt.Fprintf(&log, "%s after the transfers: %s\n", names[j], readMemParts(t, pid))
	}

	// Idle, the daemons give the memory back.
	start := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		var high []string
		for j, pid := range p.pids {
			v, anon := procStatusMiB(t, pid, "VmRSS"), procStatusMiB(t, pid, "RssAnon")
			if v > before[j]+memIdleMiB || anon > memIdleAnonMiB {
				high = append(high, fmt.Sprintf("%s %.1f MiB, %.1f MiB private (%.1f MiB before any traffic)", names[j], v, anon, before[j]))
			}
		}
		if len(high) == 0 {
			fmt.Fprintf(&log, "both within %d MiB of before and under %d MiB private %.1f s after the last transfer:\n", memIdleMiB, memIdleAnonMiB, time.Since(start).Seconds())
			for j, pid := range p.pids {
				m := readMemParts(t, pid)
				fmt.Fprintf(&log, "  %s %s\n", names[j], m)
				if m.file > memFileMiB {
					t.Errorf("%s idle maps %.1f MiB of file pages, want at most %d MiB", names[j], m.file, memFileMiB)
				}
			}
			break
		}
		if time.Since(start) > memIdleWithin {
			t.Fatalf("%v after the last transfer: %s resident, want at most %d MiB more than before and at most %d MiB private", memIdleWithin, strings.Join(high, ", "), memIdleMiB, memIdleAnonMiB)
		}
		<-tick.C
	}

	// The heap the transfers took (HeapSys never shrinks): what a daemon
	// may come to hold resident once the collector recycles it. Read
	// after the idle checks: writing a heap profile names the functions
	// of its stacks, which maps pages of the binary's pclntab that the
	// daemon would not otherwise touch.
	for j, d := range []*device{p.alpha, p.beta} {
		heap := memStat(t, localGet(t, d, "/localapi/v0/debug/profile/heap?debug=1"), "HeapSys")
		fmt.Fprintf(&log, "%s: heap %.1f MiB\n", names[j], heap/(1<<20))
		if heap > memHeapMiB<<20 {
			t.Errorf("%s took %.1f MiB of heap, want at most %d MiB", names[j], heap/(1<<20), memHeapMiB)
		}
	}

	// What a daemon holds can be read from its heap profile, and what it
	// spends CPU on from a CPU profile (pprof's format is gzipped).
	prof := localGet(t, p.beta, "/localapi/v0/debug/profile/heap?gc=1&debug=1")
	if !strings.HasPrefix(prof, "heap profile: ") || !strings.Contains(prof, "# HeapInuse = ") {
		t.Errorf("heap profile from beta's local API: %.200q, want a text heap profile with MemStats", prof)
	}
	if cpu := localGet(t, p.beta, "/localapi/v0/debug/profile/cpu?seconds=0.2"); !strings.HasPrefix(cpu, "\x1f\x8b") {
		t.Errorf("CPU profile from beta's local API: %.40q, want a gzipped pprof profile", cpu)
	}
}

// sampleRSS reads the VmRSS of pids every 20 ms until the returned
// function is called, which returns the highest reading of each.
func sampleRSS(t *testing.T, pids []int) func() []float64 {
	high := make([]float64, len(pids))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, pid := range pids {
				b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
				if err != nil {
					continue // reported by the caller's own readings
				}
				for _, line := range strings.Split(string(b), "\n") {
					if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
						kb, _ := strconv.ParseFloat(f[1], 64)
						high[i] = max(high[i], kb/1024)
					}
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	end := func() []float64 {
		once.Do(func() { close(stop); <-done })
		return high
	}
	t.Cleanup(func() { end() })
	return end
}

// memParts is what a process holds resident, in MiB, by kind of page.
type memParts struct {
	total, anon, file float64
	// text, rodata and data are the file pages of the executable's
	// mappings: code; read-only data (rodata, pclntab, type links); and
	// the initialised data not yet written to. libs is the file pages of
	// every other file (the C library, for a binary built with cgo).
	text, rodata, data, libs float64
}

func (m memParts) String() string {
	return fmt.Sprintf("%.1f MiB: %.1f private, %.1f file (text %.1f, read-only data %.1f, data %.1f, libraries %.1f)",
		m.total, m.anon, m.file, m.text, m.rodata, m.data, m.libs)
}

// readMemParts reads pid's resident memory by kind from
// /proc/PID/smaps.
func readMemParts(t *testing.T, pid int) memParts {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid)
	exe, err := os.Readlink(dir + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dir + "/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var m memParts
	var perms, path string
	var rss float64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") { // a mapping's header line
			perms, path = f[1], ""
			if len(f) >= 6 {
				path = strings.Join(f[5:], " ")
			}
			continue
		}
		if len(f) < 2 || (f[0] != "Rss:" && f[0] != "Anonymous:") {
			continue
		}
		kb, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			t.Fatalf("%s/smaps: %q: %v", dir, line, err)
		}
		mib := kb / 1024
		if f[0] == "Rss:" {
			rss = mib
			m.total += mib
			continue
		}
		// Anonymous follows Rss in each mapping's block.
		m.anon += mib
		file := rss - mib
		switch {
		case file == 0:
		case path != exe:
			m.libs += file
		case strings.Contains(perms, "x"):
			m.text += file
		case strings.Contains(perms, "w"):
			m.data += file
		default:
			m.rodata += file
		}
	}
	m.file = m.total - m.anon
	return m
}

// memStat returns the runtime.MemStats field name from the text of a
// heap profile (?debug=1).
func memStat(t *testing.T, prof, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(prof, "\n") {
		if v, ok := strings.CutPrefix(line, "# "+name+" = "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("heap profile: %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("heap profile has no %s: %.200q", name, prof)
	return 0
}

// localGet fetches path from d's local API and returns the body of a 200
// answer.
func localGet(t *testing.T, d *device, path string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, "unix", d.socket)
		},
	}, Timeout: 30 * time.Second}
	resp, err := client.Get("http://local" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %.200q, %v", path, resp.Status, b, err)
	}
	return string(b)
}
