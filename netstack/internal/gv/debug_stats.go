package gv

import "fmt"

// DebugStats returns a one-line summary of loss-related counters.
func (st *Stack) DebugStats() string {
	s := st.s.Stats()
	return fmt.Sprintf("tcp retrans=%d fastretrans=%d timeouts=%d sendErr=%d segsSent=%d segsRecv=%d invalidRecv=%d rcvQueueDrop? dropped=%d linkQ=%d nicTxDrop=%d",
		s.TCP.Retransmits.Value(), s.TCP.FastRetransmit.Value(), s.TCP.Timeouts.Value(), s.TCP.SegmentSendErrors.Value(),
		s.TCP.SegmentsSent.Value(), s.TCP.ValidSegmentsReceived.Value(), s.TCP.InvalidSegmentsReceived.Value(),
		s.DroppedPackets.Value(), st.ep.NumQueued(), s.NICs.TxPacketsDroppedNoBufferSpace.Value())
}
