package natlab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// msDur is a duration that JSON renders in milliseconds; negative means
// "never" and renders as null.
type msDur time.Duration

func (d msDur) MarshalJSON() ([]byte, error) {
	if d < 0 {
		return []byte("null"), nil
	}
	return json.Marshal(float64(time.Duration(d).Microseconds()) / 1000)
}

func (d msDur) String() string { return ms(time.Duration(d)) }

// satisfies reports whether path is at least as good as want: a direct
// path satisfies a pair expected to be relayed.
func satisfies(path, want string) bool {
	switch want {
	case pathDirect:
		return path == pathDirect
	case pathRelay:
		return path == pathRelay || path == pathDirect
	case pathPeerRelay:
		return path == pathPeerRelay
	}
	return false
}

// pathRun is what one pair of devices achieved, as seen from the first
// device (A) towards the second (B), timed from the moment both were up.
type pathRun struct {
	Want     string `json:"want"`
	Path     string `json:"path"`      // A's view of B at the end
	PeerPath string `json:"peer_path"` // B's view of A at the end
	Endpoint string `json:"endpoint,omitempty"`
	// FirstTraffic is when the first nc round trip succeeded.
	FirstTraffic msDur `json:"first_traffic_ms"`
	// ToRelay and ToDirect are when A's status first showed each path.
	ToRelay  msDur `json:"to_relay_ms"`
	ToDirect msDur `json:"to_direct_ms"`
	// ToWant is when traffic had passed and the path satisfied Want.
	ToWant     msDur  `json:"to_want_ms"`
	RoundTrips int    `json:"round_trips"`
	Failures   int    `json:"failed_round_trips"`
	Final      bool   `json:"final_round_trip_ok"`
	Err        string `json:"error,omitempty"`
}

// ok reports whether the pair reached what it should.
func (r *pathRun) ok() bool { return r.Err == "" && r.ToWant >= 0 && r.Final }

// reachPath drives traffic from a to b (an nc round trip every 500 ms)
// and watches a's status until traffic has passed and the path satisfies
// want, for at most limit. Then it checks one more round trip and reads
// both sides' view. start is when both devices were up. It is
// goroutine-safe and reports problems in the result, not to a test.
func reachPath(ctx context.Context, a, b *device, want string, start time.Time, limit time.Duration) pathRun {
	r := pathRun{Want: want, Path: pathNone, FirstTraffic: -1, ToRelay: -1, ToDirect: -1, ToWant: -1}
	rctx, cancel := context.WithDeadline(ctx, start.Add(limit))
	defer cancel()

	var mu sync.Mutex // guards r.FirstTraffic, r.RoundTrips, r.Failures, lastErr
	var lastErr error
	var wg sync.WaitGroup
	kick := make(chan struct{}, 1) // a round trip succeeded: look at the path now
	tctx, stopTraffic := context.WithCancel(rctx)
	wg.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			err := a.roundTrip(tctx, b.name, 3*time.Second)
			mu.Lock()
			switch {
			case err == nil:
				r.RoundTrips++
				if r.FirstTraffic < 0 {
					r.FirstTraffic = msDur(time.Since(start))
				}
				select {
				case kick <- struct{}{}:
				default:
				}
			case tctx.Err() == nil:
				r.Failures++
				lastErr = err
			}
			mu.Unlock()
			select {
			case <-tctx.Done():
				return
			case <-tick.C:
			}
		}
	})

	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
watch:
	for {
		p, found, err := a.peer(rctx, b.name)
		el := msDur(time.Since(start))
		if err == nil && found {
			r.Path, r.Endpoint = p.Path, p.Endpoint
			if p.Path == pathRelay && r.ToRelay < 0 {
				r.ToRelay = el
			}
			if p.Path == pathDirect && r.ToDirect < 0 {
				r.ToDirect = el
			}
		}
		mu.Lock()
		passed := r.FirstTraffic >= 0
		mu.Unlock()
		if passed && satisfies(r.Path, want) {
			r.ToWant = el
			break watch
		}
		select {
		case <-rctx.Done():
			break watch
		case <-poll.C:
		case <-kick:
		}
	}
	stopTraffic()
	wg.Wait()
	if r.ToWant < 0 {
		r.Err = fmt.Sprintf("no %s path with traffic within %v (path %s, %d round trips ok, %d failed, last error: %v)",
			want, limit, r.Path, r.RoundTrips, r.Failures, lastErr)
	}
	// Traffic passes on the path reached, and the CLI shows it. (Without
	// any round trip so far, another one would only take time.)
	if r.RoundTrips > 0 {
		if err := a.roundTrip(ctx, b.name, 5*time.Second); err != nil {
			r.Err = strings.TrimSpace(r.Err + "; final round trip: " + err.Error())
		} else {
			r.Final = true
		}
	}
	if p, err := a.cliPeer(ctx, b.name); err == nil {
		r.Path, r.Endpoint = p.Path, p.Endpoint
	}
	if p, ok, err := b.peer(ctx, a.name); err == nil && ok {
		r.PeerPath = p.Path
	}
	return r
}

// flow is a steady stream of numbered lines sent through `beam nc` to a
// peer's echo server; it records when each echo comes back, so a test can
// see gaps while paths change, and checks that every line comes back once
// and in order.
type flow struct {
	start time.Time
	cmd   *exec.Cmd
	stop  context.CancelFunc // stops the writer
	wg    sync.WaitGroup     // the writer and the reader

	mu       sync.Mutex // guards the following fields
	sent     int
	sentAt   []time.Time // by line number
	recvAt   []time.Time // by line number
	recv     int
	last     time.Time
	maxGap   time.Duration
	maxGapAt time.Duration // end of the longest gap, since start
	gaps     []flowGap     // gaps longer than gapReport
	err      error
}

// flowGap is one pause in the echoes.
type flowGap struct {
	From msDur `json:"from_ms"` // since the flow started
	Len  msDur `json:"len_ms"`
}

const (
	flowInterval = 20 * time.Millisecond
	gapReport    = 500 * time.Millisecond
)

// startFlow starts a flow from d to peer. It is goroutine-safe.
func startFlow(ctx context.Context, d *device, peer string) (*flow, error) {
	f := &flow{}
	f.cmd = exec.CommandContext(ctx, d.w.bin, "--socket", d.socket, "nc", peer, strconv.Itoa(echoPort))
	stdin, err := f.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	f.cmd.Stderr = &stderr
	if err := f.cmd.Start(); err != nil {
		return nil, err
	}
	f.start = time.Now()
	f.last = f.start
	wctx, stop := context.WithCancel(ctx)
	f.stop = stop
	f.wg.Go(func() {
		defer stdin.Close()
		tick := time.NewTicker(flowInterval)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			f.mu.Lock()
			f.sentAt = append(f.sentAt, time.Now())
			f.mu.Unlock()
			if _, err := fmt.Fprintf(stdin, "%d\n", seq); err != nil {
				f.fail(fmt.Errorf("write line %d: %w", seq, err))
				return
			}
			f.mu.Lock()
			f.sent++
			f.mu.Unlock()
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	f.wg.Go(func() {
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			line := sc.Text()
			if first && strings.HasPrefix(line, "seen ") {
				first = false
				continue
			}
			first = false
			now := time.Now()
			n, err := strconv.Atoi(line)
			f.mu.Lock()
			if err != nil || n != f.recv {
				if f.err == nil {
					f.err = fmt.Errorf("echo line %d is %q, want %d", f.recv, line, f.recv)
				}
			}
			gap := now.Sub(f.last)
			if gap > f.maxGap && f.recv > 0 {
				f.maxGap, f.maxGapAt = gap, now.Sub(f.start)
			}
			if gap > gapReport && f.recv > 0 {
				f.gaps = append(f.gaps, flowGap{From: msDur(f.last.Sub(f.start)), Len: msDur(gap)})
			}
			f.recv++
			f.recvAt = append(f.recvAt, now)
			f.last = now
			f.mu.Unlock()
		}
		if err := sc.Err(); err != nil {
			f.fail(fmt.Errorf("read echoes: %w (nc stderr: %s)", err, bytes.TrimSpace(stderr.Bytes())))
		}
	})
	return f, nil
}

func (f *flow) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// flowResult is what a flow measured.
type flowResult struct {
	Sent     int       `json:"sent"`
	Received int       `json:"received"`
	MaxGap   msDur     `json:"max_gap_ms"`
	MaxGapAt msDur     `json:"max_gap_end_ms"`
	Gaps     []flowGap `json:"gaps"`
	Err      string    `json:"error,omitempty"`
}

// snapshot returns what the flow measured so far, counting the time since
// the last echo as a gap too.
func (f *flow) snapshot() flowResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := flowResult{Sent: f.sent, Received: f.recv, MaxGap: msDur(f.maxGap), MaxGapAt: msDur(f.maxGapAt), Gaps: append([]flowGap(nil), f.gaps...)}
	if open := time.Since(f.last); open > time.Duration(r.MaxGap) {
		r.MaxGap, r.MaxGapAt = msDur(open), msDur(time.Since(f.start))
	}
	if f.err != nil {
		r.Err = f.err.Error()
	}
	return r
}

// waitEchoes waits up to limit until at least n lines have come back.
func (f *flow) waitEchoes(ctx context.Context, n int, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		f.mu.Lock()
		recv, err := f.recv, f.err
		f.mu.Unlock()
		if err != nil {
			return err
		}
		if recv >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flow: %d echoes after %v, want %d", recv, limit, n)
		case <-tick.C:
		}
	}
}

// recoveredAfter waits up to limit for the echo of a line sent after t0
// and returns how long after t0 it arrived: how soon traffic flowed again
// after an event at t0.
func (f *flow) recoveredAfter(ctx context.Context, t0 time.Time, limit time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		f.mu.Lock()
		for i, at := range f.recvAt {
			if f.sentAt[i].After(t0) {
				f.mu.Unlock()
				return at.Sub(t0), nil
			}
		}
		err := f.err
		f.mu.Unlock()
		if err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return limit, fmt.Errorf("flow: no line sent after the event came back within %v", limit)
		case <-tick.C:
		}
	}
}

// maxGapBetween returns the longest pause between echoes that ends in
// [t0, t1], counting from t0 for the first echo in the window, and the
// pause still open at t1.
func (f *flow) maxGapBetween(t0, t1 time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var maxGap time.Duration
	prev := t0
	for _, at := range f.recvAt {
		if at.Before(t0) {
			continue
		}
		if at.After(t1) {
			break
		}
		maxGap = max(maxGap, at.Sub(prev))
		prev = at
	}
	return max(maxGap, t1.Sub(prev))
}

// received returns how many lines have come back.
func (f *flow) received() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.recv
}

// close stops sending, waits up to limit for the remaining echoes and for
// nc to exit, and returns the result. Every line sent must have come back.
func (f *flow) close(limit time.Duration) flowResult {
	f.stop()
	done := make(chan error, 1)
	go func() {
		f.wg.Wait()
		done <- f.cmd.Wait()
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			f.fail(fmt.Errorf("nc: %w", err))
		}
	case <-t.C:
		f.cmd.Process.Kill()
		<-done
		f.fail(fmt.Errorf("nc did not finish within %v of the last line", limit))
	}
	r := f.snapshot()
	// The gap since the last echo is not a gap once the flow is closed.
	f.mu.Lock()
	r.MaxGap, r.MaxGapAt = msDur(f.maxGap), msDur(f.maxGapAt)
	f.mu.Unlock()
	if r.Err == "" && r.Received != r.Sent {
		r.Err = fmt.Sprintf("%d lines sent, %d echoed", r.Sent, r.Received)
	}
	return r
}

// pathEvent is a change of the path a device reports for a peer.
type pathEvent struct {
	At       msDur  `json:"at_ms"`
	Path     string `json:"path"`
	Endpoint string `json:"endpoint,omitempty"`
}

// pathWatch polls a device's path to a peer every 100 ms and records each
// change.
type pathWatch struct {
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu     sync.Mutex // guards events
	events []pathEvent
}

// watchPath starts watching d's path to peer; times are since start.
func watchPath(ctx context.Context, d *device, peer string, start time.Time) *pathWatch {
	ctx, stop := context.WithCancel(ctx)
	pw := &pathWatch{stop: stop}
	pw.wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if p, ok, err := d.peer(ctx, peer); err == nil && ok {
				pw.mu.Lock()
				if n := len(pw.events); n == 0 || pw.events[n-1].Path != p.Path || pw.events[n-1].Endpoint != p.Endpoint {
					pw.events = append(pw.events, pathEvent{At: msDur(time.Since(start)), Path: p.Path, Endpoint: p.Endpoint})
				}
				pw.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	return pw
}

// current returns the last path seen.
func (pw *pathWatch) current() string {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if len(pw.events) == 0 {
		return ""
	}
	return pw.events[len(pw.events)-1].Path
}

// waitFor waits until the watched path is path, and returns how long that
// took.
func (pw *pathWatch) waitFor(ctx context.Context, path string, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if pw.current() == path {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("path is %q after %v, want %s", pw.current(), limit, path)
		case <-tick.C:
		}
	}
}

// close stops watching and returns the changes seen.
func (pw *pathWatch) close() []pathEvent {
	pw.stop()
	pw.wg.Wait()
	pw.mu.Lock()
	defer pw.mu.Unlock()
	return append([]pathEvent(nil), pw.events...)
}

// testData returns n deterministic pseudo-random bytes.
func testData(n int, seed uint64) []byte {
	var s [32]byte
	s[0] = byte(seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// transfer sends data through `beam nc` to the peer's hashing sink and
// checks the SHA-256 and length it reports. It is goroutine-safe.
func (d *device) transfer(ctx context.Context, peer string, data []byte, limit time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	sum := sha256.Sum256(data)
	want := fmt.Sprintf("%s %d", hex.EncodeToString(sum[:]), len(data))
	start := time.Now()
	out, err := d.beam(ctx, data, "nc", peer, strconv.Itoa(sinkPort))
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("transfer %d bytes after %v: %w", len(data), took, err)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		return took, fmt.Errorf("sink got %q, want %q", got, want)
	}
	return took, nil
}
