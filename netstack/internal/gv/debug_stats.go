package gv

import (
	"fmt"

	"beam.dev/beam/third_party/gvisor/tcp"
)

// Stats counts events on a stack's data path that explain a slow or
// stalled transfer. Counters only grow.
type Stats struct {
	// LinkWaits counts the times a sender found the outbound queue full
	// and waited for the TUN reader to make room (back-pressure).
	LinkWaits uint64
	// LinkDrops counts outbound packets discarded because the stack was
	// closing. Nothing else drops packets on the link.
	LinkDrops uint64
	// TCPRetransmits counts TCP segments sent again.
	TCPRetransmits uint64
	// TCPTimeouts counts TCP retransmission timer expiries.
	TCPTimeouts uint64
	// TCPSpuriousRTOs counts timeouts found afterwards to have been
	// needless (the ACK was only late).
	TCPSpuriousRTOs uint64
}

// Stats returns the stack's data-path counters.
func (st *Stack) Stats() Stats {
	s := st.s.Stats()
	return Stats{
		LinkWaits:       st.ep.waits.Load(),
		LinkDrops:       st.ep.drops.Load(),
		TCPRetransmits:  s.TCP.Retransmits.Value(),
		TCPTimeouts:     s.TCP.Timeouts.Value(),
		TCPSpuriousRTOs: s.TCP.SpuriousRTORecovery.Value(),
	}
}

// DebugStats returns a one-line summary of loss-related counters.
func (st *Stack) DebugStats() string {
	s := st.s.Stats()
	var segQDrop, zeroWnd uint64
	for _, ep := range st.s.RegisteredEndpoints() {
		if te, ok := ep.(*tcp.Endpoint); ok {
			if es, ok := te.Stats().(*tcp.Stats); ok {
				segQDrop += es.ReceiveErrors.SegmentQueueDropped.Value()
				zeroWnd += es.ReceiveErrors.ZeroRcvWindowState.Value()
			}
		}
	}
	return fmt.Sprintf("tcp retrans=%d fastretrans=%d timeouts=%d spuriousRTO=%d sendErr=%d segsSent=%d segsRecv=%d invalidRecv=%d segQDrop=%d zeroRcvWnd=%d dropped=%d linkQ=%d linkWaits=%d linkDrops=%d",
		s.TCP.Retransmits.Value(), s.TCP.FastRetransmit.Value(), s.TCP.Timeouts.Value(), s.TCP.SpuriousRTORecovery.Value(),
		s.TCP.SegmentSendErrors.Value(), s.TCP.SegmentsSent.Value(), s.TCP.ValidSegmentsReceived.Value(), s.TCP.InvalidSegmentsReceived.Value(),
		segQDrop, zeroWnd, s.DroppedPackets.Value(), st.ep.queued(), st.ep.waits.Load(), st.ep.drops.Load())
}
