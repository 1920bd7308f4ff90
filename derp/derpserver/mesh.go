package derpserver

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// MeshPeer is another relay of the region to mesh with.
type MeshPeer struct {
	// URL is the relay's base URL, http:// or https://.
	URL string
	// Key is the relay's machine public key, pinned: a server at URL that
	// presents another key is refused before it is sent anything. Zero
	// trusts whichever relay answers at URL (a warning is logged).
	Key key.MachinePublic
}

// meshPeer is this server's link to another relay of the region: a relay
// client that dialed it with the mesh key, watches its clients and forwards
// packets for them.
//
// Goroutines: run (owned by Server.wg) dials, reads presence updates and,
// while connected, owns one writer goroutine draining q.
type meshPeer struct {
	s      *Server
	peer   MeshPeer
	logger *slog.Logger
	q      *fairQueue // packets to forward (pkt.dst set), a fair share per source
}

// Bounds of a mesh link's forward queue, shared by every client whose
// packets cross it: deeper than a client's queue, for the same bursts.
// Past them the queue drops packets of the sources holding the most.
const (
	meshQueueDepth = 8192
	meshQueueBytes = 8 << 20
)

func newMeshPeer(s *Server, p MeshPeer) *meshPeer {
	l := s.logger.With("mesh_peer", p.URL)
	if !p.Key.IsZero() {
		l = l.With("pinned_key", p.Key.ShortString())
	}
	return &meshPeer{
		s:      s,
		peer:   p,
		logger: l,
		q:      newFairQueue(meshQueueDepth, meshQueueBytes),
	}
}

// forward queues a packet for the meshed relay without blocking.
func (mp *meshPeer) forward(src, dst key.NodePublic, data []byte) {
	// Count first so the counter never lags a delivered packet.
	mp.s.packetsForwarded.Add(1)
	if n := mp.q.push(pkt{src: src, dst: dst, data: data}); n > 0 {
		mp.s.packetsForwarded.Add(-int64(n))
		mp.s.dropsGone.Add(int64(n))
	}
}

// run keeps the mesh link up until ctx is done, redialing with backoff.
func (mp *meshPeer) run(ctx context.Context) {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	backoff := minBackoff
	if mp.peer.Key == mp.s.publicKey {
		mp.logger.Info("mesh peer's pinned key is this server's own; not meshing with it")
		return
	}
	for ctx.Err() == nil {
		start := time.Now()
		self, err := mp.runOnce(ctx)
		if self {
			mp.logger.Info("mesh URL is this server itself; not meshing with it")
			return
		}
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, derp.ErrMeshRecord):
			mp.logger.Warn("mesh link carried a record that does not authenticate (injected or altered on the way); dropped it and dialing again", "err", err)
		case errors.Is(err, derp.ErrMeshUnproven):
			mp.logger.Warn("refusing mesh peer: it did not prove the mesh key for this connection (an impostor without the key, or a mesh handshake recorded earlier and played back); it got nothing but the client info", "err", err)
		case errors.Is(err, derp.ErrServerKey):
			mp.logger.Error("refusing mesh peer: it presents another server key than the pinned one (an impostor, or a relay whose key changed); nothing was sent to it", "err", err)
		default:
			mp.logger.Warn("mesh link down", "err", err)
		}
		if time.Since(start) > maxBackoff {
			backoff = minBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// runOnce dials the peer and serves the link until it breaks. It reports
// self if the peer turned out to be this server.
func (mp *meshPeer) runOnce(ctx context.Context) (self bool, err error) {
	c, err := derp.Dial(ctx, mp.peer.URL, mp.s.meshNode, derp.ClientOptions{
		Logger:      mp.logger,
		DialContext: mp.s.opts.MeshDialContext,
		TLSConfig:   mp.s.opts.MeshTLSConfig,
		MeshKey:     mp.s.opts.MeshKey,
		ServerKey:   mp.peer.Key,
	})
	if err != nil {
		return false, err
	}
	if c.ServerPublicKey() == mp.s.publicKey {
		c.Close()
		return true, nil
	}
	if err := c.WatchConns(); err != nil {
		c.Close()
		return false, err
	}
	mp.logger.Info("mesh link up", "server_key", c.ServerPublicKey().String())

	linkCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		<-linkCtx.Done()
		c.Close()
	})
	wg.Go(func() {
		defer cancel()
		for {
			select {
			case <-linkCtx.Done():
				return
			case <-mp.q.ready:
				for {
					p, ok := mp.q.pop()
					if !ok {
						break
					}
					if err := c.ForwardPacket(p.src, p.dst, p.data); err != nil {
						return
					}
				}
			}
		}
	})
	for {
		m, rerr := c.Recv()
		if rerr != nil {
			err = rerr
			break
		}
		switch m := m.(type) {
		case derp.PeerPresentMessage:
			mp.s.addRemote(m.Peer, mp)
		case derp.PeerGoneMessage:
			mp.s.removeRemote(m.Peer, mp)
		}
	}
	cancel()
	wg.Wait()
	mp.s.removeAllRemote(mp)
	return false, err
}

// addRemote records that k is connected to the meshed relay mp.
func (s *Server) addRemote(k key.NodePublic, mp *meshPeer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remote[k] = mp
}

// removeRemote forgets that k is on mp and, if k is not connected here
// either, tells local senders it is gone.
func (s *Server) removeRemote(k key.NodePublic, mp *meshPeer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.remote[k] != mp {
		return
	}
	delete(s.remote, k)
	if s.clients[k] == nil {
		s.notifyGoneLocked(k)
	}
}

// removeAllRemote forgets every client learned from mp.
func (s *Server) removeAllRemote(mp *meshPeer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, p := range s.remote {
		if p == mp {
			delete(s.remote, k)
		}
	}
}
