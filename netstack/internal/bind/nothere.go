package bind

import (
	"time"

	"beam.dev/beam/types/key"
)

// notHereRetry is how long after the relay said a peer is not connected
// to it an unanswered handshake initiation to that peer is sent again.
const notHereRetry = 250 * time.Millisecond

// PeerNotHere is called when a relay region reports that peer k is not
// connected to it: a packet sent to k there was dropped. A peer that just
// joined connects to its region a moment after its netmap entry (with its
// region) reaches us, so a first handshake initiation can arrive before
// it and be lost; without this, wireguard-go's retry (or Maintain's, a
// second or two later) would be the first to get through. An initiation
// still unanswered notHereRetry later is sent again (at most
// maxInitResends times in all, see resendInit; each copy the relay drops
// again reports again, which bounds the retries by that too). At most one
// retry per peer is pending: a relay repeating the report cannot pile up
// timers.
func (b *Bind) PeerNotHere(k key.NodePublic) {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe == nil {
		return
	}
	p := pe.p
	if !p.initWaiting() || !p.notHereArmed.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(notHereRetry, func() {
		p.notHereArmed.Store(false)
		if !p.removed.Load() {
			b.resendInit(p, time.Now().UnixNano())
		}
	})
}
