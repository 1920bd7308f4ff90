//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"
)

// BenchmarkDaemonTUNIperf3 measures TUN mode against what the machine
// allows, with iperf3 as users measure it. Each iteration is two rounds of
// iperf3 -t tunIperfSeconds: raw loopback TCP inside alpha's namespace,
// then alpha to beta's overlay address through both TUN-mode daemons
// (newTUNPair). Around each round it reads the CPU time of every process
// on the path (both iperf3s, both daemons split into user and system
// time, the kernel's softirq threads) and, in alpha's and beta's
// namespaces, the TCP segments and TUN packets the kernels counted; with
// perf on PATH it also counts the daemons' syscalls, which gives the
// packets each syscall carried (offloads at work: TSO on the TUN device
// and GSO split in wireguard-go on the way out, UDP GSO on send, UDP GRO
// on receive, TCP GRO coalescing before the TUN write).
//
// It also measures ChaCha20-Poly1305 (as wireguard-go seals and opens
// transport messages) on one core for 1280-byte packets, the TUN MTU, and
// reports the ceiling of the path on this machine. Every byte over the
// overlay costs at least what it costs over raw loopback (both iperf3s and
// the kernel's TCP) plus one seal and one open, so with c = CPU-seconds
// per GiB:
//
//	ceiling Gbit/s    = cores / (c raw + c crypto) * 8.59 (Gbit per GiB)
//	cpu-ratio         = c raw / c Beam                 (Beam's cost against raw's)
//	ceiling-cpu-ratio = c raw / (c raw + c crypto)     (the best any TUN path could do)
//	of-ceiling        = (c raw + c crypto) / c Beam
//
// The ceiling is an upper bound: it leaves out every TUN and UDP syscall
// and copy, checksums, and the per-packet cost of 1280-byte segments. The
// CPU figures hold on a loaded machine, where the throughputs say more
// about the load than about the path: a path that gets the same CPU as
// raw loopback moves at most ceiling-cpu-ratio of raw's bytes. Needs root
// and iperf3.
func BenchmarkDaemonTUNIperf3(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 is needed: %v", err)
	}
	p := newTUNPair(b)
	ctx := b.Context()
	const port = "5201" // the lab's namespaces are private: no other listener there
	rawSrv := p.alpha.host.Start(ctx, "iperf3", "-s", "--forceflush", "-B", "127.0.0.1", "-p", port)
	tunSrv := p.beta.host.Start(ctx, "iperf3", "-s", "--forceflush", "-p", port)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for _, s := range []interface {
		WaitOutput(context.Context, string) (string, error)
	}{rawSrv, tunSrv} {
		if _, err := s.WaitOutput(wctx, "Server listening"); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, 30*time.Second, "a direct path to beta", func() bool {
		// Traffic brings the path up; a short run is enough.
		p.alpha.host.Run(ctx, "iperf3", "-c", p.betaIP.String(), "-p", port, "-t", "1", "-J")
		return p.path(ctx) == "direct"
	})
	softirqd := kernelThreads(b, "ksoftirqd/")
	daemons := []int{p.alpha.proc.PID(), p.beta.proc.PID()}
	perf, _ := exec.LookPath("perf")
	if perf == "" {
		b.Log("perf is not on PATH: no syscall counts")
	}

	var raw, tun iperfRun
	var dUser, dSys, softCPU time.Duration
	var sc [2]syscallCounts
	var aBefore, aAfter, bBefore, bAfter nsCounters
	var aDelta, bDelta nsCounters
	b.ResetTimer()
	for b.Loop() {
		s0 := procCPU(b, rawSrv.PID())
		r := runIperf3(b, p.alpha, "127.0.0.1", port)
		r.serverCPU = procCPU(b, rawSrv.PID()) - s0
		raw.add(r)

		u0, y0 := procCPUSplit(b, daemons...)
		k0, t0 := procCPU(b, softirqd...), procCPU(b, tunSrv.PID())
		aBefore, bBefore = readNSCounters(b, p.alpha), readNSCounters(b, p.beta)
		var stats [2]*perfStat
		if perf != "" {
			for i, pid := range daemons {
				stats[i] = startPerfStat(b, perf, pid)
			}
		}
		r = runIperf3(b, p.alpha, p.betaIP.String(), port)
		for i, s := range stats {
			if s != nil {
				sc[i].add(s.stop(b))
			}
		}
		aAfter, bAfter = readNSCounters(b, p.alpha), readNSCounters(b, p.beta)
		r.serverCPU = procCPU(b, tunSrv.PID()) - t0
		u1, y1 := procCPUSplit(b, daemons...)
		dUser += u1 - u0
		dSys += y1 - y0
		softCPU += procCPU(b, softirqd...) - k0
		tun.add(r)
		aDelta.add(aAfter.sub(aBefore))
		bDelta.add(bAfter.sub(bBefore))
	}
	b.StopTimer()
	var hwm float64
	for _, pid := range daemons {
		hwm = max(hwm, procStatusMiB(b, pid, "VmHWM"))
	}
	if got := p.path(ctx); got != "direct" {
		b.Fatalf("after the rounds alpha reaches beta over %q, want direct", got)
	}

	gib := func(n int64) float64 { return float64(n) / (1 << 30) }
	perGiB := func(d time.Duration, n int64) float64 { return d.Seconds() / gib(n) }
	rawCost := perGiB(raw.clientCPU+raw.serverCPU, raw.bytes)
	tunIperf := perGiB(tun.clientCPU+tun.serverCPU, tun.bytes)
	tunTotal := perGiB(tun.clientCPU+tun.serverCPU+dUser+dSys+softCPU, tun.bytes)
	crypto := sealOpenSecondsPerGiB(b, 1280)
	cores := float64(runtime.NumCPU())
	const gbitPerGiB = 8 * (1 << 30) / 1e9
	ceiling := cores / (rawCost + crypto) * gbitPerGiB

	b.ReportMetric(tun.gbit(), "Gbit/s")
	b.ReportMetric(raw.gbit(), "raw-Gbit/s")
	b.ReportMetric(tun.gbit()/raw.gbit(), "ratio")
	b.ReportMetric(float64(tun.retrans)/float64(b.N), "retrans/round")
	b.ReportMetric(rawCost, "raw-cpu-s/GiB")
	b.ReportMetric(tunTotal, "cpu-s/GiB")
	b.ReportMetric(tunIperf, "iperf3-cpu-s/GiB")
	b.ReportMetric(perGiB(dUser, tun.bytes), "daemon-user-s/GiB")
	b.ReportMetric(perGiB(dSys, tun.bytes), "daemon-sys-s/GiB")
	b.ReportMetric(perGiB(softCPU, tun.bytes), "softirqd-s/GiB")
	b.ReportMetric(hwm, "daemon-peak-RSS-MiB")
	b.ReportMetric(crypto, "crypto-s/GiB")
	b.ReportMetric(ceiling, "ceiling-Gbit/s")
	b.ReportMetric(rawCost/tunTotal, "cpu-ratio")
	b.ReportMetric(rawCost/(rawCost+crypto), "ceiling-cpu-ratio")
	b.ReportMetric((rawCost+crypto)/tunTotal, "of-ceiling")

	// Packets per unit: alpha sends the data (alpha's TCP segments out),
	// beta the ACKs; each daemon reads what its host sends from the TUN
	// device and writes what the peer sent to it.
	data := float64(aDelta.tcpOutSegs)
	ratio := func(n float64, d int64, unit string) {
		if d > 0 {
			b.ReportMetric(n/float64(d), unit)
		}
	}
	ratio(data, aDelta.tunTxPackets, "segs/tun-read-pkt")       // TSO: segments per super-packet alpha's TUN hands wireguard-go
	ratio(data, bDelta.tunRxPackets, "segs/tun-write-pkt")      // GRO: segments per packet beta writes to its TUN
	ratio(data, bDelta.udpInDatagrams, "segs/udp-in-dgram")     // UDP GRO: wire packets per datagram beta's socket reads
	ratio(data, sc[0].sendmmsg+sc[0].sendmsg, "segs/send-call") // per UDP send syscall of alpha
	ratio(data, sc[1].recvmmsg+sc[1].recvmsg, "segs/recv-call") // per UDP receive syscall of beta
	ratio(data, sc[0].read, "segs/read-call")                   // per read syscall of alpha (its TUN reads)
	ratio(data, sc[1].write, "segs/write-call")                 // per write syscall of beta (its TUN writes)
	b.Logf("raw: %.2f Gbit/s, %.3f cpu-s/GiB; tun: %.2f Gbit/s, %.3f cpu-s/GiB (iperf3 %.3f, daemons user %.3f sys %.3f, softirqd %.3f); crypto %.3f s/GiB on one core; ceiling %.2f Gbit/s on %v cores; cost ratio %.3f, ceiling %.3f, Beam at %.3f of it",
		raw.gbit(), rawCost, tun.gbit(), tunTotal, tunIperf, perGiB(dUser, tun.bytes), perGiB(dSys, tun.bytes), perGiB(softCPU, tun.bytes),
		crypto, ceiling, cores, rawCost/tunTotal, rawCost/(rawCost+crypto), (rawCost+crypto)/tunTotal)
	b.Logf("alpha: %+v syscalls %+v; beta: %+v syscalls %+v", aDelta, sc[0], bDelta, sc[1])
}

// tunIperfSeconds is the length of one iperf3 round.
const tunIperfSeconds = "3"

// iperfRun sums iperf3 client runs.
type iperfRun struct {
	bytes                int64
	seconds              float64
	retrans              int64
	clientCPU, serverCPU time.Duration
}

func (r *iperfRun) add(o iperfRun) {
	r.bytes += o.bytes
	r.seconds += o.seconds
	r.retrans += o.retrans
	r.clientCPU += o.clientCPU
	r.serverCPU += o.serverCPU
}

func (r *iperfRun) gbit() float64 { return float64(r.bytes) * 8 / r.seconds / 1e9 }

// runIperf3 runs an iperf3 client in n's namespace against addr:port and
// returns what the server received and the client's CPU time.
func runIperf3(b *testing.B, n *tunNode, addr, port string) iperfRun {
	b.Helper()
	cmd := n.host.Command(b.Context(), "iperf3", "-c", addr, "-p", port, "-t", tunIperfSeconds, "-J")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("iperf3 to %s: %v: %s %s", addr, err, out, stderr.Bytes())
	}
	var res struct {
		End struct {
			SumSent struct {
				Retransmits int64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds float64 `json:"seconds"`
				Bytes   int64   `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("iperf3 output: %v: %s", err, out)
	}
	if res.End.SumReceived.Bytes == 0 || res.End.SumReceived.Seconds == 0 {
		b.Fatalf("iperf3 to %s: nothing received: %s", addr, out)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return iperfRun{
		bytes:     res.End.SumReceived.Bytes,
		seconds:   res.End.SumReceived.Seconds,
		retrans:   res.End.SumSent.Retransmits,
		clientCPU: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
	}
}

// procCPUSplit returns the user and system CPU time the processes pids
// used so far.
func procCPUSplit(tb testing.TB, pids ...int) (user, sys time.Duration) {
	tb.Helper()
	for _, pid := range pids {
		f := procStatFields(tb, pid)
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		s, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			tb.Fatalf("/proc/%d/stat: %q", pid, f)
		}
		user += time.Duration(u) * clockTick
		sys += time.Duration(s) * clockTick
	}
	return user, sys
}

// procStatFields returns the fields of /proc/PID/stat from field 3
// (state) on.
func procStatFields(tb testing.TB, pid int) []string {
	tb.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		tb.Fatal(err)
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		tb.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return f
}

// kernelThreads returns the PIDs of the kernel threads whose name starts
// with prefix.
func kernelThreads(tb testing.TB, prefix string) []int {
	tb.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err == nil && strings.HasPrefix(string(comm), prefix) {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		tb.Fatalf("no kernel thread %s*", prefix)
	}
	return pids
}

// nsCounters are a namespace's kernel counters that show what the
// overlay carried: TCP segments (counted per MSS-sized segment, also
// within a TSO super-packet), UDP datagrams (a GRO batch is one), and
// the packets of the TUN device beam0 (a super-packet is one).
type nsCounters struct {
	tcpOutSegs, tcpInSegs           int64
	udpInDatagrams, udpOutDatagrams int64
	tunRxPackets, tunTxPackets      int64
}

func (c *nsCounters) add(o nsCounters) {
	c.tcpOutSegs += o.tcpOutSegs
	c.tcpInSegs += o.tcpInSegs
	c.udpInDatagrams += o.udpInDatagrams
	c.udpOutDatagrams += o.udpOutDatagrams
	c.tunRxPackets += o.tunRxPackets
	c.tunTxPackets += o.tunTxPackets
}

func (c nsCounters) sub(o nsCounters) nsCounters {
	return nsCounters{
		tcpOutSegs: c.tcpOutSegs - o.tcpOutSegs, tcpInSegs: c.tcpInSegs - o.tcpInSegs,
		udpInDatagrams: c.udpInDatagrams - o.udpInDatagrams, udpOutDatagrams: c.udpOutDatagrams - o.udpOutDatagrams,
		tunRxPackets: c.tunRxPackets - o.tunRxPackets, tunTxPackets: c.tunTxPackets - o.tunTxPackets,
	}
}

// readNSCounters reads n's namespace's counters, from /proc of a thread
// inside it.
func readNSCounters(tb testing.TB, n *tunNode) nsCounters {
	tb.Helper()
	var snmp, dev []byte
	var err1, err2 error
	inNetns(tb, n.host.Namespace(), func() {
		snmp, err1 = os.ReadFile("/proc/thread-self/net/snmp")
		dev, err2 = os.ReadFile("/proc/thread-self/net/dev")
	})
	if err1 != nil || err2 != nil {
		tb.Fatalf("read counters of %s: %v %v", n.host.Name(), err1, err2)
	}
	var c nsCounters
	tcp, udp := snmpTable(tb, snmp, "Tcp:"), snmpTable(tb, snmp, "Udp:")
	c.tcpOutSegs, c.tcpInSegs = tcp["OutSegs"], tcp["InSegs"]
	c.udpInDatagrams, c.udpOutDatagrams = udp["InDatagrams"], udp["OutDatagrams"]
	found := false
	for _, line := range strings.Split(string(dev), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != "beam0" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 10 {
			tb.Fatalf("/proc/net/dev: %q", line)
		}
		c.tunRxPackets, _ = strconv.ParseInt(f[1], 10, 64)
		c.tunTxPackets, _ = strconv.ParseInt(f[9], 10, 64)
		found = true
	}
	if !found {
		tb.Fatalf("no beam0 in %s's /proc/net/dev", n.host.Name())
	}
	return c
}

// snmpTable returns the named row pair ("Tcp:") of /proc/net/snmp.
func snmpTable(tb testing.TB, snmp []byte, prefix string) map[string]int64 {
	tb.Helper()
	var rows [][]string
	for _, line := range strings.Split(string(snmp), "\n") {
		if strings.HasPrefix(line, prefix) {
			rows = append(rows, strings.Fields(line)[1:])
		}
	}
	if len(rows) != 2 || len(rows[0]) != len(rows[1]) {
		tb.Fatalf("/proc/net/snmp: no %s table", prefix)
	}
	m := map[string]int64{}
	for i, k := range rows[0] {
		m[k], _ = strconv.ParseInt(rows[1][i], 10, 64)
	}
	return m
}

// syscallCounts are the syscalls one daemon made in a round.
type syscallCounts struct {
	read, write                          int64
	sendmmsg, recvmmsg, sendmsg, recvmsg int64
}

func (s *syscallCounts) add(o syscallCounts) {
	s.read += o.read
	s.write += o.write
	s.sendmmsg += o.sendmmsg
	s.recvmmsg += o.recvmmsg
	s.sendmsg += o.sendmsg
	s.recvmsg += o.recvmsg
}

// perfStat is a running "perf stat" counting one process's syscalls.
type perfStat struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
}

var perfSyscalls = []string{"read", "write", "sendmmsg", "recvmmsg", "sendmsg", "recvmsg"}

func startPerfStat(tb testing.TB, perf string, pid int) *perfStat {
	tb.Helper()
	var ev []string
	for _, s := range perfSyscalls {
		ev = append(ev, "syscalls:sys_enter_"+s)
	}
	// perf starts with the events off (-D -1) and turns them on when told
	// through its control FIFO, then acknowledges: counting has begun.
	dir := tb.TempDir()
	ctlPath, ackPath := filepath.Join(dir, "ctl"), filepath.Join(dir, "ack")
	for _, f := range []string{ctlPath, ackPath} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			tb.Fatalf("perf control: %v", err)
		}
	}
	// Opened for reading and writing, a FIFO opens without waiting for
	// the other end.
	ctl, err1 := os.OpenFile(ctlPath, os.O_RDWR, 0)
	ack, err2 := os.OpenFile(ackPath, os.O_RDWR, 0)
	if err1 != nil || err2 != nil {
		tb.Fatalf("perf control: %v %v", err1, err2)
	}
	tb.Cleanup(func() { ctl.Close(); ack.Close() })
	s := &perfStat{}
	s.cmd = exec.Command(perf, "stat", "-x", ",", "-D", "-1", "--control", "fifo:"+ctlPath+","+ackPath,
		"-e", strings.Join(ev, ","), "-p", strconv.Itoa(pid))
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("perf stat: %v", err)
	}
	tb.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	if _, err := ctl.WriteString("enable\n"); err != nil {
		tb.Fatalf("perf control: %v", err)
	}
	ack.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 16)
	if n, err := ack.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "ack") {
		tb.Fatalf("perf stat did not acknowledge enable: %q %v (stderr %q)", buf[:n], err, s.stderr.String())
	}
	return s
}

// stop ends the count and returns it.
func (s *perfStat) stop(tb testing.TB) syscallCounts {
	tb.Helper()
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
	var c syscallCounts
	fields := map[string]*int64{"read": &c.read, "write": &c.write, "sendmmsg": &c.sendmmsg, "recvmmsg": &c.recvmmsg, "sendmsg": &c.sendmsg, "recvmsg": &c.recvmsg}
	n := 0
	for _, line := range strings.Split(s.stderr.String(), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		name, ok := strings.CutPrefix(f[2], "syscalls:sys_enter_")
		if p := fields[name]; ok && p != nil {
			*p, _ = strconv.ParseInt(f[0], 10, 64)
			n++
		}
	}
	if n != len(fields) {
		tb.Fatalf("perf stat: %d of %d counts in %q", n, len(fields), s.stderr.String())
	}
	return c
}

// sealOpenSecondsPerGiB measures ChaCha20-Poly1305 on this goroutine
// (one core) as wireguard-go uses it, a seal and an open of each
// size-byte packet with an 8-byte counter nonce, and returns the seconds
// both take per GiB of packets.
func sealOpenSecondsPerGiB(tb testing.TB, size int) float64 {
	tb.Helper()
	var k [chacha20poly1305.KeySize]byte
	rand.Read(k[:])
	aead, err := chacha20poly1305.New(k[:])
	if err != nil {
		tb.Fatal(err)
	}
	msg := make([]byte, size)
	sealed := make([]byte, 0, size+chacha20poly1305.Overhead)
	opened := make([]byte, 0, size)
	var nonce [chacha20poly1305.NonceSize]byte
	// The time counted is this thread's CPU time: other programs on a
	// shared machine take turns on the core, but not from this count.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := func() time.Duration {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
			tb.Fatal(err)
		}
		return time.Duration(ts.Nano())
	}
	var n int64
	start := cpu()
	for cpu()-start < 300*time.Millisecond {
		for range 256 {
			nonce[4]++
			sealed = aead.Seal(sealed[:0], nonce[:], msg, nil)
			if opened, err = aead.Open(opened[:0], nonce[:], sealed, nil); err != nil {
				tb.Fatal(fmt.Errorf("open: %w", err))
			}
			n += int64(size)
		}
	}
	return (cpu() - start).Seconds() / (float64(n) / (1 << 30))
}

// BenchmarkChaCha20Poly1305 is the crypto part of the TUN ceiling alone:
// a seal and an open of a 1280-byte packet per operation (run with -cpu 1
// for one core's rate; MB/s counts each packet's bytes once).
func BenchmarkChaCha20Poly1305(b *testing.B) {
	var k [chacha20poly1305.KeySize]byte
	rand.Read(k[:])
	aead, err := chacha20poly1305.New(k[:])
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 1280)
	sealed := make([]byte, 0, len(msg)+chacha20poly1305.Overhead)
	opened := make([]byte, 0, len(msg))
	var nonce [chacha20poly1305.NonceSize]byte
	b.SetBytes(int64(len(msg)))
	for i := 0; b.Loop(); i++ {
		nonce[4], nonce[5] = byte(i), byte(i>>8)
		sealed = aead.Seal(sealed[:0], nonce[:], msg, nil)
		if opened, err = aead.Open(opened[:0], nonce[:], sealed, nil); err != nil {
			b.Fatal(err)
		}
	}
}
