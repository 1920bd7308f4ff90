package bind

import (
	"bytes"
	"encoding/binary"
	"sync"
	"time"
)

// Copies of a handshake initiation. A peer's bind sends each initiation
// over every path it may take (spray: every candidate address, the relay,
// a peer relay) and again when the peer shows it is up (resendInit), so
// several copies of one initiation usually arrive here within a
// millisecond, over both UDP sockets and the relay. wireguard-go must see
// only one of them: its handshake workers run in parallel, and its replay
// check (ConsumeMessageInitiation reads the last timestamp under a read
// lock and records the new one later under the write lock) lets two
// copies handled at once both through. Each is then answered, and the
// second answer's session replaces the first's (BeginSymmetricSession
// deletes the pending keypair). If the first answer reaches the initiator
// first, as it usually does, every packet the initiator sends names a
// session this node has already deleted and is dropped without a word,
// until the initiator's timer starts a new handshake after 15 s of
// silence (KeepaliveTimeout + RekeyTimeout): a stalled first exchange on
// a path that works.
//
// So the bind hands wireguard-go the first copy of an initiation and
// drops the others. A copy that arrives after wireguard-go answered the
// initiation means the initiator did not get the answer (it resends only
// unanswered initiations): the bind sends the answer again, back the way
// the copy came, which wireguard-go itself would not do (it rejects the
// copy as a replay), and which saves the initiator its 5 s retry. A copy
// that arrives initCopyHold after the first with no answer sent goes to
// wireguard-go again, in case the first was refused for a reason a retry
// gets past (a peer configured only since, a full queue).
//
// Nothing here can tell a genuine initiation from a forged one (only
// wireguard-go can), and anyone can send one from any source. So an
// initiation arriving does not replace the one wireguard-go last
// answered, and its saved answer: that changes only when wireguard-go
// answers another. Initiations handed over and not yet answered are
// kept apart, a few of them, so a forgery arriving just after the
// genuine initiation does not make its copies go over again either.

const (
	// initCopyHold is how long copies of an unanswered initiation are
	// dropped. wireguard-go answers within milliseconds unless the
	// machine is starved; the initiator resends after a second at the
	// earliest once the peer has not answered (see Maintain).
	initCopyHold = initRetryAfter
	// respResendEvery is the least time between two resends of one
	// answer (the initiator resends at most every resendInitEvery).
	respResendEvery = resendInitEvery
	// initIDSize is the part of an initiation that identifies it:
	// everything after the type up to the end of mac1 (bytes 4 to 132).
	// Copies the initiator sends are identical there (mac2 follows);
	// anyone can make a copy that differs only in an encrypted field
	// and recompute mac1 (its key is our public key), and such a
	// forgery, which wireguard-go refuses, must not count as a copy of
	// the genuine initiation and keep that one from wireguard-go.
	initIDSize = 128
	// respIDSize is likewise the part of a response that identifies it
	// (bytes 4 to 76: indices, ephemeral key, empty box and mac1).
	respIDSize = 72
	// maxRespResends bounds how often one answer is sent again.
	maxRespResends = 5
	// maxPendingInits bounds the unanswered initiations of a peer kept
	// (initCopies.pending).
	maxPendingInits = 4
)

// pendingInit is an initiation handed to wireguard-go and not answered.
type pendingInit struct {
	id [initIDSize]byte
	// at is when it was last handed over (unix nanos); 0 if the slot is
	// free.
	at int64
}

// initCopies is what the bind knows of a peer's handshake initiations:
// the ones it handed wireguard-go that are not answered, and the last one
// wireguard-go answered with its answer.
type initCopies struct {
	mu sync.Mutex // guards the following fields
	// pending are the unanswered initiations handed over. A new one
	// takes a free slot or the one handed over longest ago.
	pending [maxPendingInits]pendingInit
	// answered identifies the last initiation wireguard-go answered:
	// every pending one with the sender index the answer names (a
	// forgery may share the genuine initiation's; resending the answer
	// to a copy of it is no worse than to a replay of the genuine one).
	answered [][initIDSize]byte
	// from is the endpoint wireguard-go's answer went to: where the
	// initiation it accepted came from.
	from *Endpoint
	// resp is wireguard-go's answer to it; empty until it sent one.
	// respAt is when the bind last sent it, resends how often it did
	// again.
	resp    []byte
	respAt  int64
	resends int
	// rxResp identifies the last handshake response from the peer handed
	// over: its sender and receiver indices and ephemeral key.
	rxResp [respIDSize]byte
}

// admitHandshake reports whether pkt, a WireGuard datagram tied to p that
// arrived over e, goes to wireguard-go: anything but a copy of an
// initiation already handed over does. For a copy of an answered one it
// sends the answer back over e instead (see initCopies).
func (b *Bind) admitHandshake(p *peer, e *Endpoint, pkt []byte, now int64) bool {
	if len(pkt) == responseSize && binary.LittleEndian.Uint32(pkt) == msgResponse {
		if !p.initCopies.firstResponse(pkt) {
			return false
		}
		p.noteAnswer(pkt)
		return true
	}
	if len(pkt) == cookieReplySize && binary.LittleEndian.Uint32(pkt) == msgCookie {
		p.noteAnswer(pkt)
		return true
	}
	if !isInitiation(pkt) {
		return true
	}
	c := &p.initCopies
	id := pkt[4 : 4+initIDSize]
	c.mu.Lock()
	if !c.isAnswered(id) {
		pi := c.pendingSlot(id)
		if pi.at != 0 && now-pi.at < int64(initCopyHold) {
			c.mu.Unlock()
			return false
		}
		copy(pi.id[:], id)
		pi.at = now
		c.mu.Unlock()
		return true
	}
	// A copy is not authenticated (a captured initiation replayed from
	// a forged source opens just the same), so the answer goes again
	// only over a path this node trusts for the peer, and a bounded
	// number of times: never to an address the copy alone vouches for.
	var resend []byte
	if now-c.respAt >= int64(respResendEvery) && c.resends < maxRespResends && b.answerPath(p, e, c.from) {
		c.respAt = now
		c.resends++
		resend = bytes.Clone(c.resp)
	}
	c.mu.Unlock()
	if resend != nil {
		b.log.Debug("peer resent an answered handshake initiation; resending the response", "peer", p.key.ShortString())
		b.sendBack(p, e, [][]byte{resend})
	}
	return false
}

// isAnswered reports whether id is the initiation wireguard-go last
// answered. c.mu is held.
func (c *initCopies) isAnswered(id []byte) bool {
	if len(c.resp) == 0 {
		return false
	}
	for i := range c.answered {
		if bytes.Equal(c.answered[i][:], id) {
			return true
		}
	}
	return false
}

// pendingSlot returns the pending slot of initiation id, or else the slot
// a new one takes (free, or handed over longest ago, with at zeroed).
// c.mu is held.
func (c *initCopies) pendingSlot(id []byte) *pendingInit {
	var oldest *pendingInit
	for i := range c.pending {
		pi := &c.pending[i]
		if pi.at != 0 && bytes.Equal(pi.id[:], id) {
			return pi
		}
		if oldest == nil || pi.at < oldest.at {
			oldest = pi
		}
	}
	oldest.at = 0
	return oldest
}

// answerPath reports whether e is a path to p that a resent answer may
// take: the relay (it vouches for the sender's key), p's peer relay
// session (bound through disco), the path wireguard-go's answer took
// (from, where the initiation it answered came from), p's confirmed
// direct path, or an address the coordinator gave for p.
func (b *Bind) answerPath(p *peer, e, from *Endpoint) bool {
	switch {
	case e.isRelay(), e.isPeerRelay(), e == from:
		return true
	case e.sock != nil || !e.src.IsValid():
		return e == p.best.Load()
	}
	if best := p.best.Load(); best != nil && best.sock == nil && best.src == e.src {
		return true
	}
	return b.isCandidate(p, e.src)
}

// noteResponse remembers pkt, a handshake response wireguard-go sends to
// p over e, if it answers an initiation handed over for p: that becomes
// the answered one.
func (p *peer) noteResponse(pkt []byte, e *Endpoint) {
	if len(pkt) != responseSize || binary.LittleEndian.Uint32(pkt) != msgResponse {
		return
	}
	c := &p.initCopies
	c.mu.Lock()
	defer c.mu.Unlock()
	// The response's receiver is the initiation's sender index.
	var answered [][initIDSize]byte
	for i := range c.pending {
		if pi := &c.pending[i]; pi.at != 0 && bytes.Equal(pi.id[:4], pkt[8:12]) {
			answered = append(answered, pi.id)
			pi.at = 0
		}
	}
	if answered == nil {
		return
	}
	c.answered = answered
	c.from = e
	c.resp = append(c.resp[:0], pkt...)
	c.respAt = time.Now().UnixNano()
	c.resends = 0
}

// firstResponse reports whether pkt, a handshake response from the peer,
// is not a copy of the last one handed over. Copies (the peer answered
// over two paths at once, or resent its answer) are dropped: wireguard-go
// takes a response once, and two copies handled at once by its parallel
// handshake workers can both get past its state check.
func (c *initCopies) firstResponse(pkt []byte) bool {
	id := pkt[4 : 4+respIDSize]
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Equal(c.rxResp[:], id) {
		return false
	}
	copy(c.rxResp[:], id)
	return true
}
