// Package inflight bounds how many packets are inside wireguard-go at
// once in one direction.
//
// wireguard-go holds every packet in a 64 KiB buffer from its pool (a
// sync.Pool without a bound on Linux) from the moment it takes the packet
// until it has handed it on: outbound, from the TUN read until the bind
// sent it; inbound, from the bind's receive until the TUN write. Its
// queues between those points hold up to 1,024 batches, so whichever
// stage is slowest (sending on the socket, or the stack taking inbound
// segments) lets thousands of packets pile up before it, each pinning a
// 64 KiB buffer for a 1.3 KB packet: 2,200-2,800 buffers (140-180 MB of
// heap) per daemon in a one-stream bulk transfer between two real
// daemons, and page faults, cache misses and queueing delay with them.
//
// A Window counts the packets between its two points and makes the
// producer wait while it is full, so the excess waits where it is stored
// compactly: outbound in the stack's send buffer (the TUN reader stops
// reading, the link queue fills, TCP's writers wait), inbound in the UDP
// socket's receive buffer (the bind stops reading).
//
// The count would leak: a packet wireguard-go takes and drops (no peer
// for its address, no session yet, a failed decryption) is never
// released. So the count forgets packets after one to two periods: a
// packet still inside wireguard-go after that is either lost or stuck
// behind a stall, and in both cases waiting for it would only stall
// every other packet.
package inflight

import (
	"sync"
	"sync/atomic"
	"time"
)

// Window counts packets between a producer and a consumer and bounds
// them. A nil *Window never waits and counts nothing. Its methods are safe
// for concurrent use.
type Window struct {
	max    int
	period time.Duration
	room   chan struct{} // capacity 1: a release (or expiry) made room

	mu      sync.Mutex // guards the following fields
	old     int        // counted in the previous period
	cur     int        // counted in this period
	started time.Time  // when this period started

	expired atomic.Uint64 // packets forgotten unreleased

	now func() time.Time // time.Now; tests set it
}

// New returns a window of max packets that forgets a packet one to two
// periods after counting it.
func New(max int, period time.Duration) *Window {
	return &Window{max: max, period: period, room: make(chan struct{}, 1), started: time.Now(), now: time.Now}
}

// rotateLocked starts new periods as time passed, forgetting what was
// counted two periods ago.
func (w *Window) rotateLocked(now time.Time) {
	switch d := now.Sub(w.started); {
	case d < w.period:
		return
	case d < 2*w.period:
		w.expired.Add(uint64(w.old))
		w.old, w.cur = w.cur, 0
	default:
		w.expired.Add(uint64(w.old + w.cur))
		w.old, w.cur = 0, 0
	}
	w.started = now
}

// Add counts k packets taken in.
func (w *Window) Add(k int) {
	if w == nil || k == 0 {
		return
	}
	w.mu.Lock()
	w.rotateLocked(w.now())
	w.cur += k
	w.mu.Unlock()
}

// Done counts k packets handed on, the oldest first.
func (w *Window) Done(k int) {
	if w == nil || k == 0 {
		return
	}
	w.mu.Lock()
	w.rotateLocked(w.now())
	d := min(k, w.old)
	w.old -= d
	w.cur = max(w.cur-(k-d), 0)
	w.mu.Unlock()
	select {
	case w.room <- struct{}{}:
	default:
	}
}

// Len returns the packets counted in the window.
func (w *Window) Len() int {
	if w == nil {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rotateLocked(w.now())
	return w.old + w.cur
}

// Expired returns how many packets the window forgot unreleased.
func (w *Window) Expired() uint64 {
	if w == nil {
		return 0
	}
	return w.expired.Load()
}

// full reports whether the window is full and, if so, how long until the
// next period may free part of it.
func (w *Window) full() (bool, time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	w.rotateLocked(now)
	if w.old+w.cur < w.max {
		return false, 0
	}
	return true, w.period - now.Sub(w.started)
}

// Waiter waits for room in a window on behalf of one goroutine (it owns a
// timer).
type Waiter struct {
	w *Window
	t *time.Timer
}

// NewWaiter returns a waiter for w; nil if w is nil.
func (w *Window) NewWaiter() *Waiter {
	if w == nil {
		return nil
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &Waiter{w: w, t: t}
}

// Wait blocks while the window is full, until a release or the end of a
// period makes room. It reports whether it had to wait.
func (wt *Waiter) Wait() bool {
	if wt == nil {
		return false
	}
	w := wt.w
	waited := false
	for {
		full, next := w.full()
		if !full {
			break
		}
		waited = true
		wt.t.Reset(next)
		select {
		case <-w.room:
		case <-wt.t.C:
		}
	}
	if waited {
		wt.t.Stop()
		// Another waiter may have been passed over by this one's wake-up.
		select {
		case w.room <- struct{}{}:
		default:
		}
	}
	return waited
}
