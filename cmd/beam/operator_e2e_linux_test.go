package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestOperator: a daemon's socket admits only its own user and root until
// an operator is set (beam set --operator USER); then that user may use
// it but not change the operator, other users are refused by their uid,
// and a restarted daemon keeps the operator. The test runs as root and
// plays the other users with setuid children.
func TestOperator(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestOperator plays other local users and needs root (CI runs as root)")
	}
	c := &cluster{t: t, bin: buildBeam(t), dir: t.TempDir()}
	// Other users must reach the binary and the socket's directory.
	if err := os.Chmod(filepath.Dir(c.bin), 0o755); err != nil {
		t.Fatal(err)
	}
	runDir, err := os.MkdirTemp("", "beam-operator-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	if err := os.Chmod(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := c.device("shared")
	d.socket = filepath.Join(runDir, "beamd.sock")
	p := d.startDaemonProc()
	d.waitAlive(p)

	as := func(uid uint32, args ...string) (string, error) {
		cmd := exec.Command(c.bin, append([]string{"--socket", d.socket}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		cmd.Env = []string{"HOME=/", "PATH=/usr/bin:/bin"}
		cmd.Dir = "/"
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	const nobody, stranger = 65534, 65533

	out, err := as(nobody, "status")
	if err == nil || !strings.Contains(out, "--operator") {
		t.Fatalf("nobody before any operator: err=%v out=%q; want a refusal that names --operator", err, out)
	}
	c.mustBeam(d.args("set", "--operator", "nobody")...)
	if out, err := as(nobody, "status", "--json"); err != nil {
		t.Fatalf("the operator's beam status: %v\n%s", err, out)
	}
	if out, err := as(nobody, "set", "--operator", ""); err == nil || !strings.Contains(out, "only root") {
		t.Fatalf("the operator removing the operator: err=%v out=%q; want a refusal", err, out)
	}
	if out, err := as(stranger, "status"); err == nil || !strings.Contains(out, "65533") || !strings.Contains(out, "may not use") {
		t.Fatalf("another user with an operator set: err=%v out=%q; want a refusal naming uid 65533", err, out)
	}

	// The operator may not lend itself the daemon's privileges: a port
	// below 1024 (the daemon may run as root) or the DNS upstreams
	// MagicDNS forwards to. Each refusal leaves the setting as it was.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"set", "--port", "999"}, "below 1024"},
		{[]string{"set", "--relay-server=998"}, "below 1024"},
		{[]string{"set", "--dns-listen", "127.0.0.1:997"}, "below 1024"},
		{[]string{"set", "--socks5", "127.0.0.1:996"}, "below 1024"},
		{[]string{"set", "--dns-upstream", "127.0.0.1:53"}, "DNS upstreams"},
		{[]string{"up", "--port", "995"}, "below 1024"},
	} {
		if out, err := as(nobody, tc.args...); err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("the operator's beam %s: err=%v out=%q; want a refusal saying %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
	out = c.mustBeam(d.args("set")...)
	for _, refused := range []string{"999", "998", "127.0.0.1:997", "127.0.0.1:996", "127.0.0.1:53", "995"} {
		if strings.Contains(" "+strings.Join(strings.Fields(out), " ")+" ", " "+refused+" ") {
			t.Errorf("settings after the operator's refused changes hold %s:\n%s", refused, out)
		}
	}
	// An unprivileged loopback port is the operator's to choose.
	socks := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if out, err := as(nobody, "set", "--socks5", socks); err != nil {
		t.Errorf("the operator's beam set --socks5 %s: %v\n%s", socks, err, out)
	}

	// beam up by that user does not start a daemon of its own in its place.
	if out, err := as(stranger, "up", "--coordinator", "http://127.0.0.1:1"); err == nil || !strings.Contains(out, "may not use") {
		t.Fatalf("beam up by another user: err=%v out=%q; want the daemon's refusal", err, out)
	}

	// The operator survives a restart.
	c.mustBeam(d.args("daemon", "stop")...)
	<-p.done
	p = d.startDaemonProc()
	d.waitAlive(p)
	if out, err := as(nobody, "status", "--json"); err != nil {
		t.Fatalf("the operator after a daemon restart: %v\n%s", err, out)
	}
	// Removing the operator closes the socket to it again.
	c.mustBeam(d.args("set", "--operator=")...)
	if out, err := as(nobody, "status"); err == nil {
		t.Fatalf("nobody after the operator was removed: %q; want a refusal", out)
	}
}
