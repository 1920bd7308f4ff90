//go:build linux

package main

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"beam.dev/beam/beamtest/nslab"
	"beam.dev/beam/localclient"
)

// inNetns runs f on a thread inside the network namespace ns (a name from
// "ip netns"). Sockets f creates stay in that namespace after it returns,
// so the benchmark's own goroutines can drive connections between
// namespaces without helper processes.
func inNetns(tb testing.TB, ns string, f func()) {
	tb.Helper()
	target, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		tb.Fatal(err)
	}
	defer target.Close()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("setns %s: %v", ns, err)
	}
	f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine rather
		// than run other goroutines in the wrong namespace.
		tb.Fatalf("setns back: %v", err)
	}
	runtime.UnlockOSThread()
}

// tunNode is a TUN-mode daemon in a lab namespace.
type tunNode struct {
	host   *nslab.Host
	proc   *nslab.Proc
	state  string
	socket string
	lc     *localclient.Client
}

// startTUNNode starts `beam daemon --tun` on h, with a resolver file of its
// own bind-mounted over /etc/resolv.conf in the daemon's mount namespace,
// so the machine's resolver is never touched.
func startTUNNode(tb testing.TB, bin, dir string, h *nslab.Host) *tunNode {
	tb.Helper()
	n := &tunNode{host: h, state: filepath.Join(dir, h.Name()), socket: filepath.Join(dir, h.Name()+".sock")}
	n.lc = &localclient.Client{Socket: n.socket}
	if err := os.MkdirAll(n.state, 0o700); err != nil {
		tb.Fatal(err)
	}
	resolv := filepath.Join(dir, h.Name()+".resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 198.51.100.53\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := h.Command(tb.Context(), bin, "--socket", n.socket, "--state", n.state, "daemon", "--tun", "--hostname", h.Name())
	// "ip netns exec NS PROGRAM..." -> "ip netns exec NS sh -c MOUNT-AND-EXEC FILE PROGRAM..."
	cmd.Args = append(cmd.Args[:4:4], append([]string{"sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv}, cmd.Args[4:]...)...)
	n.proc = h.StartCmd(cmd)
	ctx, cancel := context.WithTimeout(tb.Context(), 20*time.Second)
	defer cancel()
	if _, err := n.proc.WaitOutput(ctx, "daemon started"); err != nil {
		tb.Fatal(err)
	}
	return n
}

// tunPair is a coordinator and relay on a lab server and two TUN-mode
// daemons, alpha and beta, each in a namespace of its own with a public
// address on the lab internet (nslab.NATNone: the NAT routers'
// forwarding would be charged to the overlay).
type tunPair struct {
	lab         *nslab.Lab
	alpha, beta *tunNode
	betaIP      netip.Addr // beta's overlay IPv4 address
	coordPID    int
}

// newTUNPair starts the servers and both TUN-mode daemons, and brings both
// up. Needs root.
func newTUNPair(b *testing.B) *tunPair {
	bin := buildBeam(b)
	// Removed after the lab stopped the daemons (cleanups run last
	// first): a daemon saves its state as it stops.
	dir, err := os.MkdirTemp("", "beam-tun-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	lab := nslab.New(b)
	srv := lab.AddServer("srv")
	ctx := b.Context()
	srvIP := srv.Addr().String()
	derp := srv.Start(ctx, bin, "derp", "--addr", srvIP+":3340", "--stun-addr", srvIP+":3478", "--state", filepath.Join(dir, "derp"))
	coord := srv.Start(ctx, bin, "coordinator", "--addr", srvIP+":8080", "--data", filepath.Join(dir, "coord"),
		"--derp", "http://"+srvIP+":3340", "--stun", srvIP+":3478")
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for p, line := range map[*nslab.Proc]string{derp: "relay listening", coord: "coordinator listening"} {
		if _, err := p.WaitOutput(wctx, line); err != nil {
			b.Fatal(err)
		}
	}
	out, err := srv.Run(wctx, bin, "admin", "authkey", "create", "--coordinator", "http://"+srvIP+":8080",
		"--token-file", filepath.Join(dir, "coord", "admin.token"), "--reusable")
	if err != nil {
		b.Fatalf("auth key: %v", err)
	}
	authKey := strings.TrimSpace(string(out))
	p := &tunPair{lab: lab, coordPID: coord.PID()}
	p.alpha = startTUNNode(b, bin, dir, lab.AddNATHost("alpha", nslab.NATNone))
	p.beta = startTUNNode(b, bin, dir, lab.AddNATHost("beta", nslab.NATNone))
	for _, n := range []*tunNode{p.alpha, p.beta} {
		cmd := exec.CommandContext(wctx, bin, "--socket", n.socket, "--state", n.state, "up",
			"--coordinator", "http://"+srvIP+":8080", "--authkey", authKey, "--hostname", n.host.Name())
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("beam up %s: %v: %s", n.host.Name(), err, out)
		}
	}
	st, err := p.beta.lc.Status(wctx)
	if err != nil {
		b.Fatal(err)
	}
	p.betaIP = st.Self.IPs[0]
	return p
}

// path returns alpha's path to beta ("direct", "relay"), or "" while beta
// is not an online peer.
func (p *tunPair) path(ctx context.Context) string {
	st, err := p.alpha.lc.Status(ctx)
	if err != nil {
		return ""
	}
	for _, peer := range st.Peers {
		if peer.Name == "beta" && peer.Online {
			return peer.Path
		}
	}
	return ""
}

// BenchmarkDaemonTUNDirect is BenchmarkDaemonDirect with both daemons in
// kernel TUN mode (beam daemon --tun; see newTUNPair): bulk TCP from a
// socket in alpha's namespace to beta's overlay address, where a socket of
// beta's host accepts it (the kernel's TCP at both ends, WireGuard and the
// filter in the daemons), against raw loopback TCP in the same run. Needs
// root.
func BenchmarkDaemonTUNDirect(b *testing.B) {
	p := newTUNPair(b)
	ctx := b.Context()
	// The sink listens in beta's namespace on every address: peers reach
	// the host's own sockets.
	var sinkLn net.Listener
	var err error
	inNetns(b, p.beta.host.Namespace(), func() { sinkLn, err = net.Listen("tcp", ":0") })
	if err != nil {
		b.Fatal(err)
	}
	sink := serveCountSink(b, sinkLn)
	var oc net.Conn
	waitFor(b, 30*time.Second, "alpha connects to beta's overlay address", func() bool {
		inNetns(b, p.alpha.host.Namespace(), func() {
			oc, err = net.DialTimeout("tcp", net.JoinHostPort(p.betaIP.String(), strconv.Itoa(sink.port())), 5*time.Second)
		})
		return err == nil
	})
	defer oc.Close()
	rawSink := newCountSink(b)
	rc, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(rawSink.port()))
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	s := newBulkStream(oc, sink)
	s.sendBytes(b, 1<<20)
	waitFor(b, 30*time.Second, "a direct path to beta", func() bool { return p.path(ctx) == "direct" })
	bulkRounds(b, s, newBulkStream(rc, rawSink), []int{p.alpha.proc.PID(), p.beta.proc.PID()}, p.coordPID)
	if got := p.path(ctx); got != "direct" {
		b.Fatalf("after the rounds alpha reaches beta over %q, want direct", got)
	}
}
