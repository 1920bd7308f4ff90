package derpserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// restartHint is what FrameRestarting tells clients on Close.
const (
	restartReconnectIn = 500 * time.Millisecond
	restartTryFor      = 30 * time.Second
)

// pkt is a packet queued for a client or a mesh link.
type pkt struct {
	src  key.NodePublic
	dst  key.NodePublic // set only on a mesh link's forward queue
	data []byte
}

// ctrlMsg is a small control frame queued for a client.
type ctrlMsg struct {
	typ    derp.FrameType // FramePeerGone or FramePong
	key    key.NodePublic
	reason derp.PeerGoneReason
	data   [8]byte
}

// peerUpdate is a presence change sent to a mesh watcher.
type peerUpdate struct {
	key     key.NodePublic
	present bool
}

// sclient is one connected client.
//
// Goroutines: run starts recvLoop (the only reader of br, and the only user
// of sentTo) and sendLoop (the only writer of bw and nc). Other clients'
// recvLoops hand it packets through the queues, which never block.
type sclient struct {
	s       *Server
	nc      net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	key     key.NodePublic
	info    derp.ClientInfo
	isMesh  bool
	logger  *slog.Logger
	limiter *rate.Limiter // nil if unlimited
	cancel  context.CancelFunc
	// meshChallenge is the handshake's challenge, kept for a mesh peer
	// to make its record keys (derp.MeshRecords); nil for others.
	meshChallenge []byte

	sendQ  *pktQueue    // non-disco packets, drop-oldest
	discoQ *pktQueue    // disco packets, drop-oldest
	ctrlQ  chan ctrlMsg // peer gone and pong frames, drop-newest

	evicted    atomic.Bool // replaced by a newer connection for key
	unadmitted atomic.Bool // VerifyClient no longer admits key
	preferred  atomic.Bool

	sentTo map[key.NodePublic]bool // recvLoop only: dsts noted in Server.sentTo

	pmu         sync.Mutex    // guards pendingPeer
	pendingPeer []peerUpdate  // for mesh watchers
	peerReady   chan struct{} // 1-buffered: pendingPeer is non-empty
}

func newSClient(s *Server, nc net.Conn, brw *bufio.ReadWriter, k key.NodePublic, info derp.ClientInfo, isMesh bool, lim *rate.Limiter, logger *slog.Logger) *sclient {
	return &sclient{
		s:         s,
		nc:        nc,
		br:        brw.Reader,
		bw:        brw.Writer,
		key:       k,
		info:      info,
		isMesh:    isMesh,
		logger:    logger.With("peer", k.ShortString()),
		limiter:   lim,
		sendQ:     newPktQueue(s.opts.SendQueueDepth, s.opts.SendQueueBytes, s.queueBudget),
		discoQ:    newPktQueue(s.opts.DiscoQueueDepth, s.opts.DiscoQueueDepth*derp.MaxPacketSize, s.queueBudget),
		ctrlQ:     make(chan ctrlMsg, 16),
		sentTo:    make(map[key.NodePublic]bool),
		peerReady: make(chan struct{}, 1),
	}
}

// run serves the client until it leaves or ctx is done.
func (c *sclient) run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.sendLoop(gctx) })
	g.Go(func() error { return c.recvLoop(gctx) })
	err := g.Wait()
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
		return nil
	}
	return err
}

// enqueuePacket queues a packet for the client, dropping the oldest queued
// packets when a queue is full. It never blocks.
func (c *sclient) enqueuePacket(src key.NodePublic, data []byte) {
	q := c.sendQ
	if derp.IsDisco(data) {
		q = c.discoQ
	}
	if n := q.push(pkt{src: src, data: data}); n > 0 {
		c.s.dropsQueueFull.Add(int64(n))
	}
}

// releaseQueues drops what waits for the client, which is gone, and
// whatever is queued for it later.
func (c *sclient) releaseQueues() {
	c.sendQ.close()
	c.discoQ.close()
}

// queueCtrl queues a control frame, dropping it if the queue is full.
func (c *sclient) queueCtrl(m ctrlMsg) {
	select {
	case c.ctrlQ <- m:
	default:
	}
}

// queuePeerUpdate queues a presence change for a mesh watcher. Presence is
// never dropped: the list is bounded by the number of clients.
func (c *sclient) queuePeerUpdate(u peerUpdate) {
	c.pmu.Lock()
	c.pendingPeer = append(c.pendingPeer, u)
	c.pmu.Unlock()
	select {
	case c.peerReady <- struct{}{}:
	default:
	}
}

// noteSentTo records a destination once per connection.
func (c *sclient) noteSentTo(dst key.NodePublic) {
	if c.sentTo[dst] {
		return
	}
	c.sentTo[dst] = true
	c.s.noteSentTo(c.key, dst)
}

const keyLen = 32

// recvLoop reads frames from the client until an error.
func (c *sclient) recvLoop(ctx context.Context) error {
	for {
		t, n, err := derp.ReadFrameHeader(c.br)
		if err != nil {
			return fmt.Errorf("read frame: %w", err)
		}
		if n > derp.MaxFrameSize {
			return fmt.Errorf("frame type %#x: %w: %d bytes", byte(t), derp.ErrFrameTooLarge, n)
		}
		switch t {
		case derp.FrameSendPacket, derp.FrameForwardPacket, derp.FramePing, derp.FrameNotePreferred, derp.FrameWatchConns:
		default:
			// Pong, keepalive and frame types this version does not
			// know are skipped without being buffered.
			if _, err := c.br.Discard(int(n)); err != nil {
				return fmt.Errorf("skip frame type %#x: %w", byte(t), err)
			}
			continue
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return fmt.Errorf("read frame type %#x: %w", byte(t), err)
		}
		if err := c.handleFrame(ctx, t, p); err != nil {
			return err
		}
	}
}

// meshOnlyError is handleFrame's error for a frame only mesh peers may
// send (forward packet, watch conns), from a client that did not prove
// the region's mesh key in its handshake.
type meshOnlyError struct{ name string }

func (e *meshOnlyError) Error() string {
	return e.name + " frame from a client that did not prove the mesh key"
}

func (c *sclient) handleFrame(ctx context.Context, t derp.FrameType, p []byte) error {
	switch t {
	case derp.FrameSendPacket:
		if len(p) < keyLen {
			return fmt.Errorf("send packet: %w", derp.ErrShortFrame)
		}
		if len(p)-keyLen > derp.MaxPacketSize {
			return fmt.Errorf("send packet: %w", derp.ErrFrameTooLarge)
		}
		if c.limiter != nil {
			if err := c.limiter.WaitN(ctx, len(p)); err != nil {
				return fmt.Errorf("rate limit: %w", err)
			}
		}
		c.s.route(c, key.NodePublicFromRaw32([32]byte(p[:keyLen])), p[keyLen:])
	case derp.FrameForwardPacket:
		if !c.isMesh {
			return &meshOnlyError{"forward packet"}
		}
		if len(p) < 2*keyLen {
			return fmt.Errorf("forward packet: %w", derp.ErrShortFrame)
		}
		src := key.NodePublicFromRaw32([32]byte(p[:keyLen]))
		dst := key.NodePublicFromRaw32([32]byte(p[keyLen : 2*keyLen]))
		c.s.deliverForwarded(src, dst, p[2*keyLen:])
	case derp.FramePing:
		if len(p) < 8 {
			return fmt.Errorf("ping: %w", derp.ErrShortFrame)
		}
		c.queueCtrl(ctrlMsg{typ: derp.FramePong, data: [8]byte(p[:8])})
	case derp.FrameNotePreferred:
		if len(p) < 1 {
			return fmt.Errorf("note preferred: %w", derp.ErrShortFrame)
		}
		c.preferred.Store(p[0] != 0)
	case derp.FrameWatchConns:
		if !c.isMesh {
			return &meshOnlyError{"watch conns"}
		}
		c.s.addWatcher(c)
	}
	return nil
}

// sendLoop writes queued frames to the client until ctx is done or a write
// fails. It closes nc when it returns, which ends recvLoop.
func (c *sclient) sendLoop(ctx context.Context) error {
	defer c.nc.Close()
	keepAlive := time.NewTicker(c.s.opts.KeepAliveInterval)
	defer keepAlive.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			c.sendGoodbye()
			return nil
		case <-c.discoQ.ready:
			err = c.writeQueued(c.discoQ)
		case <-c.sendQ.ready:
			err = c.writeQueued(c.sendQ)
		case m := <-c.ctrlQ:
			err = c.writeCtrl(m)
		case <-c.peerReady:
			err = c.writePeerUpdates()
		case <-keepAlive.C:
			c.setWriteDeadline()
			err = derp.WriteFrame(c.bw, derp.FrameKeepAlive)
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if c.discoQ.len() == 0 && c.sendQ.len() == 0 && len(c.ctrlQ) == 0 {
			c.setWriteDeadline()
			if err := c.bw.Flush(); err != nil {
				return fmt.Errorf("flush: %w", err)
			}
		}
	}
}

func (c *sclient) setWriteDeadline() {
	c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.WriteTimeout))
}

// sendGoodbye tells the client why it is being closed, best effort.
func (c *sclient) sendGoodbye() {
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	switch {
	case c.s.ctx.Err() != nil:
		var b [8]byte
		binary.BigEndian.PutUint32(b[0:4], uint32(restartReconnectIn/time.Millisecond))
		binary.BigEndian.PutUint32(b[4:8], uint32(restartTryFor/time.Millisecond))
		derp.WriteFrame(c.bw, derp.FrameRestarting, b[:])
	case c.evicted.Load():
		derp.WriteFrame(c.bw, derp.FrameHealth, []byte("replaced by a newer connection with the same node key"))
	case c.unadmitted.Load():
		derp.WriteFrame(c.bw, derp.FrameHealth, []byte("node key no longer admitted"))
	}
	c.bw.Flush()
}

// writeBatch is how many queued packets writeQueued writes before the
// send loop looks at disco and control frames again.
const writeBatch = 64

// writeQueued writes up to writeBatch packets of q; if more wait, it
// leaves q marked ready for the next turn of the send loop.
func (c *sclient) writeQueued(q *pktQueue) error {
	for range writeBatch {
		p, ok := q.pop()
		if !ok {
			return nil
		}
		if err := c.writePacket(p); err != nil {
			return err
		}
	}
	if q.len() > 0 {
		q.signal()
	}
	return nil
}

func (c *sclient) writePacket(p pkt) error {
	c.setWriteDeadline()
	src := p.src.Raw32()
	c.s.packetsRelayed.Add(1)
	c.s.bytesRelayed.Add(int64(len(p.data)))
	return derp.WriteFrame(c.bw, derp.FrameRecvPacket, src[:], p.data)
}

func (c *sclient) writeCtrl(m ctrlMsg) error {
	c.setWriteDeadline()
	switch m.typ {
	case derp.FramePeerGone:
		k := m.key.Raw32()
		return derp.WriteFrame(c.bw, derp.FramePeerGone, k[:], []byte{byte(m.reason)})
	case derp.FramePong:
		return derp.WriteFrame(c.bw, derp.FramePong, m.data[:])
	}
	return nil
}

func (c *sclient) writePeerUpdates() error {
	c.pmu.Lock()
	ups := c.pendingPeer
	c.pendingPeer = nil
	c.pmu.Unlock()
	for _, u := range ups {
		c.setWriteDeadline()
		k := u.key.Raw32()
		var err error
		if u.present {
			err = derp.WriteFrame(c.bw, derp.FramePeerPresent, k[:])
		} else {
			err = derp.WriteFrame(c.bw, derp.FramePeerGone, k[:], []byte{byte(derp.PeerGoneDisconnected)})
		}
		if err != nil {
			return err
		}
	}
	return nil
}
