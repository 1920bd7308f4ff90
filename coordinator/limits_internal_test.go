package coordinator

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestReplayCacheBounded fills a replay cache of 4 entries with 6
// requests: it keeps 4, and refuses the replays of the ones it dropped
// (and anything as old) instead of taking them for new.
func TestReplayCacheBounded(t *testing.T) {
	c := replayCache{max: 4}
	node := key.NewNode().Public()
	now := time.Unix(1_000_000, 0)
	h := func(i byte) [32]byte { return [32]byte{i} }
	ts := func(i int) time.Time { return now.Add(time.Duration(i-10) * time.Second) }
	for i := range 6 {
		if !c.add(node, h(byte(i)), ts(i), now) {
			t.Fatalf("request %d refused, want taken", i)
		}
	}
	if got := c.len(); got != 4 {
		t.Errorf("len = %d, want 4", got)
	}
	for i := range 6 {
		if c.add(node, h(byte(i)), ts(i), now) {
			t.Errorf("replay of request %d taken, want refused (dropped or not)", i)
		}
	}
	if c.add(node, h(100), ts(1), now) {
		t.Errorf("a new request as old as the dropped ones taken, want refused")
	}
	if !c.add(node, h(101), ts(7), now) {
		t.Errorf("a new request newer than the dropped ones refused, want taken")
	}
	// Past the clock-skew window, entries go by themselves.
	later := now.Add(MaxClockSkew + time.Minute)
	c.prune(later)
	if got := c.len(); got != 0 {
		t.Errorf("len after the window = %d, want 0", got)
	}
}

// TestReplayCacheFloorsPerSender: one node filling a full cache with
// requests stamped minutes ahead (as far as the clock-skew window lets
// it) raises its own floor alone: before, the shared floor passed the
// real time and every other node's fresh request was refused as a
// replay.
func TestReplayCacheFloorsPerSender(t *testing.T) {
	c := replayCache{max: 100}
	now := time.Unix(1_000_000, 0)
	mallory, alice := key.NewNode().Public(), key.NewNode().Public()
	ahead := now.Add(MaxClockSkew - time.Second)
	for i := range 1000 {
		c.add(mallory, [32]byte{0, byte(i), byte(i >> 8)}, ahead.Add(time.Duration(i)*time.Millisecond), now)
	}
	for i := range 100 {
		at := now.Add(time.Duration(i) * time.Second)
		if !c.add(alice, [32]byte{1, byte(i)}, at, at) {
			t.Fatalf("alice's fresh request %d refused after mallory filled the cache with requests stamped ahead", i)
		}
	}
	// Mallory's own dropped requests stay refused.
	if c.add(mallory, [32]byte{0, 0, 0}, ahead, now) {
		t.Errorf("a replay of mallory's dropped request taken")
	}
}

// TestReplayCacheExpiry: a request is remembered until its timestamp is
// MaxClockSkew old, whatever the time it arrived.
func TestReplayCacheExpiry(t *testing.T) {
	var c replayCache
	node := key.NewNode().Public()
	now := time.Unix(1_000_000, 0)
	ahead := now.Add(4 * time.Minute) // a node whose clock is ahead
	if !c.add(node, [32]byte{1}, ahead, now) {
		t.Fatal("request refused")
	}
	c.prune(now.Add(8 * time.Minute))
	if c.add(node, [32]byte{1}, ahead, now.Add(8*time.Minute)) {
		t.Errorf("replay 8 minutes later of a request stamped 4 minutes ahead taken, want refused")
	}
	c.prune(now.Add(9*time.Minute + time.Second))
	if got := c.len(); got != 0 {
		t.Errorf("len once the timestamp is MaxClockSkew old = %d, want 0", got)
	}
}

func TestSourceLimiter(t *testing.T) {
	l := newSourceLimiter(10, 20)
	now := time.Unix(1_000_000, 0)
	a, b := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	for i := range 20 {
		if ok, _ := allowSource(l, a, now); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := allowSource(l, a, now)
	if ok || wait <= 0 || wait > 100*time.Millisecond {
		t.Errorf("request past the burst: ok %v wait %v, want refused with a wait up to 100ms", ok, wait)
	}
	if ok, _ := allowSource(l, b, now); !ok {
		t.Errorf("another address refused, want its own bucket")
	}
	if ok, _ := allowSource(l, a, now.Add(100*time.Millisecond)); !ok {
		t.Errorf("request after a refill of one token refused")
	}
	// Addresses of one IPv6 /64 share a bucket.
	six := newSourceLimiter(1, 1)
	if ok, _ := allowSource(six, netip.MustParseAddr("2001:db8::1"), now); !ok {
		t.Fatal("first IPv6 request refused")
	}
	if ok, _ := allowSource(six, netip.MustParseAddr("2001:db8::2"), now); ok {
		t.Errorf("second address of the same /64 taken, want it to share the first's bucket")
	}
	// Full buckets are swept; a negative rate means no limit.
	l.sweep(now.Add(time.Hour))
	if len(l.buckets) != 0 {
		t.Errorf("%d buckets after an hour, want 0", len(l.buckets))
	}
	off := newSourceLimiter(-1, 0)
	for range 10000 {
		if ok, _ := off.allow(a, now); !ok {
			t.Fatal("refused with no limit")
		}
	}
}

func TestCleanText(t *testing.T) {
	tests := []struct {
		name, in string
		max      int
		want     string
	}{
		{"plain", "laptop", 64, "laptop"},
		{"escapes", "evil\x1b]0;pwned\x07\x1b[2Jhost", 64, "evil]0;pwned[2Jhost"},
		{"newlines and tabs", "a\r\nb\tc", 64, "abc"},
		{"bidi override", "abc\u202egpj.exe", 64, "abcgpj.exe"},
		{"invalid utf-8", "a\xffb", 64, "ab"},
		{"unicode kept", "Jürgen’s Mac", 64, "Jürgen’s Mac"},
		{"cut", strings.Repeat("x", 300), wire.MaxHostnameLen, strings.Repeat("x", 253)},
		{"cut at a rune", "ab" + strings.Repeat("é", 10), 5, "abé"},
		{"spaces trimmed", "  mac  ", 64, "mac"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := cleanText(tc.in, tc.max); got != tc.want {
				t.Errorf("cleanText(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
			}
		})
	}
}

func TestACELabel(t *testing.T) {
	for l, want := range map[string]bool{"xn--80ak6aa92e": true, "ab--cd": true, "app": false, "app--one": false, "a--": false, "x-n--a": false} {
		if got := isACELabel(l); got != want {
			t.Errorf("isACELabel(%q) = %v, want %v", l, got, want)
		}
	}
}

// TestLogLimiter: of 1,000 lines in one interval, burst are logged; the
// count of the others comes with the next line or the janitor's flush.
func TestLogLimiter(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := logLimiter{msg: "registration refused", burst: 2}
	now := time.Unix(1_000_000, 0)
	for range 1000 {
		l.log(log, now, "code", "auth_key_invalid")
	}
	if got := strings.Count(buf.String(), "\n"); got != 2 {
		t.Errorf("%d lines for 1,000 in one interval, want 2:\n%s", got, buf.String())
	}
	l.flush(log, now.Add(time.Second))
	if got := strings.Count(buf.String(), "\n"); got != 2 {
		t.Errorf("flush within the interval logged: %d lines, want 2", got)
	}
	l.flush(log, now.Add(logLimitEvery))
	if !strings.Contains(buf.String(), "count=998") {
		t.Errorf("flush after the interval did not log the 998 left out:\n%s", buf.String())
	}
	l.log(log, now.Add(2*logLimitEvery), "code", "auth_key_invalid")
	if got := strings.Count(buf.String(), "\n"); got != 4 || strings.Contains(buf.String(), "not_logged_before") {
		t.Errorf("after the flush: %d lines, want 4 with no count carried over:\n%s", got, buf.String())
	}
}
