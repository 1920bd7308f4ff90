package coordinator

import (
	"testing"
	"time"
)

// TestFlipsDue checks when a stream sends the online flips it holds:
// onlineDelay after its last delta, unless a burst of full maps is going
// out, when they wait for its end (burst closed by fullMapSent), up to
// maxFlipHold after the first flip.
func TestFlipsDue(t *testing.T) {
	const open = 100 // onlineDelay(100) = 100 ms
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	delay := onlineDelay(open)
	tests := []struct {
		name      string
		fullMaps  int64
		since     time.Time
		now       time.Time
		want      time.Time
		wantBurst bool
	}{
		{"no full maps, before the delay", 0, t0, t0.Add(delay / 2), t0.Add(delay), false},
		{"no full maps, past the delay", 0, t0, t0.Add(2 * delay), t0.Add(delay), false},
		{"a few full maps", burstFullMaps - 1, t0, t0.Add(2 * delay), t0.Add(delay), false},
		{"burst, before the delay", burstFullMaps, t0, t0.Add(delay / 2), t0.Add(delay), false},
		{"burst, past the delay", 128, t0, t0.Add(2 * delay), t0.Add(maxFlipHold), true},
		{"burst, past the limit", 128, t0, t0.Add(maxFlipHold), t0.Add(delay), false},
		{"burst, flips newer than the last delta", 128, t0.Add(time.Minute), t0.Add(time.Minute + delay), t0.Add(time.Minute + maxFlipHold), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms := newStreams(nil)
			ms.fullMaps.Store(tt.fullMaps)
			got, burst := ms.flipsDue(t0, tt.since, tt.now, open)
			if !got.Equal(tt.want) {
				t.Errorf("flipsDue = %v after t0, want %v", got.Sub(t0), tt.want.Sub(t0))
			}
			if (burst != nil) != tt.wantBurst {
				t.Errorf("burst channel %v, want one: %v", burst != nil, tt.wantBurst)
			}
		})
	}
}

// TestBurstOverWakes checks that the end of a burst of full maps (fewer
// than burstFullMaps left) closes the channel that streams holding
// their flips wait on, and that a stream asking then is told to send.
func TestBurstOverWakes(t *testing.T) {
	ms := newStreams(nil)
	t0 := time.Now()
	ms.fullMaps.Store(burstFullMaps + 1)
	_, burst := ms.flipsDue(t0.Add(-time.Second), t0, t0, 0)
	if burst == nil {
		t.Fatal("no burst channel during a burst")
	}
	ms.fullMapSent() // burstFullMaps left: still a burst
	select {
	case <-burst:
		t.Fatal("burst channel closed while the burst goes on")
	default:
	}
	ms.fullMapSent()
	select {
	case <-burst:
	default:
		t.Fatal("burst channel not closed at the end of the burst")
	}
	now := time.Now()
	if due, burst := ms.flipsDue(t0.Add(-time.Second), t0, now, 0); due.After(now) || burst != nil {
		t.Errorf("after the burst: due in %v, burst channel %v; want due now, none", due.Sub(now), burst != nil)
	}
}
