package bind

import "bytes"

// Crossed initiations. When both ends start a handshake at about the same
// moment (a restarted node starts one on the first packet of a session it
// never had, while its peer, told of the restart, starts one to probe its
// connections; or both binds resend an unanswered initiation when each
// hears the other is up), each end's wireguard-go can answer the other's
// initiation after sending its own. Answering replaces wireguard-go's
// handshake state with the responder's: the initiation it had sent is
// forgotten, and the answer to it is refused as invalid. Each end then
// holds only a responder's session, on which a responder may not send
// until the initiator has, and no packet flows until wireguard-go starts
// a new handshake after REKEY_TIMEOUT (5 s).
//
// So only one of the two initiations may be answered, and the bind sees
// to it in two ways:
//
//   - Ours is held back while wireguard-go has an initiation from the
//     peer to answer (handed over, unanswered, within initCopyHold): that
//     answer is about to forget ours, and ours would only make the peer
//     forget its own, whose answer is on its way. Held, ours is not sent
//     at all if wireguard-go answers; otherwise Maintain sends it once it
//     is initRetryAfter old, as it resends any unanswered initiation.
//   - Initiations that pass each other on the way are tied by key: while
//     ours went out (or out again) less than initRetryAfter ago and is
//     unanswered, an initiation from a peer whose key is lower than ours
//     is dropped. That peer answers ours, and the handshake completes
//     with this node as initiator. A peer with the higher key drops ours
//     in turn, and wireguard-go answers its initiation as WireGuard does.
//
// A peer whose initiation was dropped but who did not answer ours (ours
// was lost, or its wireguard-go refused it) resends its initiation, the
// same message, a second later (Maintain): a copy arriving initCopyHold
// or more after the one dropped goes to wireguard-go whatever ours is
// doing, so each initiation of a peer is kept from wireguard-go for at
// most about a second.

// crossedInit is the last initiation of a peer dropped because it crossed
// ours (see dropCrossed).
type crossedInit struct {
	id [initIDSize]byte
	at int64 // unix nanos it was dropped; 0 if none
}

// dropCrossed reports whether an initiation from p, identified by id,
// that arrived at now is dropped as crossing ours, or as a copy, within
// initCopyHold, of one that was.
func (b *Bind) dropCrossed(p *peer, id []byte, now int64) bool {
	yields := b.yieldsToOurs(p, now)
	c := &p.initCopies
	c.mu.Lock()
	defer c.mu.Unlock()
	x := &c.crossed
	if x.at != 0 && bytes.Equal(x.id[:], id) {
		return now-x.at < int64(initCopyHold)
	}
	if !yields {
		return false
	}
	copy(x.id[:], id)
	x.at = now
	return true
}

// yieldsToOurs reports whether an initiation from p arriving at now would
// cross ours: p's key is lower than ours, p is configured in wireguard-go,
// and our last initiation to p went out, or out again, less than
// initRetryAfter ago and is unanswered.
func (b *Bind) yieldsToOurs(p *peer, now int64) bool {
	if p.asleep.Load() {
		return false
	}
	ours, theirs := b.disco.nodeKey.Raw32(), p.key.Raw32()
	if bytes.Compare(theirs[:], ours[:]) >= 0 {
		return false
	}
	p.init.mu.Lock()
	defer p.init.mu.Unlock()
	sent := max(p.init.at, p.init.resentAt)
	return p.init.pkt != nil && !p.init.answered && !p.init.held && now-sent < int64(initRetryAfter)
}

// answering reports whether wireguard-go was handed an initiation from
// the peer within initCopyHold of now that it has not answered.
func (c *initCopies) answering(now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.pending {
		if at := c.pending[i].at; at != 0 && now-at < int64(initCopyHold) {
			return true
		}
	}
	return false
}
