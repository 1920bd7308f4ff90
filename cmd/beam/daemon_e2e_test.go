package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
