// Copyright 2026 The Beam Authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

package tcp

import (
	"math"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// BBR-style congestion control: a model of the path (bottleneck bandwidth
// and minimum round-trip time) sets the window, and random loss does not
// shrink it. It follows BBR v1 (draft-cardwell-iccrg-bbr-congestion-control)
// without pacing, which this stack does not do:
//
//   - The delivery rate is sampled once per round (a round trip of the
//     data) from the bytes cumulatively or selectively acknowledged in it;
//     the bandwidth estimate is the largest sample of the last bbrBWRounds
//     rounds. Rounds in which the sender ran out of data only raise it.
//   - Startup grows the window by what each ACK delivers, as slow start
//     does, up to bbrStartupGain times the estimated bandwidth-delay
//     product, until the estimate stops growing by a quarter for three
//     rounds.
//   - Then the window is bbrCwndGain times the estimated bandwidth-delay
//     product. If the path could carry more, a window of twice the estimate
//     delivers more than the estimate, so the estimate keeps rising; if it
//     cannot, at most one bandwidth-delay product waits in queues.
//   - The minimum RTT is the least sample of the last bbrMinRTTWindow. When
//     it is that old, or rounds show the path's round trip has grown well
//     beyond it, the window drops to bbrProbeRTTCwnd for bbrProbeRTTTime
//     so queues drain and a fresh minimum is seen.
//   - Loss, detected by duplicate ACKs, SACK or RACK, does not shrink the
//     window: the loss recovery in snd.go resends what was lost within it.
//     A retransmission timeout restarts from a few segments, grows back by
//     what each ACK delivers, and restores the window held before once
//     the recovery it started ends. Beam's changes to snd.go for this
//     control keep such timeouts rare and cheap: see resendLostRetransmit,
//     lossAfterRecovery and rtoIntoSACKRecovery.
const (
	bbrBWRounds      = 10
	bbrStartupGrowth = 1.25
	bbrStartupRounds = 3
	bbrCwndGain      = 2
	// bbrStartupGain bounds the window in Startup to this many times the
	// estimated bandwidth-delay product (BBR's 2/ln 2), so the estimate
	// can grow by as much each round.
	bbrStartupGain  = 2.89
	bbrMinCwnd      = 4
	bbrMinRTTWindow = 10 * time.Second
	bbrProbeRTTCwnd = 4
	bbrProbeRTTTime = 200 * time.Millisecond
	// A round whose least RTT sample is at least bbrStretch times the
	// minimum RTT plus bbrStretchSlack, bbrStretchRounds rounds in a row,
	// means the path's round trip grew (the overlay moved from a direct
	// path to the relay): the window's own queue stays under one
	// bandwidth-delay product, twice the minimum RTT at most. See
	// maybeEndRound.
	bbrStretch       = 4
	bbrStretchSlack  = 2 * time.Millisecond
	bbrStretchRounds = 2
	// bbrMinRound bounds a round from below so that a round trip of a few
	// microseconds (loopback) does not sample the ACK clock's jitter.
	bbrMinRound = time.Millisecond
)

type bbrMode int

const (
	bbrStartup bbrMode = iota
	bbrProbeBW
	bbrProbeRTT
)

// bbrState is the BBR-style congestion control of one sender.
type bbrState struct {
	s    *sender
	mode bbrMode

	// delivered counts the bytes acknowledged, cumulatively or by SACK,
	// since the connection began; lastUna and lastSacked are the send
	// state it was last brought up to date from.
	delivered  uint64
	lastUna    seqnum.Value
	lastSacked seqnum.Size

	// The current round: when it began, delivered then, the send order
	// then, and whether the sender ran out of data during it.
	roundStart     tcpip.MonotonicTime
	roundDelivered uint64
	roundEndOrder  uint64
	appLimited     bool
	// roundMinRTT is the least RTT sample of the round; stretched
	// counts the rounds in a row whose least sample was far above the
	// minimum RTT.
	roundMinRTT time.Duration
	stretched   int

	// bw holds the delivery rate samples (bytes per second) of the last
	// rounds, next is where the next goes.
	bw   [bbrBWRounds]float64
	next int

	// fullBW is the estimate Startup last grew by a quarter past, and
	// fullRounds the rounds since.
	fullBW     float64
	fullRounds int

	// minRTT is the minimum RTT, seen at minRTTStamp; minRTTStale marks
	// it expired early (see maybeEndRound).
	minRTT      time.Duration
	minRTTStamp tcpip.MonotonicTime
	minRTTStale bool

	// probeRTTEnd is when ProbeRTT may end; priorCwnd is the window to
	// restore after it, or after a retransmission timeout.
	probeRTTEnd tcpip.MonotonicTime
	priorCwnd   int
	// rtoRecovery is set from a retransmission timeout until the
	// recovery it started ends.
	rtoRecovery bool
}

func newBBRCC(s *sender) *bbrState {
	return &bbrState{s: s, lastUna: s.SndUna, roundStart: s.ep.stack.Clock().NowMonotonic()}
}

// maxBW is the bandwidth estimate in bytes per second.
func (b *bbrState) maxBW() float64 {
	m := 0.0
	for _, v := range b.bw {
		m = max(m, v)
	}
	return m
}

// target is the window, in segments, that the model asks for: the gain
// times the estimated bandwidth-delay product. Zero means no estimate yet.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) target() int { return b.window(bbrCwndGain) }

// window is gain times the estimated bandwidth-delay product, in
// segments, or zero if there is no estimate yet.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) window(gain float64) int {
	bw := b.maxBW()
	if bw == 0 || b.minRTT == 0 {
		return 0
	}
	bdp := bw * b.minRTT.Seconds() / float64(b.s.MaxPayloadSize)
	// Three segments more for delayed and stretched ACKs, and never less
	// than a new connection starts with, so a request-response flow whose
	// estimate stays small still sends a response's first flight whole.
	return max(InitialCwnd, int(math.Ceil(gain*bdp))+3)
}

// Update implements congestionControl.Update. The model is fed by OnAck,
// which sees every ACK, also during recovery.
func (b *bbrState) Update(int, time.Duration, tcpip.MonotonicTime) {}

// HandleLossDetected implements congestionControl.HandleLossDetected.
// Loss does not shrink the window: ssthresh is set so that entering and
// leaving recovery (see enterRecovery and leaveRecovery) keep it.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) HandleLossDetected() {
	b.s.Ssthresh = max(b.s.SndCwnd, bbrMinCwnd)
}

// HandleRTOExpired implements congestionControl.HandleRTOExpired.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) HandleRTOExpired() {
	b.priorCwnd = max(b.priorCwnd, b.s.SndCwnd)
	b.rtoRecovery = true
	// One segment (or, when the sender goes on in SACK recovery, the
	// Ssthresh+3 that enterRecovery sets) and back up by what each ACK
	// delivers; the window held before returns when recovery ends.
	b.s.Ssthresh = 1
	b.s.SndCwnd = 1
}

// PostRecovery implements congestionControl.PostRecovery.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) PostRecovery() {
	if b.rtoRecovery {
		b.restore()
		return
	}
	if t := b.target(); t > 0 && b.mode == bbrProbeBW {
		b.s.SndCwnd = t
	}
}

// restore ends recovery from a retransmission timeout: everything sent
// before it has arrived, so the window held before it is safe again.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) restore() {
	b.s.SndCwnd = max(b.s.SndCwnd, b.priorCwnd)
	b.rtoRecovery, b.priorCwnd = false, 0
}

// OnAck implements ackObserver: it brings the model up to date with an
// ACK and sets the window from it.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) OnAck(rtt time.Duration, now tcpip.MonotonicTime) {
	s := b.s
	sacked := s.ep.scoreboard.Sacked()
	acked := uint64(0)
	if b.lastUna.LessThan(s.SndUna) {
		acked = uint64(b.lastUna.Size(s.SndUna))
	}
	// SACKed bytes that the cumulative ACK now covers were counted when
	// they were SACKed; the scoreboard forgets them (and all of it after
	// a retransmission timeout), so the difference can be negative.
	d := int64(acked) + int64(sacked) - int64(b.lastSacked)
	if d > 0 {
		b.delivered += uint64(d)
	}
	b.lastUna, b.lastSacked = s.SndUna, sacked
	deliveredPkts := int((uint64(max(d, 0)) + uint64(s.MaxPayloadSize) - 1) / uint64(s.MaxPayloadSize))

	if rtt > 0 && (b.roundMinRTT == 0 || rtt < b.roundMinRTT) {
		b.roundMinRTT = rtt
	}
	expired := b.minRTT != 0 && (b.minRTTStale || now.Sub(b.minRTTStamp) > bbrMinRTTWindow)
	if rtt > 0 && (b.minRTT == 0 || rtt <= b.minRTT || expired) {
		b.minRTT, b.minRTTStamp, b.minRTTStale = rtt, now, false
	}
	if s.writeNext == nil && s.Outstanding < s.SndCwnd {
		b.appLimited = true
	}

	b.maybeEndRound(now)
	b.maybeProbeRTT(now, expired)

	if b.rtoRecovery && !s.FastRecovery.Active && s.state != tcpip.RTORecovery {
		b.restore()
	}

	switch {
	case b.mode == bbrProbeRTT:
		s.SndCwnd = bbrProbeRTTCwnd
	case b.mode == bbrStartup || b.rtoRecovery:
		// Grow by what was delivered, as slow start does; after a
		// timeout, only back up to the window held before it.
		cwnd := s.SndCwnd + deliveredPkts
		if b.mode == bbrProbeBW {
			cwnd = min(cwnd, max(b.priorCwnd, b.target()))
		} else if w := b.window(bbrStartupGain); w > 0 {
			cwnd = min(cwnd, max(w, s.SndCwnd))
		}
		s.SndCwnd = max(cwnd, 1)
	default:
		t := b.target()
		if t == 0 {
			break
		}
		if s.SndCwnd < t {
			// Grow towards the target rather than jump: a window that
			// came down (after idle or a timeout) comes back at the
			// rate ACKs return, not as one burst.
			s.SndCwnd = min(t, s.SndCwnd+deliveredPkts)
		} else {
			s.SndCwnd = t
		}
		b.priorCwnd = 0
	}
	if s.FastRecovery.Active {
		s.Ssthresh = max(s.SndCwnd, bbrMinCwnd)
	}
}

// maybeEndRound closes the round once data sent in it is acknowledged,
// recording its delivery rate.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) maybeEndRound(now tcpip.MonotonicTime) {
	// A round is a round trip of the data itself: it ends once a segment
	// sent after it began is acknowledged (the sender's send order, see
	// noteSegDelivered). Timed rounds went wrong both ways: the smoothed
	// RTT moves by 1/(window/2) of a sample per ACK with timestamps on
	// every segment (RFC 7323 appendix G), so one slow handshake held it
	// near a second and left Startup blind; the minimum RTT is shorter
	// than a round trip through a queue, so its samples caught bursts of
	// ACKs.
	elapsed := now.Sub(b.roundStart)
	if b.s.deliveredOrder <= b.roundEndOrder || elapsed < bbrMinRound {
		return
	}
	sample := float64(b.delivered-b.roundDelivered) / elapsed.Seconds()
	prev := b.maxBW()
	if !b.appLimited || sample >= prev {
		b.bw[b.next] = sample
		b.next = (b.next + 1) % len(b.bw)
	}
	if b.mode == bbrStartup && !b.appLimited {
		if bw := b.maxBW(); bw >= b.fullBW*bbrStartupGrowth {
			b.fullBW, b.fullRounds = bw, 0
		} else if b.fullRounds++; b.fullRounds >= bbrStartupRounds {
			b.mode = bbrProbeBW
		}
	}
	// A minimum RTT from before the path's round trip grew keeps the
	// window at a fraction of the new bandwidth-delay product; the
	// delivery rate, and with it the estimate and the window, then fall
	// round after round to the floor until the minimum expires (10 s of
	// a few Mbit/s, measured). Rounds stretched far beyond what the
	// window's own queue explains expire it now: ProbeRTT drains the
	// queue and measures the new one.
	switch {
	case b.roundMinRTT == 0:
		// No sample this round: no evidence either way.
	case b.mode == bbrProbeBW && !b.appLimited && b.minRTT > 0 && b.roundMinRTT >= bbrStretch*b.minRTT+bbrStretchSlack:
		if b.stretched++; b.stretched >= bbrStretchRounds {
			b.minRTTStale = true
			b.stretched = 0
		}
	default:
		b.stretched = 0
	}
	b.roundStart, b.roundDelivered, b.appLimited = now, b.delivered, false
	b.roundEndOrder, b.roundMinRTT = b.s.xmitOrder, 0
}

// maybeProbeRTT enters ProbeRTT when the minimum RTT had not been seen
// for bbrMinRTTWindow (expired), and leaves it once bbrProbeRTTTime and a round
// have passed at the small window.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) maybeProbeRTT(now tcpip.MonotonicTime, expired bool) {
	switch b.mode {
	case bbrProbeBW:
		if !expired {
			return
		}
		b.mode = bbrProbeRTT
		b.priorCwnd = max(b.priorCwnd, b.s.SndCwnd)
		b.probeRTTEnd = now.Add(max(bbrProbeRTTTime, b.minRTT))
	case bbrProbeRTT:
		if now.Before(b.probeRTTEnd) {
			return
		}
		b.mode = bbrProbeBW
		b.minRTTStamp = now
		b.s.SndCwnd = max(b.priorCwnd, bbrMinCwnd)
	}
}
