package derpserver

import "time"

// SetSTUNLimitForTest replaces s's STUN limiter with one of burst requests
// per source, maxSources entries and the clock now, refilling one token a
// second.
func SetSTUNLimitForTest(s *Server, burst, maxSources int, now func() time.Time) {
	l := newSTUNLimiter(1, burst, maxSources)
	l.now = now
	s.stunLimit = l
}

// QueuedBytesForTest returns the bytes waiting in s's client send queues.
func QueuedBytesForTest(s *Server) int {
	_, _, bytes := s.queueDepth()
	return bytes
}
