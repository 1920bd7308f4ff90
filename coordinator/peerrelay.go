package coordinator

import (
	"context"
	"errors"
	"time"

	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/types/key"
)

// A node's peer relay offer (wire.Node.PeerRelay) is the port its map
// request reported, shown while the policy's "peerRelays" designates the
// node. A map request decides it (handleMap), and so does a policy or
// group change for every node streaming here (applyPolicyLocked): its
// peers and the node itself see the offer start or stop with that
// change's netmap update, not at the node's next map request.

// redesignatePeerRelaysLocked decides again, under policy p, the offer of
// every node streaming here, and marks the nodes whose offer changed for
// their peers. It returns those nodes. s.mu held.
func (s *Server) redesignatePeerRelaysLocked(p *policy.Policy) []key.NodePublic {
	var changed []key.NodePublic
	for nk := range s.sessions {
		e := s.nodes[nk]
		if e == nil {
			continue
		}
		want := uint16(0)
		if e.peerRelayAsked != 0 && p.MayPeerRelay(&e.rec.Node) {
			want = e.peerRelayAsked
		}
		if e.rec.Node.PeerRelay == want {
			continue
		}
		e.rec.Node.PeerRelay = want
		s.notifyLocked(e.rec.NetworkID, nk)
		changed = append(changed, nk)
		s.logger.Info("peer relay offer changed by the policy", "node", nk.ShortString(), "port", want)
	}
	return changed
}

// persistPeerRelayTimeout bounds writing the records of nodes whose offer
// a policy change changed.
const persistPeerRelayTimeout = 10 * time.Second

// persistPeerRelays writes the records of nks to the store.
func (s *Server) persistPeerRelays(nks []key.NodePublic) {
	if len(nks) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), persistPeerRelayTimeout)
	defer cancel()
	for _, nk := range nks {
		if err := s.persist(ctx, nk, false); err != nil && !errors.Is(err, ErrNotFound) {
			s.logger.Error("persist node", "node", nk.ShortString(), "err", err)
		}
	}
}
