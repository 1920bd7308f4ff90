package natlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
	"beam.dev/beam/localclient"
)

// Kernel TUN mode (beam daemon --tun) across real NATs: apps of the host
// reach peers by MagicDNS name through the host's own resolver and TCP,
// over a direct path (alpha and beta, easy NATs) and over the relay
// (carol, whose router drops UDP); peers reach the host's own sockets, the
// policy holds, and nothing is left behind after beam down or a crash.
//
// Every process of a TUN-mode device runs in a mount namespace of its own
// ("ip netns exec" makes one) where the device's resolver file is
// bind-mounted over /etc/resolv.conf: the daemon manages that file, and the
// machine's own resolver is never touched. The test checks that too.

// Ports of the TUN test, served on every address of the device's host.
const (
	tunHTTPPort   = 7003 // helperHello, allowed by the policy
	tunDeniedPort = 7002 // helperHello, denied by the policy
)

// helperHello serves HTTP on its first argument (a listen address),
// answering every request with "hello from NAME to REMOTE-IP\n", NAME its
// second argument. It prints "listening ADDR" once bound.
const helperHello = "natlab.hello"

var _ = nslab.RegisterHelper(helperHello, runHello)

func runHello(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return errors.New("want ADDR NAME")
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s to %s\n", args[1], host)
	})}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// tunPolicy lets every node reach the echo, sink and HTTP ports of every
// other, and nothing else (tunDeniedPort in particular).
var tunPolicy = fmt.Sprintf(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:%d,%d,%d"]}]}`,
	echoPort, sinkPort, tunHTTPPort)

// origResolvConf is each TUN device's resolver file before Beam: a
// nameserver from a documentation range (nothing answers there; the
// overlay's names never need it) and a search domain of its own.
const origResolvConf = "nameserver 198.51.100.53\nsearch example.org\noptions ndots:1\n"

// tunDevice is a device whose daemon runs in kernel TUN mode.
type tunDevice struct {
	*device
	resolv string // the file bind-mounted over the namespace's /etc/resolv.conf
	args   []string
}

// withResolv rewrites cmd, made by nslab's Host.Command or HelperCommand
// ("ip netns exec NS PROGRAM ARGS..."), to bind-mount file over
// /etc/resolv.conf in the mount namespace "ip netns exec" creates before
// it execs the program (so the PID stays the program's).
func withResolv(cmd *exec.Cmd, file string) *exec.Cmd {
	if len(cmd.Args) < 5 || cmd.Args[1] != "netns" || cmd.Args[2] != "exec" {
		panic(fmt.Sprintf("withResolv: not an ip netns exec command: %q", cmd.Args))
	}
	rest := append([]string{"sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, file}, cmd.Args[4:]...)
	cmd.Args = append(cmd.Args[:4:4], rest...)
	return cmd
}

// addTUNDevice adds a host of the given NAT kind and starts a TUN-mode
// daemon in it, plus the HTTP servers (on all addresses: in TUN mode peers
// reach the host's own sockets).
func (w *world) addTUNDevice(name string, kind nslab.NATKind) *tunDevice {
	w.t.Helper()
	h := w.lab.AddNATHost(name, kind)
	d := &tunDevice{device: &device{
		w: w, name: name, kind: kind, host: h, authKey: w.authKey,
		state:  filepath.Join(w.dir, name),
		socket: filepath.Join(w.dir, name+".sock"),
	}, resolv: filepath.Join(w.dir, name+".resolv.conf")}
	d.lc = &localclient.Client{Socket: d.socket}
	if err := os.MkdirAll(d.state, 0o700); err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(d.resolv, []byte(origResolvConf), 0o644); err != nil {
		w.t.Fatal(err)
	}
	ctx := w.t.Context()
	d.args = []string{"--socket", d.socket, "--state", d.state, "daemon", "--tun", "--hostname", name}
	d.startDaemon()
	d.echo = h.StartHelper(ctx, helperHello, ":"+strconv.Itoa(tunHTTPPort), name)
	d.sink = h.StartHelper(ctx, helperSink, ":"+strconv.Itoa(sinkPort))
	h.StartHelper(ctx, helperHello, ":"+strconv.Itoa(tunDeniedPort), name)
	w.t.Cleanup(d.stopStrayDaemon)
	w.devices = append(w.devices, d.device)
	return d
}

func (d *tunDevice) startDaemon() {
	d.daemon = d.host.StartCmd(withResolv(d.host.Command(d.w.t.Context(), d.w.bin, d.args...), d.resolv))
}

// run runs a program in the device's namespace with its resolver file.
func (d *tunDevice) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := withResolv(d.host.Command(ctx, name, args...), d.resolv)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %s: %w: %s", d.name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// curl fetches url from the device's namespace, resolving through its
// host resolver.
func (d *tunDevice) curl(ctx context.Context, url string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	out, err := d.run(ctx, "curl", "-sS", "--connect-timeout", strconv.Itoa(int(timeout/time.Second)), "--max-time", strconv.Itoa(int(timeout/time.Second)), url)
	return string(out), err
}

// leftovers describes what of TUN mode is still in place on the device:
// the device, overlay routes, and a resolver file that is not the
// original. Empty: nothing.
func (d *tunDevice) leftovers(ctx context.Context) []string {
	var out []string
	if b, err := d.host.Run(ctx, "ip", "-o", "link", "show"); err != nil {
		out = append(out, fmt.Sprintf("ip link: %v", err))
	} else if strings.Contains(string(b), "beam0") {
		out = append(out, "device beam0 still exists")
	}
	for _, fam := range []string{"-4", "-6"} {
		b, err := d.host.Run(ctx, "ip", fam, "route", "show", "table", "all")
		if err != nil {
			out = append(out, fmt.Sprintf("ip route: %v", err))
			continue
		}
		for line := range strings.Lines(string(b)) {
			if strings.Contains(line, "100.64.") || strings.Contains(line, "100.100.100.100") || strings.Contains(line, "fd7a:") || strings.Contains(line, "beam0") {
				out = append(out, "route left: "+strings.TrimSpace(line))
			}
		}
	}
	if b, err := os.ReadFile(d.resolv); err != nil || string(b) != origResolvConf {
		out = append(out, fmt.Sprintf("resolver file is %q, want the original %q (%v)", b, origResolvConf, err))
	}
	if _, err := os.Stat(filepath.Join(d.state, "hostdns.json")); err == nil {
		out = append(out, "hostdns.json record left in the state directory")
	}
	return out
}

// waitManaged waits until the device's resolver file names MagicDNS.
func (d *tunDevice) waitManaged(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(d.resolv)
		if strings.Contains(string(b), "nameserver 100.100.100.100\n") && strings.Contains(string(b), "example.org") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: resolver file not managed after %v: %q", d.name, limit, b)
		case <-tick.C:
		}
	}
}

func TestTUNModeByName(t *testing.T) {
	realResolv, realErr := os.ReadFile("/etc/resolv.conf")
	t.Cleanup(func() {
		if b, err := os.ReadFile("/etc/resolv.conf"); !bytes.Equal(b, realResolv) || (err == nil) != (realErr == nil) {
			t.Errorf("the machine's /etc/resolv.conf changed during the test: %q (%v), was %q (%v)", b, err, realResolv, realErr)
		}
	})
	w := newWorld(t, worldConfig{})
	ctx := t.Context()
	policy := filepath.Join(w.dir, "policy.hujson")
	if err := os.WriteFile(policy, []byte(tunPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := w.srv.Run(ctx, w.bin, "admin", "policy", "set", policy, "--coordinator", w.coordURL,
		"--token-file", filepath.Join(w.dir, "coord", "admin.token")); err != nil {
		t.Fatalf("policy set: %v: %s", err, out)
	}
	alpha, beta := w.addTUNDevice("alpha", nslab.NATEasy), w.addTUNDevice("beta", nslab.NATEasy)
	// carol's router drops UDP: she is reached through the relay only.
	carol := w.addTUNDevice("carol", nslab.NATUDPBlocked)
	if err := upPair(ctx, alpha.device, beta.device); err != nil {
		t.Fatal(err)
	}
	if err := carol.ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := carol.up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := alpha.waitPeer(ctx, "carol", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := alpha.waitManaged(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	bst, err := beta.lc.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ast, err := alpha.lc.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ast.TUN != "beam0" {
		t.Errorf("alpha's status names TUN device %q, want beam0", ast.TUN)
	}
	// fromAlphaTo reports whether got is peer's hello to one of alpha's
	// overlay addresses.
	fromAlphaTo := func(peer, got string) bool {
		for _, ip := range ast.Self.IPs {
			if got == "hello from "+peer+" to "+ip.String()+"\n" {
				return true
			}
		}
		return false
	}

	// By name, through the host's resolver and the kernel's TCP; beta's
	// server sees alpha's overlay address (no loopback forward).
	start := time.Now()
	got, err := alpha.curl(ctx, "http://beta:"+strconv.Itoa(tunHTTPPort)+"/", 20*time.Second)
	if err != nil {
		t.Fatalf("curl http://beta from alpha: %v", err)
	}
	if !fromAlphaTo("beta", got) {
		t.Fatalf("curl http://beta from alpha = %q, want beta's hello to one of alpha's overlay addresses %v", got, ast.Self.IPs)
	}
	t.Logf("alpha -> http://beta:%d by name in %v (beta is %v)", tunHTTPPort, time.Since(start), bst.Self.IPs)

	// The relay path carries TUN traffic the same way.
	if got, err := alpha.curl(ctx, "http://carol:"+strconv.Itoa(tunHTTPPort)+"/", 20*time.Second); err != nil || !fromAlphaTo("carol", got) {
		t.Fatalf("curl http://carol from alpha over the relay = %q, %v", got, err)
	}
	if p, _, err := alpha.peer(ctx, "carol"); err != nil || p.Path != pathRelay {
		t.Errorf("alpha's path to carol = %q (%v), want %q", p.Path, err, pathRelay)
	}

	// A bulk transfer through the sink checks integrity with the
	// device's offloads (segments larger than the MTU both ways).
	ctx5, cancel := context.WithTimeout(ctx, 60*time.Second)
	send := withResolv(alpha.host.HelperCommand(ctx5, helperSend, "beta:"+strconv.Itoa(sinkPort), strconv.Itoa(32<<20), "13"), alpha.resolv)
	out, err := send.CombinedOutput()
	cancel()
	if err != nil {
		t.Fatalf("32 MiB alpha -> beta by name: %v: %s", err, out)
	}
	t.Logf("alpha -> beta 32 MiB: %s", bytes.TrimSpace(out))

	// The policy holds in TUN mode: beta serves tunDeniedPort on all its
	// addresses, but beta's filter refuses alpha's SYN with a reset, as
	// the userspace stack does, so the connection fails fast instead of
	// timing out. The 20 s limit is far beyond a reset's round trip and
	// far below curl's connect timeout.
	if got, err := beta.curl(ctx, "http://127.0.0.1:"+strconv.Itoa(tunDeniedPort)+"/", 10*time.Second); err != nil || !strings.HasPrefix(got, "hello from beta") {
		t.Fatalf("beta's own denied-port server: %q, %v", got, err)
	}
	refuseStart := time.Now()
	if got, err := alpha.curl(ctx, "http://beta:"+strconv.Itoa(tunDeniedPort)+"/", 60*time.Second); err == nil {
		t.Fatalf("alpha reached beta's denied port %d: %q", tunDeniedPort, got)
	} else if !strings.Contains(err.Error(), "exit status 7") {
		t.Fatalf("alpha -> beta:%d failed with %v, want connection refused (exit 7): the SYN must be answered with a reset", tunDeniedPort, err)
	} else if d := time.Since(refuseStart); d > 20*time.Second {
		t.Fatalf("alpha -> beta:%d was refused after %v, want a fast refusal", tunDeniedPort, d)
	} else {
		t.Logf("alpha -> beta:%d refused in %v", tunDeniedPort, d)
	}

	// beam down takes everything away.
	if _, err := alpha.beam(ctx, nil, "down"); err != nil {
		t.Fatal(err)
	}
	if left := alpha.leftovers(ctx); len(left) > 0 {
		t.Fatalf("after beam down: %s", strings.Join(left, "; "))
	}

	// Back up, then killed: the kernel removes the device and its routes;
	// the next start restores the resolver file from its record.
	if err := alpha.up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := alpha.waitManaged(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(alpha.daemon.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-alpha.daemon.Done()
	if b, _ := os.ReadFile(alpha.resolv); !strings.Contains(string(b), "100.100.100.100") {
		t.Fatalf("after kill -9 the resolver file is %q; want it still managed (nothing restored it)", b)
	}
	alpha.startDaemon()
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := alpha.daemon.WaitOutput(waitCtx, "restored the host's DNS settings a previous run left"); err != nil {
		t.Fatalf("restarted daemon: %v", err)
	}
	// It rejoins on its own (it was up when killed) and manages the
	// file again, on top of the original rather than of its own copy.
	if err := alpha.waitManaged(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := alpha.curl(ctx, "http://beta:"+strconv.Itoa(tunHTTPPort)+"/", 20*time.Second); err != nil || !strings.HasPrefix(got, "hello from beta") {
		t.Fatalf("after restart: curl http://beta = %q, %v", got, err)
	}
	if _, err := alpha.beam(ctx, nil, "down"); err != nil {
		t.Fatal(err)
	}
	if left := alpha.leftovers(ctx); len(left) > 0 {
		t.Fatalf("after kill -9, restart and beam down: %s", strings.Join(left, "; "))
	}
	// A daemon that stops (SIGTERM) while up leaves nothing either.
	if err := beta.daemon.Stop(); err != nil {
		t.Logf("beta stop: %v", err)
	}
	if left := beta.leftovers(ctx); len(left) > 0 {
		t.Fatalf("after beta's daemon stopped: %s", strings.Join(left, "; "))
	}
}
