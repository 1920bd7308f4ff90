package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// daemonProc is a `beam daemon` the test runs in the foreground.
type daemonProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
	err  error         // its exit status, set before done is closed

	mu  sync.Mutex
	out bytes.Buffer
}

func (p *daemonProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *daemonProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// startDaemonProc runs `beam daemon` with args (which come after the
// instance flags of d) and stops it when the test ends.
func (d *device) startDaemonProc(args ...string) *daemonProc {
	t := d.c.t
	p := &daemonProc{done: make(chan struct{})}
	p.cmd = exec.Command(d.c.bin, d.args(append([]string{"daemon"}, args...)...)...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// waitAlive waits until the daemon answers `beam status`.
func (d *device) waitAlive(p *daemonProc) {
	d.c.t.Helper()
	waitFor(d.c.t, 20*time.Second, d.name+" daemon answers", func() bool {
		select {
		case <-p.done:
			d.c.t.Fatalf("daemon exited: %v\n%s", p.err, p.output())
		default:
		}
		_, _, err := d.c.beam(nil, d.args("status", "--json")...)
		return err == nil
	})
}

// TestDaemonStateDir: `beam daemon` creates a missing state directory, and
// a second daemon on the same state directory (even on another socket) is
// refused with a message naming the first one's PID and socket.
func TestDaemonStateDir(t *testing.T) {
	c := newCluster(t)
	d := c.device("solo")
	d.state = filepath.Join(c.dir, "does", "not", "exist")
	first := d.startDaemonProc()
	d.waitAlive(first)
	if fi, err := os.Stat(d.state); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v, %v; want a 0700 directory", fi, err)
	}

	other := *d
	other.socket = filepath.Join(c.dir, "other.sock")
	second := other.startDaemonProc()
	select {
	case <-second.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("second daemon on the same state dir still runs:\n%s", second.output())
	}
	var ee *exec.ExitError
	if !errors.As(second.err, &ee) {
		t.Fatalf("second daemon: exit %v, want a failure", second.err)
	}
	msg := second.output()
	for _, want := range []string{strconv.Itoa(first.cmd.Process.Pid), d.socket} {
		if !strings.Contains(msg, want) {
			t.Errorf("second daemon's message %q does not name %s", msg, want)
		}
	}
	// The first daemon is unharmed.
	if _, _, err := c.beam(nil, d.args("status")...); err != nil {
		t.Fatalf("first daemon after the second was refused: %v", err)
	}
}

// daemonPID reads the PID a daemon recorded in its state directory.
func (d *device) daemonPID() int {
	b, err := os.ReadFile(filepath.Join(d.state, "daemon.pid"))
	if err != nil {
		d.c.t.Fatalf("daemon pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		d.c.t.Fatal(err)
	}
	return pid
}

// processGone reports whether pid has exited (or is a zombie nobody reaped).
func processGone(pid int) bool {
	if p, err := os.FindProcess(pid); err != nil || p.Signal(syscall.Signal(0)) != nil {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state is the field after the parenthesized command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

// TestSettingsLive: settings given to `beam up` on a running daemon apply at
// once (MagicDNS on a new loopback address answers dig), `beam set
// --socks5` opens a working proxy, both survive a daemon restart, and
// `beam daemon stop` stops the daemon.
func TestSettingsLive(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable", "--expiry", "1h"))
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp("--authkey", key)
	beta.mustUp("--authkey", key)
	var betaIP string
	waitFor(t, 15*time.Second, "alpha sees beta", func() bool {
		for _, p := range alpha.status().Peers {
			if p.Name == "beta" && len(p.IPs) > 0 {
				betaIP = p.IPs[0].String()
				return true
			}
		}
		return false
	})
	domain := alpha.status().DNSDomain

	dnsPort := freePort(t)
	dig := func() (string, error) {
		out, err := exec.Command("dig", "+short", "+time=2", "+tries=2", "-p", strconv.Itoa(dnsPort), "@127.0.0.1", "beta."+domain).Output()
		return strings.TrimSpace(string(out)), err
	}
	pidBefore := alpha.daemonPID()
	alpha.mustUp("--dns-listen", "127.0.0.1:"+strconv.Itoa(dnsPort))
	if got, err := dig(); err != nil || got != betaIP {
		t.Fatalf("dig beta after beam up --dns-listen on a running daemon = %q, %v; want %s", got, err, betaIP)
	}
	if pid := alpha.daemonPID(); pid != pidBefore {
		t.Fatalf("beam up replaced the daemon (pid %d, was %d); want the running one to take the setting", pid, pidBefore)
	}

	hsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello from beta") })}
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hsrv.Serve(hln)
	t.Cleanup(func() { hsrv.Close() })
	socks := "127.0.0.1:" + strconv.Itoa(freePort(t))
	curl := func() (string, error) {
		out, err := exec.Command("curl", "-sS", "--max-time", "20", "--socks5-hostname", socks,
			fmt.Sprintf("http://beta:%d/", hln.Addr().(*net.TCPAddr).Port)).CombinedOutput()
		return string(out), err
	}
	c.mustBeam(alpha.args("set", "--socks5", socks)...)
	if got, err := curl(); err != nil || got != "hello from beta" {
		t.Fatalf("curl through the SOCKS5 proxy beam set opened: %q, %v", got, err)
	}
	if got := c.mustBeam(alpha.args("set")...); !strings.Contains(got, socks) || !strings.Contains(got, strconv.Itoa(dnsPort)) {
		t.Fatalf("beam set without flags printed %q; want the SOCKS5 and DNS addresses", got)
	}

	// beam daemon stop: the daemon exits; the settings stay in the state.
	c.mustBeam(alpha.args("daemon", "stop")...)
	waitFor(t, 20*time.Second, "alpha's daemon exits", func() bool { return processGone(pidBefore) })
	if _, _, err := c.beam(nil, alpha.args("status")...); err == nil {
		t.Fatal("beam status answers after beam daemon stop")
	}

	// Restarted without any setting on its command line, it serves both again.
	p := alpha.startDaemonProc()
	alpha.waitAlive(p)
	waitFor(t, 20*time.Second, "alpha rejoins after the restart", func() bool { return alpha.status().State == apitype.StateRunning })
	if got, err := curl(); err != nil || got != "hello from beta" {
		t.Fatalf("curl through SOCKS5 after a daemon restart: %q, %v", got, err)
	}
	if got, err := dig(); err != nil || got != betaIP {
		t.Fatalf("dig beta after a daemon restart = %q, %v; want %s", got, err, betaIP)
	}

	// Turning the proxy off closes it.
	c.mustBeam(alpha.args("set", "--socks5=")...)
	if conn, err := net.Dial("tcp", socks); err == nil {
		conn.Close()
		t.Fatalf("SOCKS5 still accepts on %s after beam set --socks5=", socks)
	}

	// A new hostname renames the node when the name is free; a taken one
	// is reported and changes nothing.
	c.mustBeam(alpha.args("set", "--hostname", "alpha2")...)
	waitFor(t, 10*time.Second, "beta resolves alpha2", func() bool {
		out, _, err := c.beam(nil, beta.args("dns", "query", "alpha2")...)
		return err == nil && strings.Contains(out, "NOERROR")
	})
	_, errOut, err := c.beam(nil, alpha.args("set", "--hostname", "beta")...)
	if err != nil || !strings.Contains(errOut, "taken") {
		t.Fatalf("beam set --hostname to a taken name: err=%v stderr=%q; want a note that it is taken", err, errOut)
	}
	if st := alpha.status(); st.Self == nil || st.Self.Name != "alpha2" {
		t.Fatalf("after asking for a taken name: self %+v, want alpha2", st.Self)
	}

	// A new WireGuard port: the engine moves to it, and peers reach it there.
	port := strconv.Itoa(freePort(t))
	c.mustBeam(alpha.args("set", "--port", port)...)
	waitFor(t, 30*time.Second, "beta's direct path to alpha2 on port "+port, func() bool {
		c.beam(nil, beta.args("ping", "alpha2", "-c", "1")...)
		for _, p := range beta.status().Peers {
			if p.Name == "alpha2" && p.Path == "direct" && strings.HasSuffix(p.Endpoint, ":"+port) {
				return true
			}
		}
		return false
	})
}

// TestUpDeadCoordinator: `beam up` that starts a daemon and cannot join
// stops that daemon again and says why.
func TestUpDeadCoordinator(t *testing.T) {
	c := newCluster(t)
	c.stopCoordinator()
	d := c.device("lonely")
	out, errOut, err := c.beam(nil, d.args("up", "--coordinator", c.url, "--authkey", "nokey", "--timeout", "60s")...)
	if err == nil {
		t.Fatalf("beam up against a dead coordinator exited 0: %q", out)
	}
	if !strings.Contains(errOut, "stopped the daemon") {
		t.Errorf("beam up stderr %q does not say it stopped the daemon", errOut)
	}
	// The daemon it started has exited: nothing answers, and the state
	// directory is free for the next daemon.
	if _, _, err := c.beam(nil, d.args("status")...); err == nil {
		t.Fatal("a daemon still answers after the failed beam up")
	}
	b, _ := os.ReadFile(filepath.Join(d.state, "daemon.lock"))
	var holder struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(b, &holder); err != nil || holder.PID == 0 {
		t.Fatalf("daemon.lock = %q: %v; want the PID of the daemon beam up started", b, err)
	}
	waitFor(t, 10*time.Second, "the started daemon's process is gone", func() bool { return processGone(holder.PID) })
	p := d.startDaemonProc()
	d.waitAlive(p)
}

// TestCoordinatorReset: a device whose coordinator was recreated with a
// fresh data directory (same URL, so a new machine key) refuses it, as
// it would someone posing as the coordinator: beam up says so and how to
// recover, and beam logout then beam up --authkey with a key of the new
// coordinator joins it again.
func TestCoordinatorReset(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable", "--expiry", "1h"))
	d := c.device("phoenix")
	d.mustUp("--authkey", key)

	c.stopCoordinator()
	if err := os.RemoveAll(filepath.Join(c.dir, "coord")); err != nil {
		t.Fatal(err)
	}
	c.startCoordinator()
	tok, err := os.ReadFile(filepath.Join(c.dir, "coord", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(tok))
	resp, err := http.Get(c.url + "/key")
	if err != nil {
		t.Fatal(err)
	}
	newKey, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	// The daemon, still up, keeps refusing the new coordinator; status
	// says so, and how to recover, without a beam up to ask.
	var st *apitype.Status
	waitFor(t, 60*time.Second, "status reports the refused coordinator key", func() bool {
		st = d.status()
		return st.CoordinatorKeyChange != nil
	})
	kc := st.CoordinatorKeyChange
	if kc.Got != strings.TrimSpace(string(newKey)) || kc.Pinned == "" || kc.Pinned == kc.Got || !strings.Contains(kc.Recovery, "beam logout") || !strings.Contains(kc.Recovery, "--authkey") {
		t.Errorf("status coordinator_key_change = %+v; want the new coordinator's key %s offered, the old one pinned, and the recovery", kc, newKey)
	}
	if h := strings.Join(st.Health, "\n"); !strings.Contains(h, "machine key") || !strings.Contains(h, "beam logout") {
		t.Errorf("status health = %q; want the refused machine key and beam logout", st.Health)
	}
	if got := c.mustBeam(d.args("status")...); !strings.Contains(got, "machine key") || !strings.Contains(got, "beam logout") || !strings.Contains(got, "--authkey") {
		t.Errorf("beam status after the reset = %q; want it to say the machine key changed and how to recover", got)
	}

	out, errOut, err := c.beam(nil, d.args("up")...)
	if err == nil || !strings.Contains(errOut, "machine key") || !strings.Contains(errOut, "beam logout") || !strings.Contains(errOut, "--authkey") {
		t.Fatalf("beam up without a key after the reset: err=%v stdout=%q stderr=%q; want a failure that says the key changed and how to recover", err, out, errOut)
	}
	if st := d.status(); st.CoordinatorKeyChange == nil {
		t.Errorf("status after the refused beam up has no coordinator_key_change; health %q", st.Health)
	}
	c.mustBeam(d.args("logout")...)
	if st := d.status(); st.CoordinatorKeyChange != nil || len(st.Health) != 0 {
		t.Errorf("status after beam logout: key change %+v health %q; want neither", st.CoordinatorKeyChange, st.Health)
	}

	key2 := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable", "--expiry", "1h"))
	out = d.mustUp("--authkey", key2)
	if !strings.HasPrefix(out, "phoenix 100.64.") {
		t.Fatalf("beam up --authkey after the reset printed %q, want the name and addresses", out)
	}
	if st := d.status(); st.State != apitype.StateRunning || len(st.Health) != 0 {
		t.Fatalf("after rejoining: state %s health %q, want Running and healthy", st.State, st.Health)
	}
}
