package coordinator

import (
	"time"

	"beam.dev/beam/types/key"
)

// SetFrameSplitAtForTest makes map messages whose JSON passes n bytes
// split across frames, for nodes that take them in pieces, and returns
// a func that restores the limit.
func SetFrameSplitAtForTest(n int) (restore func()) {
	old := frameSplitAt
	frameSplitAt = n
	return func() { frameSplitAt = old }
}

// SetStreamHookForTest makes every map stream's handler call f with its
// node key each time it is about to take the changes marked for it, and
// returns a func that removes f.
func SetStreamHookForTest(f func(key.NodePublic)) (restore func()) {
	beforeTakeForTest.Store(&f)
	return func() { beforeTakeForTest.Store(nil) }
}

// RestartWaitsForTest are the least and most a stream ending on shutdown
// tells its node to wait, with n streams open.
func RestartWaitsForTest(n int) (least, most time.Duration) {
	return restartGrace, restartGrace + min(max(time.Duration(n)*time.Millisecond, minRestartSpread), maxRestartSpread)
}

// SetApprovalHookForTest makes ApproveRegistration call f with the code
// once a shared store took the approval, and returns a func that
// removes f.
func SetApprovalHookForTest(f func(code string)) (restore func()) {
	afterShareApprovalForTest.Store(&f)
	return func() { afterShareApprovalForTest.Store(nil) }
}

// PeerSlotsForTest returns how many slots the map streams' table of
// nodes has, and how many of them are free.
func (s *Server) PeerSlotsForTest() (slots, free int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.peerSlots), len(s.freeSlots)
}

// SetOnlineGraceForTest sets how long nodes streaming at a shutdown stay
// online after the next start without streaming, and returns a func that
// restores it.
func SetOnlineGraceForTest(d time.Duration) (restore func()) {
	old := onlineGrace
	onlineGrace = d
	return func() { onlineGrace = old }
}

// SetOnlineRecordEveryForTest sets how often a running coordinator
// records which nodes stream, and returns a func that restores it.
func SetOnlineRecordEveryForTest(d time.Duration) (restore func()) {
	old := onlineRecordEvery
	onlineRecordEvery = d
	return func() { onlineRecordEvery = old }
}

// OnlineSettingForTest names the setting that records which nodes stream.
const OnlineSettingForTest = onlineSetting

// SetRegisterTimeoutForTest sets how long a registration may take (d) and
// the Retry-After of one that ran out of time (retry), and returns a func
// that restores them.
func SetRegisterTimeoutForTest(d, retry time.Duration) (restore func()) {
	oldD, oldR := registerTimeout, registerRetryAfter
	registerTimeout, registerRetryAfter = d, retry
	return func() { registerTimeout, registerRetryAfter = oldD, oldR }
}

// SharedPeerListsForTest returns how many shared peer lists the map
// streams keep, over all networks.
func (s *Server) SharedPeerListsForTest() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ns := range s.shared {
		if ns.memberVer == s.memberVer {
			n += ns.n
		}
	}
	return n
}

// AddOpenStreamsForTest makes the map streams count n more open streams
// than there are (n may be negative) when they pace their deltas, and
// returns a func that takes them away again.
func (s *Server) AddOpenStreamsForTest(n int) (restore func()) {
	s.open.Add(int64(n))
	return func() { s.open.Add(-int64(n)) }
}
