package bind

import (
	"encoding/binary"
	"testing"
)

func msg(typ uint32, size int) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b, typ)
	return b
}

// TestTrafficSending checks the handshake and path-change counting of a
// sequence of sends.
func TestTrafficSending(t *testing.T) {
	type send struct {
		first         []byte
		direct, relay bool
	}
	data := msg(msgTransport, 64)
	for _, tc := range []struct {
		name                         string
		sends                        []send
		initiated, answered, changes uint64
	}{
		{"relay then direct", []send{{data, false, true}, {data, false, true}, {data, true, false}}, 0, 0, 1},
		{"dual counts as direct", []send{{data, true, true}, {data, true, false}}, 0, 0, 0},
		{"direct, relay, direct", []send{{data, true, false}, {data, false, true}, {data, true, true}}, 0, 0, 2},
		{"no path is no change", []send{{data, true, false}, {data, false, false}, {data, true, false}}, 0, 0, 0},
		{"handshakes", []send{{msg(msgInitiation, initiationSize), false, false}, {msg(msgInitiation, initiationSize), false, true}, {msg(msgResponse, responseSize), false, true}}, 2, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr traffic
			for _, s := range tc.sends {
				tr.sending(s.first, s.direct, s.relay)
			}
			if got := tr.initiated.Load(); got != tc.initiated {
				t.Errorf("initiated = %d, want %d", got, tc.initiated)
			}
			if got := tr.answered.Load(); got != tc.answered {
				t.Errorf("answered = %d, want %d", got, tc.answered)
			}
			if got := tr.pathChanges.Load(); got != tc.changes {
				t.Errorf("path changes = %d, want %d", got, tc.changes)
			}
		})
	}
}

// TestTrafficCountsAllocFree checks that counting a datagram allocates
// nothing.
func TestTrafficCountsAllocFree(t *testing.T) {
	var tr traffic
	bufs := [][]byte{msg(msgTransport, 1400), msg(msgTransport, 1400)}
	if n := testing.AllocsPerRun(100, func() {
		tr.received(pathDirect, 1400)
		tr.sent(pathRelay, bufs)
		tr.sentOne(pathRelay, 1400)
		tr.sending(bufs[0], true, false)
	}); n != 0 {
		t.Errorf("allocs per datagram = %v, want 0", n)
	}
	if got := tr.txPackets[pathRelay].Load(); got != 3*101 {
		t.Errorf("relay tx packets = %d, want %d", got, 3*101)
	}
	if got := tr.rxBytes[pathDirect].Load(); got != 1400*101 {
		t.Errorf("direct rx bytes = %d, want %d", got, 1400*101)
	}
}
