// Package scalebench measures a coordinator holding thousands of nodes.
// It runs the real beam coordinator as a process of its own (so its CPU
// time and RSS are its own, read from /proc) and drives a Fleet of
// lightweight fake nodes in the calling process: each registers and
// streams its map with coordclient over loopback HTTP (its backoff,
// reconnects and map resume) and really opens every sealed frame it
// receives, but runs no WireGuard. The blocks of peers that a full map
// shares between nodes (wire.BlockedMapFrame) each node checks against
// its sealed frame's hash, but the fleet opens each distinct block once
// (coordclient.BlockCache), as the nodes on their own machines would
// each open it once. It reads each binary peer record for
// its key, revision and online flag alone (coordclient.RunScanned,
// wire.ScanMapFrame) and keeps only what the measurement and map resume
// need: per peer, its online state and the number of its revision, and
// the digest of the peers held, so that ten thousand of them, holding
// 10^8 peers between them, fit in one process and leave the cores to
// the coordinator.
//
// BenchmarkCoordinatorScale (scale_test.go) is the benchmark built on it;
// its doc comment gives the commands. BenchmarkCoordinatorScaleTwo
// (two_test.go) runs two coordinators on one PostgreSQL database.
package scalebench

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
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"beam.dev/beam/coordclient"
)

// BuildBeam builds the beam binary into dir and returns its path.
func BuildBeam(ctx context.Context, dir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(dir, "beam")
	out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, "beam.dev/beam/cmd/beam").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("scalebench: go build beam: %w\n%s", err, out)
	}
	return bin, nil
}

// CoordinatorOptions configures a Coordinator.
type CoordinatorOptions struct {
	// Bin is the beam binary (BuildBeam). Required.
	Bin string
	// Dir holds the coordinator's data directory, its log and its
	// discovery file. Required; it should be empty and temporary.
	Dir string
	// Args are extra flags of beam coordinator.
	Args []string
}

// Coordinator is a beam coordinator process on a loopback port. Start and
// Kill may be called again to restart it on the same data and port.
type Coordinator struct {
	opts CoordinatorOptions
	// URL is the coordinator's base URL.
	URL  string
	addr string

	mu     sync.Mutex // guards the following fields
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// NewCoordinator picks a free loopback port for a coordinator. It starts
// nothing; call Start.
func NewCoordinator(opts CoordinatorOptions) (*Coordinator, error) {
	if opts.Bin == "" || opts.Dir == "" {
		return nil, errors.New("scalebench: CoordinatorOptions.Bin and Dir are required")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("scalebench: pick a port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return &Coordinator{opts: opts, addr: addr, URL: "http://" + addr}, nil
}

// DataDir is the coordinator's --data directory.
func (c *Coordinator) DataDir() string { return filepath.Join(c.opts.Dir, "coord") }

// LogPath is the file the coordinator's output goes to.
func (c *Coordinator) LogPath() string { return filepath.Join(c.opts.Dir, "coord.log") }

// Start starts the process and waits until it answers GET /key.
func (c *Coordinator) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.cmd != nil {
		c.mu.Unlock()
		return errors.New("scalebench: coordinator already running")
	}
	logf, err := os.OpenFile(c.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.mu.Unlock()
		return fmt.Errorf("scalebench: coordinator log: %w", err)
	}
	args := append([]string{"coordinator", "--addr", c.addr, "--data", c.DataDir(), "--log-level", "warn"}, c.opts.Args...)
	cmd := exec.Command(c.opts.Bin, args...)
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+c.opts.Dir) // its discovery file stays in Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Start()
	logf.Close()
	if err != nil {
		c.mu.Unlock()
		return fmt.Errorf("scalebench: start coordinator: %w", err)
	}
	exited := make(chan struct{})
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()
	go func() {
		cmd.Wait()
		close(exited)
	}()

	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/key", nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		// Not listening yet: wait for the process to end, the caller to
		// give up, or the next try.
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-exited:
			t.Stop()
			return fmt.Errorf("scalebench: coordinator exited during start (%s): %s", cmd.ProcessState, c.LogTail(2000))
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("scalebench: wait for coordinator: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// PID returns the running process's ID, or 0.
func (c *Coordinator) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Kill kills the process (SIGKILL, as a crash would) and waits for it.
func (c *Coordinator) Kill() {
	c.signalAndWait(syscall.SIGKILL, 0)
}

// Stop asks the process to shut down (SIGTERM), killing it after 10
// seconds, and waits for it.
func (c *Coordinator) Stop() {
	c.signalAndWait(syscall.SIGTERM, 10*time.Second)
}

func (c *Coordinator) signalAndWait(sig syscall.Signal, grace time.Duration) {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.cmd, c.exited = nil, nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-exited:
			return
		case <-t.C:
			cmd.Process.Kill()
		}
	}
	<-exited
}

// LogTail returns up to the last n bytes of the coordinator's log.
func (c *Coordinator) LogTail(n int) string {
	b, err := os.ReadFile(c.LogPath())
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// AuthKey creates a reusable auth key whose nodes register without
// approval and whose node keys never expire.
func (c *Coordinator) AuthKey(ctx context.Context) (string, error) {
	tok, err := os.ReadFile(filepath.Join(c.DataDir(), "admin.token"))
	if err != nil {
		return "", fmt.Errorf("scalebench: read admin token: %w", err)
	}
	admin := coordclient.NewAdmin(c.URL, strings.TrimSpace(string(tok)), nil)
	k, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Reusable: true, KeyExpiry: -1})
	if err != nil {
		return "", fmt.Errorf("scalebench: create auth key: %w", err)
	}
	return k, nil
}

// Usage is what the coordinator process has used, from /proc.
type Usage struct {
	// CPU is user plus system CPU time since the process started.
	CPU time.Duration
	// RSS is the resident set size now (VmRSS); PeakRSS its high-water
	// mark (VmHWM).
	RSS, PeakRSS uint64
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times; it is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// Usage reads the running process's CPU time and memory.
func (c *Coordinator) Usage() (Usage, error) {
	pid := c.PID()
	if pid == 0 {
		return Usage{}, errors.New("scalebench: coordinator not running")
	}
	return procUsage(pid)
}

func procUsage(pid int) (Usage, error) {
	var u Usage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("scalebench: read stat: %w", err)
	}
	// pid (comm) state ppid ... : fields after the comm, which may hold
	// spaces; utime and stime are fields 14 and 15 of the whole line.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return u, errors.New("scalebench: malformed /proc stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return u, errors.New("scalebench: short /proc stat")
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return u, errors.New("scalebench: malformed /proc stat CPU times")
	}
	u.CPU = time.Duration(utime+stime) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("scalebench: read status: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch name {
		case "VmRSS":
			dst = &u.RSS
		case "VmHWM":
			dst = &u.PeakRSS
		default:
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(val), "kB")), 10, 64)
		if err != nil {
			return u, fmt.Errorf("scalebench: parse %s: %w", name, err)
		}
		*dst = kb << 10
	}
	return u, nil
}

// Watch kills the coordinator if its RSS, or that of this process (the
// fleet's), passes limit bytes, checking every interval, and then calls
// onLimit with which one it was ("coordinator" or "fleet") and the RSS
// it saw. It keeps a run from taking the machine down. The returned stop
// ends the watch and returns once it has ended.
func (c *Coordinator) Watch(limit uint64, interval time.Duration, onLimit func(who string, rss uint64)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, p := range []struct {
				who string
				pid int
			}{{"coordinator", c.PID()}, {"fleet", os.Getpid()}} {
				if p.pid == 0 {
					continue
				}
				if u, err := procUsage(p.pid); err == nil && u.RSS > limit {
					c.Kill()
					onLimit(p.who, u.RSS)
					return
				}
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}
