package nslab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long Stop and a cancelled context wait after SIGTERM
// before SIGKILL.
const stopGrace = 5 * time.Second

// Proc is a long-running process started in a namespace by [Host.Start],
// [Host.StartHelper] or [Host.StartCmd]. Its standard output and error are
// captured in memory; the tail of both is logged if the test fails.
type Proc struct {
	host string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and output is complete

	stdin io.WriteCloser // set by the lab for processes it controls, else nil

	mu       sync.Mutex // guards the following fields
	stdout   bytes.Buffer
	stderr   bytes.Buffer
	changed  chan struct{} // closed and replaced on every write
	stopping bool
	err      error // from cmd.Wait, set before done is closed
}

func startProc(host string, cmd *exec.Cmd) (*Proc, error) {
	if cmd.Stdout != nil || cmd.Stderr != nil {
		return nil, errors.New("nslab: StartCmd needs a command with nil Stdout and Stderr")
	}
	p := &Proc{host: host, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	cmd.Stdout = procWriter{p, &p.stdout}
	cmd.Stderr = procWriter{p, &p.stderr}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Args, err)
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

type procWriter struct {
	p   *Proc
	buf *bytes.Buffer
}

func (w procWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	w.buf.Write(b)
	close(w.p.changed)
	w.p.changed = make(chan struct{})
	return len(b), nil
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done returns a channel that is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its error as
// [exec.Cmd.Wait] does.
func (p *Proc) Wait() error {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Stop sends the process SIGTERM, then SIGKILL if it has not exited 5 s
// later, and waits for it. It returns nil if the process exited cleanly or
// because of Stop's signal, else the exit error. Stop may be called more
// than once and after the process has exited.
func (p *Proc) Stop() error {
	select {
	case <-p.done:
	default:
		p.mu.Lock()
		p.stopping = true
		p.mu.Unlock()
		p.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(stopGrace)
		select {
		case <-p.done:
			t.Stop()
		case <-t.C:
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	err := p.Wait()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && p.wasStopped() {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return nil
		}
	}
	return err
}

func (p *Proc) wasStopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopping
}

// Output returns what the process has written to standard output so far.
func (p *Proc) Output() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.stdout.Bytes())
}

// Stderr returns what the process has written to standard error so far.
func (p *Proc) Stderr() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.stderr.Bytes())
}

// WaitOutput waits until a complete line of the process's standard output
// or standard error contains substr, and returns that line without its
// newline. It fails if ctx ends or the process exits first.
func (p *Proc) WaitOutput(ctx context.Context, substr string) (string, error) {
	for {
		p.mu.Lock()
		line, ok := findLine(p.stdout.Bytes(), substr)
		if !ok {
			line, ok = findLine(p.stderr.Bytes(), substr)
		}
		changed := p.changed
		p.mu.Unlock()
		if ok {
			return line, nil
		}
		select {
		case <-changed:
		case <-p.done:
			// Output is complete once done is closed; look once more.
			p.mu.Lock()
			line, ok := findLine(p.stdout.Bytes(), substr)
			if !ok {
				line, ok = findLine(p.stderr.Bytes(), substr)
			}
			p.mu.Unlock()
			if ok {
				return line, nil
			}
			return "", fmt.Errorf("nslab: %s %s exited (%v) before printing %q; stderr: %s",
				p.host, p.cmd.Args, p.Wait(), substr, tail(p.Stderr(), 2000))
		case <-ctx.Done():
			return "", fmt.Errorf("nslab: %s %s: waiting for %q: %w; stderr: %s",
				p.host, p.cmd.Args, substr, ctx.Err(), tail(p.Stderr(), 2000))
		}
	}
}

// findLine returns the first newline-terminated line of b containing substr.
func findLine(b []byte, substr string) (string, bool) {
	for line := range strings.Lines(string(b)) {
		if strings.HasSuffix(line, "\n") && strings.Contains(line, substr) {
			return strings.TrimRight(line, "\r\n"), true
		}
	}
	return "", false
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (p *Proc) logTail(t testing.TB) {
	t.Helper()
	t.Logf("nslab: %s %s (pid %d) exited: %v\n--- stdout (tail):\n%s\n--- stderr (tail):\n%s",
		p.host, p.cmd.Args, p.PID(), p.Wait(), tail(p.Output(), 4000), tail(p.Stderr(), 8000))
}
