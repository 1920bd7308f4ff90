package nslab_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
	"go.uber.org/goleak"
)

// tcpBulk is a helper registered by this test package, to check the
// documented pattern for helpers of one's own: it connects to a
// HelperTCPEcho at args[0], sends args[1] random bytes, reads them back
// within args[2] (a duration) and prints "ok N" if they match.
var _ = nslab.RegisterHelper("tcpbulk", func(ctx context.Context, args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("want address, size and time limit, got %q", args)
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	limit, err := time.ParseDuration(args[2])
	if err != nil {
		return err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp4", args[0])
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(limit))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	want := make([]byte, n)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(br, got); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, want) {
		return errors.New("echoed bytes differ")
	}
	fmt.Printf("ok %d\n", n)
	return nil
})

// udpGSO is a helper that sends one write of args[1] segments of 1000
// bytes with UDP generic segmentation offload (as wireguard-go does) to a
// HelperUDPEcho at args[0], and prints "replies N" with the number of
// datagrams echoed within a second.
var _ = nslab.RegisterHelper("udpgso", func(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("want address and segment count, got %q", args)
	}
	segs, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	ua, err := net.ResolveUDPAddr("udp4", args[0])
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	rc.Control(func(fd uintptr) {
		const udpSegment = 103 // UDP_SEGMENT, linux/udp.h
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_UDP, udpSegment, 1000)
	})
	if serr != nil {
		return fmt.Errorf("UDP_SEGMENT: %w", serr)
	}
	if _, err := c.WriteToUDP(bytes.Repeat([]byte("g"), 1000*segs), ua); err != nil {
		return err
	}
	n := 0
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(time.Second))
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
		n++
	}
	fmt.Printf("replies %d\n", n)
	return nil
})

func TestNSLabHelperProcess(t *testing.T) { nslab.RunHelperProcess(t) }

// TestMain checks that no goroutine of a lab (process waiters, output
// copiers) outlives the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startEcho starts HelperUDPEcho and HelperTCPEcho on h at port and waits
// until both listen.
func startEcho(t *testing.T, h *nslab.Host, port int) {
	t.Helper()
	addr := netip.AddrPortFrom(h.Addr(), uint16(port)).String()
	for _, helper := range []string{nslab.HelperUDPEcho, nslab.HelperTCPEcho} {
		p := h.StartHelper(t.Context(), helper, addr)
		if _, err := p.WaitOutput(waitCtx(t), "listening"); err != nil {
			t.Fatal(err)
		}
	}
}

type probeResult struct {
	seen    netip.AddrPort // zero if no reply
	rtt     time.Duration
	timeout bool
}

// udpProbe runs HelperUDPProbe on h and returns its local address and the
// result per destination, in order.
func udpProbe(t *testing.T, h *nslab.Host, args ...string) (string, []probeResult) {
	t.Helper()
	out, err := h.RunHelper(waitCtx(t), nslab.HelperUDPProbe, args...)
	if err != nil {
		t.Fatal(err)
	}
	var local string
	var res []probeResult
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "local":
			local = f[1]
		case len(f) == 2 && f[0] == "timeout":
			res = append(res, probeResult{timeout: true})
		case len(f) == 4 && f[0] == "reply":
			ap, err := netip.ParseAddrPort(f[2])
			if err != nil {
				t.Fatalf("probe output %q: %v", line, err)
			}
			d, err := time.ParseDuration(f[3])
			if err != nil {
				t.Fatalf("probe output %q: %v", line, err)
			}
			res = append(res, probeResult{seen: ap, rtt: d})
		default:
			t.Fatalf("unexpected probe output line %q", line)
		}
	}
	return local, res
}

// tcpProbe runs HelperTCPProbe on h against dst and returns the address the
// echo server saw, or the error text.
func tcpProbe(t *testing.T, h *nslab.Host, dst string) (netip.AddrPort, string) {
	t.Helper()
	out, err := h.RunHelper(waitCtx(t), nslab.HelperTCPProbe, "-wait=5s", dst)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) == 3 && f[0] == "reply" {
		ap, err := netip.ParseAddrPort(f[2])
		if err != nil {
			t.Fatalf("tcp probe output %q: %v", out, err)
		}
		return ap, ""
	}
	return netip.AddrPort{}, string(out)
}

func hostPort(h *nslab.Host, port int) string {
	return netip.AddrPortFrom(h.Addr(), uint16(port)).String()
}

func TestPublicSeesPublicAddress(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)

	// No subtests: Lab methods may only fail the test that made the lab.
	for _, kind := range []nslab.NATKind{nslab.NATNone, nslab.NATEasy, nslab.NATHard, nslab.NATUDPBlocked} {
		h := lab.AddNATHost("h-"+kind.String(), kind)
		if kind == nslab.NATNone {
			if h.Router() != nil {
				t.Errorf("%v: Router() = %v, want nil", kind, h.Router())
			}
			if h.PublicAddr() != h.Addr() {
				t.Errorf("%v: PublicAddr() = %v, want Addr() %v", kind, h.PublicAddr(), h.Addr())
			}
		} else {
			r := h.Router()
			if r == nil || r.Kind() != kind || r.Addr() != h.PublicAddr() {
				t.Fatalf("%v: Router() = %v, want a %v router at %v", kind, r, kind, h.PublicAddr())
			}
			if h.Addr() == h.PublicAddr() || !r.LANAddr().IsValid() {
				t.Errorf("%v: host Addr() = %v, PublicAddr() = %v, router LAN %v; want a LAN address", kind, h.Addr(), h.PublicAddr(), r.LANAddr())
			}
		}
		if !netip.MustParsePrefix("203.0.113.0/24").Contains(h.PublicAddr()) {
			t.Errorf("%v: PublicAddr() = %v, want one in 203.0.113.0/24", kind, h.PublicAddr())
		}

		seen, errText := tcpProbe(t, h, hostPort(srv, 3478))
		if seen.Addr() != h.PublicAddr() {
			t.Errorf("%v: TCP: server saw %v (%s), want address %v", kind, seen, errText, h.PublicAddr())
		}
		if kind == nslab.NATUDPBlocked {
			continue
		}
		_, res := udpProbe(t, h, hostPort(srv, 3478))
		if len(res) != 1 || res[0].seen.Addr() != h.PublicAddr() {
			t.Errorf("%v: UDP: probe results %+v, want server to see %v", kind, res, h.PublicAddr())
		}
	}
}

func TestMapping(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	s1, s2 := lab.AddServer("stun1"), lab.AddServer("stun2")
	startEcho(t, s1, 3478)
	startEcho(t, s2, 3478)
	easy := lab.AddNATHost("easy", nslab.NATEasy)
	hard := lab.AddNATHost("hard", nslab.NATHard)

	{ // Easy NAT: one mapping per socket, keeping the source port.
		local, res := udpProbe(t, easy, "-local=0.0.0.0:41000", hostPort(s1, 3478), hostPort(s2, 3478))
		if len(res) != 2 || res[0].timeout || res[1].timeout {
			t.Fatalf("probe from %s: %+v, want two replies", local, res)
		}
		if res[0].seen != res[1].seen {
			t.Errorf("servers saw %v and %v, want the same mapping", res[0].seen, res[1].seen)
		}
		if res[0].seen.Port() != 41000 {
			t.Errorf("mapped port %d, want the source port 41000 kept", res[0].seen.Port())
		}
	}
	{ // Hard NAT: a mapping per destination.
		local, res := udpProbe(t, hard, "-local=0.0.0.0:41000", hostPort(s1, 3478), hostPort(s2, 3478))
		if len(res) != 2 || res[0].timeout || res[1].timeout {
			t.Fatalf("probe from %s: %+v, want two replies", local, res)
		}
		if res[0].seen.Addr() != hard.PublicAddr() || res[1].seen.Addr() != hard.PublicAddr() {
			t.Errorf("servers saw %v and %v, want address %v", res[0].seen, res[1].seen, hard.PublicAddr())
		}
		if res[0].seen.Port() == res[1].seen.Port() {
			t.Errorf("both servers saw port %d, want a different port per destination", res[0].seen.Port())
		}
	}
}

func TestUDPBlocked(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)

	h := lab.AddNATHost("blocked", nslab.NATUDPBlocked)
	if seen, errText := tcpProbe(t, h, hostPort(srv, 3478)); seen.Addr() != h.PublicAddr() {
		t.Errorf("TCP: server saw %v (%s), want %v", seen, errText, h.PublicAddr())
	}
	if _, res := udpProbe(t, h, "-tries=2", "-wait=300ms", hostPort(srv, 3478)); len(res) != 1 || !res[0].timeout {
		t.Errorf("UDP through a UDP-blocked NAT: %+v, want a timeout", res)
	}
	c := h.Router().Counters()
	if c.TCPOut == 0 || c.TCPIn == 0 || c.UDPOut != 0 || c.UDPIn != 0 {
		t.Errorf("counters %+v, want TCP both ways and no UDP forwarded", c)
	}
}

func TestBlockUDP(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)
	{
		e := lab.AddNATHost("easy", nslab.NATEasy)
		if _, res := udpProbe(t, e, hostPort(srv, 3478)); len(res) != 1 || res[0].timeout {
			t.Fatalf("UDP before BlockUDP: %+v, want a reply", res)
		}
		e.Router().BlockUDP(true)
		if _, res := udpProbe(t, e, "-tries=2", "-wait=300ms", hostPort(srv, 3478)); len(res) != 1 || !res[0].timeout {
			t.Errorf("UDP with BlockUDP(true): %+v, want a timeout", res)
		}
		if seen, errText := tcpProbe(t, e, hostPort(srv, 3478)); seen.Addr() != e.PublicAddr() {
			t.Errorf("TCP with BlockUDP(true): server saw %v (%s), want %v", seen, errText, e.PublicAddr())
		}
		e.Router().BlockUDP(false)
		if _, res := udpProbe(t, e, hostPort(srv, 3478)); len(res) != 1 || res[0].timeout {
			t.Errorf("UDP after BlockUDP(false): %+v, want a reply", res)
		}
	}
}

func TestUnsolicitedInboundDropped(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)
	client := lab.AddPublicClient("client")
	h := lab.AddNATHost("home", nslab.NATEasy)
	r := h.Router()

	// An echo on the router itself and one on the host behind it.
	startEcho(t, r.Host, 7000)
	startEcho(t, h, 7001)

	_, res := udpProbe(t, client, "-tries=2",
		hostPort(srv, 3478), // control: the probe itself works
		hostPort(r.Host, 7000),
		netip.AddrPortFrom(h.PublicAddr(), 7001).String(),
	)
	if len(res) != 3 {
		t.Fatalf("probe results %+v, want 3", res)
	}
	if res[0].timeout {
		t.Errorf("probe of a public server timed out")
	}
	if !res[1].timeout {
		t.Errorf("unsolicited UDP to the router's own port answered: %+v", res[1])
	}
	if !res[2].timeout {
		t.Errorf("unsolicited UDP to the host's port through the NAT answered: %+v", res[2])
	}
	if c := r.Counters(); c.DroppedIn < 4 {
		t.Errorf("DroppedIn = %d, want at least 4 (2 tries to each port)", c.DroppedIn)
	}
	// The host's echo is reachable from inside, so only the router's
	// filter stopped the probe.
	if _, res := udpProbe(t, h, hostPort(h, 7001)); len(res) != 1 || res[0].timeout {
		t.Errorf("host's own echo: %+v, want a reply", res)
	}
}

// punchPair starts HelperPunch on a and b, exchanges their mappings, and
// returns both processes.
func punchPair(t *testing.T, stun string, a, b *nslab.Host) (pa, pb *nslab.Proc, ma, mb string) {
	t.Helper()
	start := func(h *nslab.Host) (*nslab.Proc, io.Writer, string) {
		cmd := h.HelperCommand(t.Context(), nslab.HelperPunch, "-stun="+stun, "-local=0.0.0.0:42000")
		w, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p := h.StartCmd(cmd)
		line, err := p.WaitOutput(waitCtx(t), "mapped ")
		if err != nil {
			t.Fatal(err)
		}
		return p, w, strings.TrimPrefix(line, "mapped ")
	}
	pa, wa, ma := start(a)
	pb, wb, mb := start(b)
	fmt.Fprintf(wa, "peer %s\n", mb)
	fmt.Fprintf(wb, "peer %s\n", ma)
	return pa, pb, ma, mb
}

// stunLab returns a lab with a HelperUDPEcho server and its address.
func stunLab(t *testing.T) (*nslab.Lab, string) {
	lab := nslab.New(t)
	srv := lab.AddServer("stun")
	startEcho(t, srv, 3478)
	return lab, hostPort(srv, 3478)
}

func TestHolePunchEasyEasy(t *testing.T) {
	t.Parallel()
	lab, stun := stunLab(t)
	{
		a := lab.AddNATHost("ea", nslab.NATEasy)
		b := lab.AddNATHost("eb", nslab.NATEasy)
		pa, pb, ma, mb := punchPair(t, stun, a, b)
		for _, c := range []struct {
			p    *nslab.Proc
			peer string
		}{{pa, mb}, {pb, ma}} {
			line, err := c.p.WaitOutput(waitCtx(t), "direct ")
			if err != nil {
				t.Fatal(err)
			}
			if f := strings.Fields(line); len(f) != 3 || f[1] != c.peer {
				t.Errorf("got %q, want a pong from the peer's mapping %s", line, c.peer)
			}
		}
		for _, h := range []*nslab.Host{a, b} {
			if c := h.Router().Counters(); c.UDPIn == 0 || c.UDPOut == 0 {
				t.Errorf("%s router counters %+v, want UDP forwarded both ways", h.Name(), c)
			}
		}
	}
}

func TestHolePunchEasyHardFails(t *testing.T) {
	t.Parallel()
	lab, stun := stunLab(t)
	{
		a := lab.AddNATHost("fa", nslab.NATEasy)
		b := lab.AddNATHost("fb", nslab.NATHard)
		pa, pb, _, _ := punchPair(t, stun, a, b)
		ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
		defer cancel()
		if line, err := pa.WaitOutput(ctx, "direct "); err == nil {
			t.Errorf("easy side punched through a hard NAT with one socket: %q", line)
		}
		if line, err := pb.WaitOutput(ctx, "direct "); err == nil {
			t.Errorf("hard side punched through with one socket: %q", line)
		}
		if c := a.Router().Counters(); c.DroppedIn == 0 {
			t.Errorf("easy router counters %+v, want the hard side's pings dropped", c)
		}
	}
}

func TestFlushConntrack(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)
	h := lab.AddNATHost("hard", nslab.NATHard)
	dst := hostPort(srv, 3478)

	probe := func() netip.AddrPort {
		t.Helper()
		_, res := udpProbe(t, h, "-local=0.0.0.0:43000", dst)
		if len(res) != 1 || res[0].timeout {
			t.Fatalf("probe: %+v, want a reply", res)
		}
		return res[0].seen
	}
	first := probe()
	if again := probe(); again != first {
		t.Fatalf("second probe from the same port mapped to %v, want the same %v while conntrack remembers", again, first)
	}
	h.Router().FlushConntrack()
	if after := probe(); after == first {
		t.Errorf("after FlushConntrack the mapping is still %v, want a new random port", after)
	}
	out, err := h.Router().Run(waitCtx(t), "conntrack", "-L")
	if err != nil {
		t.Fatal(err)
	}
	h.Router().FlushConntrack()
	out2, err := h.Router().Run(waitCtx(t), "conntrack", "-L", "-p", "udp")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("dport=3478")) || bytes.Contains(out2, []byte("dport=3478")) {
		t.Errorf("conntrack -L before flush:\n%s\nafter:\n%s\nwant the flow listed only before", out, out2)
	}
}

func TestNetem(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)
	h := lab.AddNATHost("home", nslab.NATEasy)
	r := h.Router()
	dst := hostPort(srv, 3478)

	rtt := func() time.Duration {
		t.Helper()
		_, res := udpProbe(t, h, "-wait=1s", dst, dst, dst)
		var rtts []time.Duration
		for _, r := range res {
			if !r.timeout {
				rtts = append(rtts, r.rtt)
			}
		}
		if len(rtts) == 0 {
			t.Fatalf("no replies: %+v", res)
		}
		return slices.Min(rtts)
	}
	// Bounds are loose where a loaded machine only makes things slower;
	// 90ms still tells an unimpaired link from one with 100ms added.
	base := rtt()
	if base > 90*time.Millisecond {
		t.Fatalf("base RTT %v, want under 90ms", base)
	}

	r.SetNetem("delay 50ms")
	if got := rtt(); got < 95*time.Millisecond || got > 400*time.Millisecond {
		t.Errorf("RTT with delay 50ms each way = %v, want about 100ms (base %v)", got, base)
	}
	// TCP with GSO and checksum offload survives the emulator. What
	// counts is that all 4 MB come back intact, not how fast: unloaded
	// it takes about a second over the 100 ms RTT, but on a loaded
	// machine netem's queue and the CPU both stall it, and 20 s was seen
	// to run out, so the budget is generous.
	startEcho(t, srv, 3479)
	const bulkLimit = 2 * time.Minute
	bulk := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), bulkLimit+10*time.Second)
		defer cancel()
		start := time.Now()
		out, err := h.RunHelper(ctx, "tcpbulk", hostPort(srv, 3479), "4000000", bulkLimit.String())
		if err != nil || !bytes.HasPrefix(out, []byte("ok 4000000")) {
			t.Errorf("TCP bulk transfer %s: %q, %v", what, out, err)
		}
		t.Logf("TCP bulk transfer %s: 4 MB echoed in %v", what, time.Since(start).Round(time.Millisecond))
	}
	bulk("with delay")
	// So do UDP packets sent with segmentation offload.
	if out, err := h.RunHelper(waitCtx(t), "udpgso", dst, "8"); err != nil || string(out) != "replies 8\n" {
		t.Errorf("UDP GSO through the emulator: %q, %v; want replies 8", out, err)
	}

	r.SetNetem("loss 100%")
	if _, res := udpProbe(t, h, "-tries=2", "-wait=200ms", dst); len(res) != 1 || !res[0].timeout {
		t.Errorf("with loss 100%%: %+v, want a timeout", res)
	}

	r.ClearNetem()
	if got := rtt(); got > 90*time.Millisecond {
		t.Errorf("RTT after ClearNetem = %v, want under 90ms", got)
	}
	bulk("after ClearNetem")
	// Setting it again reuses the emulator.
	r.SetNetem("delay 30ms 5ms loss 0%")
	if got := rtt(); got < 45*time.Millisecond {
		t.Errorf("RTT with delay 30ms±5ms = %v, want at least 50ms", got)
	}
}

func TestBuildBinary(t *testing.T) {
	t.Parallel()
	bin := nslab.BuildBinary(t, "./testdata/hello")
	if again := nslab.BuildBinary(t, "./testdata/hello"); again != bin {
		t.Errorf("second BuildBinary = %q, want the cached %q", again, bin)
	}
	lab := nslab.New(t)
	h := lab.AddNATHost("home", nslab.NATEasy)
	out, err := h.Run(waitCtx(t), bin)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out))
	want := []string{"127.0.0.1", h.Addr().String()}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("addresses seen by the binary in the namespace: %q, want %q", got, want)
	}
	if _, err := h.Run(waitCtx(t), bin+"-missing"); err == nil {
		t.Errorf("running a missing program succeeded")
	}
}

func netnsWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names
}

func TestClose(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	h := lab.AddNATHost("home", nslab.NATHard)
	startEcho(t, srv, 3478)
	sleeper := h.Start(t.Context(), "sleep", "1000")
	h.Router().SetNetem("delay 1ms")

	prefix := lab.Prefix()
	if !strings.HasPrefix(h.Namespace(), prefix) || !strings.HasPrefix(h.Router().Namespace(), prefix) {
		t.Fatalf("namespaces %q and %q lack the lab prefix %q", h.Namespace(), h.Router().Namespace(), prefix)
	}
	if got := netnsWithPrefix(t, prefix); len(got) != 4 {
		t.Errorf("namespaces before Close: %q, want 4 (inet, server, router, host)", got)
	}
	// A lab program looking a name up through the system resolver asks the
	// namespace's loopback, never the machine's resolver, and fails at once.
	out, err := h.Run(t.Context(), "cat", "/etc/resolv.conf")
	if err != nil || !strings.Contains(string(out), "nameserver 127.0.0.1\n") || strings.Count(string(out), "nameserver") != 1 {
		t.Errorf("the host's /etc/resolv.conf: %q, %v; want only nameserver 127.0.0.1", out, err)
	}

	lab.Close()
	if got := netnsWithPrefix(t, prefix); len(got) != 0 {
		t.Errorf("namespaces left after Close: %q", got)
	}
	if _, err := os.Stat("/etc/netns/" + h.Namespace()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the namespace's resolver directory after Close: %v, want it removed", err)
	}
	select {
	case <-sleeper.Done():
	default:
		t.Fatalf("process %d still running after Close", sleeper.PID())
	}
	if err := syscall.Kill(sleeper.PID(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) after Close = %v, want ESRCH", sleeper.PID(), err)
	}
	if err := sleeper.Stop(); err != nil {
		t.Errorf("Stop of a process stopped by Close = %v, want nil", err)
	}
	lab.Close() // idempotent
}

func TestProcOutput(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	h := lab.AddServer("server")
	p := h.Start(t.Context(), "sh", "-c", "echo one; echo two >&2; echo three; exit 3")
	if line, err := p.WaitOutput(waitCtx(t), "tw"); err != nil || line != "two" {
		t.Errorf("WaitOutput(tw) = %q, %v; want two from stderr", line, err)
	}
	if ee, ok := errors.AsType[*exec.ExitError](p.Wait()); !ok || ee.ExitCode() != 3 {
		t.Errorf("Wait() = %v, want exit status 3", p.Wait())
	}
	if got, want := string(p.Output()), "one\nthree\n"; got != want {
		t.Errorf("Output() = %q, want %q", got, want)
	}
	if _, err := p.WaitOutput(waitCtx(t), "never"); err == nil {
		t.Errorf("WaitOutput of text never printed by an exited process succeeded")
	}
	if err := p.Stop(); err == nil {
		t.Errorf("Stop of a process that exited with status 3 = nil, want its error")
	}
}

func TestSharedLAN(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)
	alice := lab.AddNATHost("alice", nslab.NATEasy)
	carol := alice.Router().AddHost("carol")

	if carol.Router() != alice.Router() || carol.PublicAddr() != alice.PublicAddr() {
		t.Fatalf("carol: router %v, public %v; want alice's %v, %v", carol.Router(), carol.PublicAddr(), alice.Router(), alice.PublicAddr())
	}
	if carol.Addr() != alice.Addr().Next() {
		t.Errorf("carol.Addr() = %v, want the next LAN address after alice's %v", carol.Addr(), alice.Addr())
	}

	// LAN neighbours talk directly, without NAT.
	startEcho(t, alice, 7000)
	if _, res := udpProbe(t, carol, hostPort(alice, 7000)); len(res) != 1 || res[0].seen.Addr() != carol.Addr() {
		t.Errorf("carol to alice on the LAN: %+v, want alice to see %v", res, carol.Addr())
	}

	// Two hosts behind one NAT using the same local port get different
	// public ports: the first keeps it, the second is moved.
	_, ra := udpProbe(t, alice, "-local=0.0.0.0:44000", hostPort(srv, 3478))
	_, rc := udpProbe(t, carol, "-local=0.0.0.0:44000", hostPort(srv, 3478))
	if len(ra) != 1 || len(rc) != 1 || ra[0].timeout || rc[0].timeout {
		t.Fatalf("probes: alice %+v, carol %+v; want replies", ra, rc)
	}
	if ra[0].seen != netip.AddrPortFrom(alice.PublicAddr(), 44000) {
		t.Errorf("server saw alice as %v, want %v:44000", ra[0].seen, alice.PublicAddr())
	}
	if rc[0].seen.Addr() != alice.PublicAddr() || rc[0].seen.Port() == 44000 {
		t.Errorf("server saw carol as %v, want %v with another port than alice's", rc[0].seen, alice.PublicAddr())
	}

	// No hairpinning: carol cannot reach alice's mapping through the WAN.
	if _, res := udpProbe(t, carol, "-tries=2", "-wait=200ms", ra[0].seen.String()); len(res) != 1 || !res[0].timeout {
		t.Errorf("carol to alice's public mapping %v: %+v, want a timeout", ra[0].seen, res)
	}
}

func TestReapStale(t *testing.T) {
	// A pid that no longer exists: a process that has been waited for.
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("nsl-0badc0-%d-h-stale", done.Process.Pid)
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", stale).Run() })
	orphan := exec.Command("ip", "netns", "exec", stale, "sleep", "1000")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { orphan.Process.Kill() })

	lab := nslab.New(t)
	if got := netnsWithPrefix(t, stale); len(got) != 0 {
		t.Errorf("stale namespace still listed after New: %q", got)
	}
	if err := orphan.Wait(); err == nil {
		t.Errorf("process in the stale namespace exited cleanly, want it killed")
	}
	if got := netnsWithPrefix(t, lab.Prefix()); len(got) != 1 {
		t.Errorf("lab namespaces %q, want only inet", got)
	}
}

// TestSetTCPCongestionControl checks that the lab takes the first
// congestion control this host allows namespaces to choose, skipping one
// the kernel does not know, and that its namespaces then use it.
func TestSetTCPCongestionControl(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	srv := lab.AddServer("server")
	got := lab.SetTCPCongestionControl("no-such-cc", "reno")
	if got != "reno" {
		t.Fatalf("SetTCPCongestionControl chose %q, want reno (the only allowed one listed)", got)
	}
	out, err := srv.Run(waitCtx(t), "cat", "/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Fatal(err)
	}
	if cc := strings.TrimSpace(string(out)); cc != "reno" {
		t.Errorf("namespace's congestion control is %q, want reno", cc)
	}
	allowed, err := nslab.AllowedTCPCongestionControls()
	if err != nil || !slices.Contains(allowed, "reno") {
		t.Errorf("AllowedTCPCongestionControls() = %q, %v; want a list with reno", allowed, err)
	}
}

func hostPort6(h *nslab.Host, port int) string {
	return netip.AddrPortFrom(h.Addr6(), uint16(port)).String()
}

// TestIPv6 checks the IPv6 of a lab with EnableIPv6: every host has a
// global address that the internet sees unchanged (no NAT66) whatever its
// router's IPv4 NAT kind, UDP-blocked included; routers drop unsolicited
// inbound IPv6 but let two hosts behind them punch a hole; IPv4 works as
// without IPv6.
func TestIPv6(t *testing.T) {
	t.Parallel()
	lab := nslab.New(t)
	lab.EnableIPv6()
	srv := lab.AddServer("server")
	startEcho(t, srv, 3478)
	for _, helper := range []string{nslab.HelperUDPEcho, nslab.HelperTCPEcho} {
		p := srv.StartHelper(t.Context(), helper, hostPort6(srv, 3478))
		if _, err := p.WaitOutput(waitCtx(t), "listening"); err != nil {
			t.Fatal(err)
		}
	}
	if want := netip.MustParseAddr("2001:db8::10"); srv.Addr6() != want {
		t.Errorf("server Addr6() = %v, want %v (the last byte of %v)", srv.Addr6(), want, srv.Addr())
	}
	internet := netip.MustParsePrefix("2001:db8::/64")
	hosts := map[nslab.NATKind]*nslab.Host{}
	for _, kind := range []nslab.NATKind{nslab.NATNone, nslab.NATEasy, nslab.NATHard, nslab.NATUDPBlocked} {
		h := lab.AddNATHost("h-"+kind.String(), kind)
		hosts[kind] = h
		a6 := h.Addr6()
		if !netip.MustParsePrefix("2001:db8::/32").Contains(a6) {
			t.Fatalf("%v: Addr6() = %v, want one in 2001:db8::/32", kind, a6)
		}
		if r := h.Router(); r != nil {
			if internet.Contains(a6) || !internet.Contains(r.Addr6()) {
				t.Errorf("%v: host Addr6 %v, router Addr6 %v; want the host on a LAN /64 and the router on %v", kind, a6, r.Addr6(), internet)
			}
		} else if !internet.Contains(a6) {
			t.Errorf("%v: Addr6() = %v, want one in %v", kind, a6, internet)
		}

		_, res := udpProbe(t, h, "-local=[::]:0", hostPort6(srv, 3478))
		if len(res) != 1 || res[0].seen.Addr() != a6 {
			t.Errorf("%v: UDP over IPv6: probe results %+v, want the server to see %v", kind, res, a6)
		}
		if seen, errText := tcpProbe(t, h, hostPort6(srv, 3478)); seen.Addr() != a6 {
			t.Errorf("%v: TCP over IPv6: server saw %v (%s), want %v", kind, seen, errText, a6)
		}
		if seen, errText := tcpProbe(t, h, hostPort(srv, 3478)); seen.Addr() != h.PublicAddr() {
			t.Errorf("%v: TCP over IPv4: server saw %v (%s), want %v", kind, seen, errText, h.PublicAddr())
		}
		_, res = udpProbe(t, h, "-tries=2", "-wait=300ms", hostPort(srv, 3478))
		if got, want := len(res) == 1 && !res[0].timeout, kind != nslab.NATUDPBlocked; got != want {
			t.Errorf("%v: UDP over IPv4: probe results %+v, want a reply: %v", kind, res, want)
		}
	}
	if c := hosts[nslab.NATUDPBlocked].Router().Counters(); c.UDPOut != 0 || c.UDPOut6 == 0 || c.UDPIn6 == 0 {
		t.Errorf("UDP-blocked router counters %+v, want IPv6 UDP both ways and no IPv4 UDP", c)
	}

	// Unsolicited inbound IPv6 is dropped, to the host and to the router.
	easy := hosts[nslab.NATEasy]
	startEcho6 := func(h *nslab.Host, port int) {
		p := h.StartHelper(t.Context(), nslab.HelperUDPEcho, hostPort6(h, port))
		if _, err := p.WaitOutput(waitCtx(t), "listening"); err != nil {
			t.Fatal(err)
		}
	}
	startEcho6(easy, 7001)
	startEcho6(easy.Router().Host, 7000)
	before := easy.Router().Counters().DroppedIn6
	_, res := udpProbe(t, srv, "-local=[::]:0", "-tries=2", "-wait=300ms", hostPort6(easy, 7001), hostPort6(easy.Router().Host, 7000))
	if len(res) != 2 || !res[0].timeout || !res[1].timeout {
		t.Errorf("unsolicited IPv6 UDP to a host and to its router: %+v, want timeouts", res)
	}
	if d := easy.Router().Counters().DroppedIn6 - before; d < 4 {
		t.Errorf("DroppedIn6 grew by %d, want at least 4 (2 tries to each)", d)
	}
	// The public host is reachable unsolicited: it has no router.
	none := hosts[nslab.NATNone]
	startEcho6(none, 7002)
	if _, res := udpProbe(t, srv, "-local=[::]:0", hostPort6(none, 7002)); len(res) != 1 || res[0].seen.Addr() != srv.Addr6() {
		t.Errorf("IPv6 UDP to a public host: %+v, want a reply seeing %v", res, srv.Addr6())
	}

	// Two hosts behind routers (one a hard NAT for IPv4) punch a hole over
	// IPv6, their "mappings" being their own addresses.
	hard := hosts[nslab.NATHard]
	start := func(h *nslab.Host) (*nslab.Proc, io.Writer, string) {
		cmd := h.HelperCommand(t.Context(), nslab.HelperPunch, "-stun="+hostPort6(srv, 3478), "-local=[::]:42000")
		w, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p := h.StartCmd(cmd)
		line, err := p.WaitOutput(waitCtx(t), "mapped ")
		if err != nil {
			t.Fatal(err)
		}
		return p, w, strings.TrimPrefix(line, "mapped ")
	}
	pa, wa, ma := start(easy)
	pb, wb, mb := start(hard)
	if ma != hostPort6(easy, 42000) || mb != hostPort6(hard, 42000) {
		t.Errorf("mapped %s and %s, want the hosts' own addresses %s and %s", ma, mb, hostPort6(easy, 42000), hostPort6(hard, 42000))
	}
	fmt.Fprintf(wa, "peer %s\n", mb)
	fmt.Fprintf(wb, "peer %s\n", ma)
	for _, c := range []struct {
		p    *nslab.Proc
		peer string
	}{{pa, mb}, {pb, ma}} {
		line, err := c.p.WaitOutput(waitCtx(t), "direct ")
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(line); len(f) != 3 || f[1] != c.peer {
			t.Errorf("got %q, want a pong from the peer's address %s", line, c.peer)
		}
	}
}
