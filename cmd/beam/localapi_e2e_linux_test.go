package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dialAsUID connects to the Unix socket at path n times as the user uid
// and returns the connections. Only the thread that connects takes on
// uid (setresuid on a locked OS thread, which the goroutine's exit then
// ends), so the test process stays root; the daemon reads uid from the
// socket (SO_PEERCRED) as it would from another user's process.
func dialAsUID(t *testing.T, path string, uid, n int) []net.Conn {
	t.Helper()
	type result struct {
		conns []net.Conn
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			ch <- result{err: e}
			return
		}
		var r result
		for range n {
			c, err := net.Dial("unix", path)
			if err != nil {
				r.err = err
				break
			}
			r.conns = append(r.conns, c)
		}
		ch <- r
	}()
	r := <-ch
	t.Cleanup(func() {
		for _, c := range r.conns {
			c.Close()
		}
	})
	if r.err != nil {
		t.Fatalf("connect as uid %d after %d connections: %v", uid, len(r.conns), r.err)
	}
	return r.conns
}

// openFDs counts the open files of process pid.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// closedWithin reports whether the daemon closes c within d: a read
// returns EOF or a reset, not a timeout.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestLocalAPIRefusesAtAccept: with an operator the daemon's socket is
// open to every local user, but a user who is neither the daemon's, root
// nor the operator cannot hold its connections: each is answered 403 (or
// closed unanswered when many come at once) and closed, so hundreds of
// them leave the daemon's open files where they were. A connection of
// the daemon's own user that sends no request is closed too.
func TestLocalAPIRefusesAtAccept(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestLocalAPIRefusesAtAccept plays another local user and needs root (CI runs as root)")
	}
	c := &cluster{t: t, bin: buildBeam(t), dir: t.TempDir()}
	runDir, err := os.MkdirTemp("", "beam-localapi-")
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
	c.mustBeam(d.args("set", "--operator", "nobody")...)
	pid := p.cmd.Process.Pid

	idle, err := net.Dial("unix", d.socket) // the daemon's own user, silent
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	base := openFDs(t, pid)

	const stranger, n = 65533, 400
	conns := dialAsUID(t, d.socket, stranger, n)
	refused := 0
	for i, cn := range conns {
		if i%2 == 1 {
			continue // half send nothing
		}
		if _, err := io.WriteString(cn, "GET /localapi/v0/status HTTP/1.1\r\nHost: local-tailscaled.sock\r\n\r\n"); err != nil {
			continue // closed unanswered already
		}
	}
	for i, cn := range conns {
		if i%2 == 0 {
			cn.SetReadDeadline(time.Now().Add(15 * time.Second))
			if resp, err := http.ReadResponse(bufio.NewReader(cn), nil); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "may not use") {
					t.Fatalf("a refused user's request: %s %s; want 403 saying it may not use the daemon", resp.Status, b)
				}
				refused++
			}
		}
		if !closedWithin(cn, 15*time.Second) {
			t.Fatalf("connection %d of %d of a user who may not use the daemon is still open after 15s", i+1, n)
		}
	}
	if refused == 0 {
		t.Errorf("no request of the refused user got the 403 that says why")
	}
	if got := openFDs(t, pid); got > base+32 {
		t.Errorf("daemon open files: %d with %d refused connections held open by their user, %d before; want them closed", got, n, base)
	}
	if !closedWithin(idle, 30*time.Second) {
		t.Errorf("a connection that sends no request is still open after the header timeout")
	}
	// The daemon's user still gets in.
	if out, errOut, err := c.beam(nil, d.args("status", "--json")...); err != nil {
		t.Errorf("the daemon's user after the flood: %v\n%s%s", err, out, errOut)
	}
}
