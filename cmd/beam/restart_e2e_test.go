package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crash kills d's daemon with SIGKILL, as a crash would (no FIN, no RST,
// nothing), and waits until it is gone.
func (d *device) crash(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.state, "daemon.pid"))
	if err != nil {
		t.Fatalf("read %s's pid: %v", d.name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("bad pid %q of %s", b, d.name)
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", d.name, err)
	}
	waitFor(t, 10*time.Second, d.name+" gone", func() bool { return p.Signal(syscall.Signal(0)) != nil })
	os.Remove(filepath.Join(d.state, "daemon.pid"))
}

// downloadServer serves on host loopback a download that stalls: each
// connection gets "first\n" and then nothing, until the test ends. It
// returns the port.
func downloadServer(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			io.WriteString(c, "first\n")
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestRestartMidConnection: beta's daemon crashes and comes back with the
// same state while alpha's `beam nc` downloads from beta. alpha sends
// nothing, yet its connection must end soon after beta is back (alpha
// learns beta's new disco key, probes its connections with beta, and
// beta's new daemon resets them), instead of waiting forever for data.
func TestRestartMidConnection(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable"))
	pb := freeUDPPort(t)
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp("--authkey", key)
	beta.mustUp("--authkey", key, "--port", strconv.Itoa(pb))
	waitFor(t, 15*time.Second, "alpha sees beta", func() bool {
		p := peerByName(alpha.status(), "beta")
		return p != nil && p.Online
	})
	port := downloadServer(t)

	nc := exec.Command(c.bin, alpha.args("nc", "beta", strconv.Itoa(port))...)
	stdin, err := nc.StdinPipe() // kept open: alpha sends nothing
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := nc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Start(); err != nil {
		t.Fatal(err)
	}
	var ncErr error
	exited := make(chan struct{}) // closed once nc exited; ncErr is set then
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		ncErr = nc.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		stdin.Close()
		nc.Process.Kill()
		<-exited
	})
	select {
	case l := <-lines:
		if l != "first" {
			t.Fatalf("download before the restart: got %q, want %q", l, "first")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("nothing through beam nc before the restart")
	}

	beta.crash(t)
	start := time.Now()
	beta.mustUp()
	back := time.Since(start)
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		t.Fatal("beam nc from the restarted beta still open 60 s after beta was back")
	}
	took := time.Since(start)
	t.Logf("beam nc ended %v after beta's beam up began (beta was back after %v; %v)", took, back, ncErr)
	for l := range lines {
		t.Errorf("beam nc got %q from the restarted beta, want nothing (the connection is gone)", l)
	}
	// Measured 0.12 s (beam up returned as quickly); without the probe
	// nc never ended.
	if took > back+10*time.Second {
		t.Errorf("beam nc ended %v after beta's beam up began, %v after beta was back; want within 10 s of that", took, took-back)
	}
}
