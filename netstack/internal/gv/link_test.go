package gv

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/third_party/gvisor/tcp"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// TestLinkBackPressure sends through a link whose queue holds one packet, drained by a wire that pauses now and then, as
// wireguard-go's TUN reader does when it is descheduled on a busy machine.
// Senders must wait for room rather than lose packets, so the transfer
// completes without one retransmission. (When the link dropped on a full
// queue, the sender lost whole bursts; the tail of a burst is only
// recovered by a retransmission timeout, whose backoff stalled transfers
// for seconds.)
func TestLinkBackPressure(t *testing.T) {
	a, err := New(Options{QueueBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	// A retransmission after a timeout could also mean an ACK was merely
	// late on a loaded machine. With a 5 s minimum RTO any retransmission
	// here is a fast retransmit, which only a lost segment causes.
	minRTO := tcpip.TCPMinRTOOption(5 * time.Second)
	if err := Err(a.s.SetTransportProtocolOption(tcp.ProtocolNumber, &minRTO)); err != nil {
		t.Fatal(err)
	}
	if err := a.SetAddresses([]netip.Addr{netip.MustParseAddr("100.64.0.1")}); err != nil {
		t.Fatal(err)
	}
	b := newStack(t, "100.64.0.2")
	batches := 0
	// The a->b pump stops for a moment every 16 batches: a slow consumer,
	// not a wait for an event.
	wireWith(t, a, b, func([][]byte) {
		if batches++; batches%16 == 0 {
			<-time.After(time.Millisecond)
		}
	})

	got := acceptAll(t, b, "100.64.0.2:80", nil)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.MustParseAddrPort("100.64.0.2:80"))
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 8<<20)
	rand.Read(payload)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if data := <-got; !bytes.Equal(data, payload) {
		t.Fatalf("received %d bytes, want the %d sent", len(data), len(payload))
	}
	st := a.Stats()
	t.Logf("sender: %+v", st)
	if st.LinkWaits == 0 {
		t.Errorf("LinkWaits = 0: the queue never filled, so the test proved nothing")
	}
	if st.TCPRetransmits != 0 || st.LinkDrops != 0 {
		t.Errorf("TCPRetransmits = %d, LinkDrops = %d; want 0 and 0 on a lossless wire", st.TCPRetransmits, st.LinkDrops)
	}
}

// TestLinkCloseUnblocksWriters fills the link with nobody reading and
// checks that Close releases a sender waiting for room.
func TestLinkCloseUnblocksWriters(t *testing.T) {
	st, err := New(Options{QueueBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetAddresses([]netip.Addr{netip.MustParseAddr("100.64.0.1")}); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{}, 1)
	st.ep.onWaitForTest = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	c, err := st.DialUDP(netip.MustParseAddrPort("100.64.0.9:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; err == nil && i < 1000; i++ {
			_, err = c.Write([]byte("x"))
		}
		done <- err
	}()
	// Once the queue is full the writer blocks.
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("writer finished (err %v) without waiting on a one-packet queue", err)
	}
	st.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("writer still blocked 10 s after Close")
	}
	if s := st.Stats(); s.LinkDrops == 0 {
		t.Errorf("LinkDrops = 0 after Close discarded a full queue")
	}
}

// TestCloseWithBlockedTCPSender closes a stack while a TCP sender inside
// it waits for room on a link nobody reads any more: Close must release
// it rather than wait for the endpoint it holds locked.
func TestCloseWithBlockedTCPSender(t *testing.T) {
	a, err := New(Options{QueueBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetAddresses([]netip.Addr{netip.MustParseAddr("100.64.0.1")}); err != nil {
		t.Fatal(err)
	}
	b := newStack(t, "100.64.0.2")
	stall := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(stall) }) }
	var stalled atomic.Bool
	wireWith(t, a, b, func([][]byte) {
		if stalled.Load() {
			<-stall
		}
	})
	t.Cleanup(release) // runs before wireWith's cleanup waits for the pumps

	ln, err := b.ListenTCP(netip.MustParseAddrPort("100.64.0.2:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.MustParseAddrPort("100.64.0.2:80"))
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{}, 1)
	a.ep.mu.Lock()
	a.ep.onWaitForTest = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	a.ep.mu.Unlock()
	stalled.Store(true)
	writeDone := make(chan struct{})
	go func() {
		defer close(writeDone)
		c.Write(make([]byte, 8<<20))
	}()
	<-waiting
	closed := make(chan struct{})
	go func() {
		a.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		release()
		t.Fatal("Stack.Close still blocked 10 s after it began, with a sender waiting on the link")
	}
	<-writeDone
	release()
}
