package inflight

import (
	"testing"
	"time"
)

func TestCount(t *testing.T) {
	tests := []struct {
		name string
		ops  []int // positive: Add, negative: Done
		want int
	}{
		{"empty", nil, 0},
		{"added", []int{32, 5}, 37},
		{"released", []int{32, -20}, 12},
		{"released more than counted", []int{4, -10}, 0},
		{"released then added", []int{4, -10, 3}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := New(100, time.Hour)
			for _, k := range tt.ops {
				if k > 0 {
					w.Add(k)
				} else {
					w.Done(-k)
				}
			}
			if got := w.Len(); got != tt.want {
				t.Errorf("Len() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestNilWindow(t *testing.T) {
	var w *Window
	w.Add(5)
	w.Done(3)
	if got := w.Len(); got != 0 {
		t.Errorf("nil Len() = %d, want 0", got)
	}
	if wt := w.NewWaiter(); wt.Wait() {
		t.Error("nil waiter waited")
	}
}

func TestWaitUntilRelease(t *testing.T) {
	w := New(64, time.Hour)
	wt := w.NewWaiter()
	w.Add(63)
	if wt.Wait() {
		t.Fatal("waited with room for one more")
	}
	w.Add(32)
	returned := make(chan bool)
	go func() { returned <- wt.Wait() }()
	select {
	case <-returned:
		t.Fatal("Wait returned while the window is full")
	case <-time.After(50 * time.Millisecond):
	}
	w.Done(31) // 64: still full
	select {
	case <-returned:
		t.Fatal("Wait returned while the window is full")
	case <-time.After(50 * time.Millisecond):
	}
	w.Done(1)
	select {
	case waited := <-returned:
		if !waited {
			t.Error("Wait reported no wait")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait still blocked 10 s after the release that made room")
	}
}

// Two waiters of one full window both go once it has room: the first
// woken passes the wake-up on.
func TestWaitersBothWake(t *testing.T) {
	w := New(10, time.Hour)
	w.Add(10)
	done := make(chan struct{}, 2)
	for range 2 {
		wt := w.NewWaiter()
		go func() {
			wt.Wait()
			done <- struct{}{}
		}()
	}
	// Whether both block before the release or not, both must return.
	w.Done(5)
	for i := range 2 {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("waiter %d of 2 still blocked 10 s after the window had room", i+1)
		}
	}
}

// Packets never released (dropped inside wireguard-go) are forgotten
// after one to two periods, so they stall the producer at most that long.
func TestLeakExpires(t *testing.T) {
	const period = 20 * time.Millisecond
	w := New(8, period)
	wt := w.NewWaiter()
	w.Add(8)
	start := time.Now()
	if !wt.Wait() {
		t.Fatal("Wait did not wait on a full window")
	}
	d := time.Since(start)
	if d < period {
		t.Errorf("Wait returned after %v, before the period of %v", d, period)
	}
	// Generous: a loaded machine may run the timer late.
	if d > 2*period+2*time.Second {
		t.Errorf("Wait returned after %v, want about %v to %v", d, period, 2*period)
	}
	if got := w.Expired(); got != 8 {
		t.Errorf("Expired() = %d, want 8", got)
	}
	if got := w.Len(); got != 0 {
		t.Errorf("Len() after expiry = %d, want 0", got)
	}
}

// Releases take the oldest packets first, so packets counted in the
// previous period are not forgotten once released; what is left of a
// period is forgotten two periods on.
func TestPeriods(t *testing.T) {
	const period = time.Second
	now := time.Now()
	w := New(100, period)
	w.started = now
	w.now = func() time.Time { return now }
	step := func(d time.Duration) { now = now.Add(d) }

	w.Add(10)
	step(period)
	w.Add(5) // 10 in the previous period, 5 in this one
	w.Done(10)
	if got, exp := w.Len(), w.Expired(); got != 5 || exp != 0 {
		t.Errorf("after releasing the 10 older of 15: Len() = %d, Expired() = %d, want 5, 0", got, exp)
	}
	step(period)
	if got, exp := w.Len(), w.Expired(); got != 5 || exp != 0 {
		t.Errorf("one period on: Len() = %d, Expired() = %d, want 5, 0", got, exp)
	}
	step(period)
	if got, exp := w.Len(), w.Expired(); got != 0 || exp != 5 {
		t.Errorf("two periods on: Len() = %d, Expired() = %d, want 0, 5", got, exp)
	}
	w.Add(7)
	step(5 * period)
	if got, exp := w.Len(), w.Expired(); got != 0 || exp != 12 {
		t.Errorf("long after: Len() = %d, Expired() = %d, want 0, 12", got, exp)
	}
}
