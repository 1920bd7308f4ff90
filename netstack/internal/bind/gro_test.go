package bind

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestGROSplitter(t *testing.T) {
	srcA := netip.MustParseAddrPort("192.0.2.1:41641")
	srcB := netip.MustParseAddrPort("[2001:db8::1]:41641")
	type out struct {
		N   int
		Src netip.AddrPort
	}
	for _, tc := range []struct {
		name    string
		bufSize int // of each staging buffer; 0 means 4096
		msgs    []groMsg
		want    []out
	}{
		{
			name: "one datagram",
			msgs: []groMsg{{n: 300, seg: 0, src: srcA}},
			want: []out{{300, srcA}},
		},
		{
			name: "equal segments",
			msgs: []groMsg{{n: 3 * 100, seg: 100, src: srcA}},
			want: []out{{100, srcA}, {100, srcA}, {100, srcA}},
		},
		{
			name: "last segment short",
			msgs: []groMsg{{n: 2*1312 + 92, seg: 1312, src: srcA}},
			want: []out{{1312, srcA}, {1312, srcA}, {92, srcA}},
		},
		{
			name: "last segment one byte",
			msgs: []groMsg{{n: 201, seg: 100, src: srcA}},
			want: []out{{100, srcA}, {100, srcA}, {1, srcA}},
		},
		{
			name: "segment size equal to message",
			msgs: []groMsg{{n: 100, seg: 100, src: srcA}},
			want: []out{{100, srcA}},
		},
		{
			name: "segment size above message",
			msgs: []groMsg{{n: 100, seg: 1400, src: srcA}},
			want: []out{{100, srcA}},
		},
		{
			name: "negative segment size",
			msgs: []groMsg{{n: 100, seg: -5, src: srcA}},
			want: []out{{100, srcA}},
		},
		{
			name: "segment size one",
			msgs: []groMsg{{n: 3, seg: 1, src: srcA}},
			want: []out{{1, srcA}, {1, srcA}, {1, srcA}},
		},
		{
			name: "empty message",
			msgs: []groMsg{{n: 0, seg: 0, src: srcA}, {n: 10, seg: 0, src: srcB}},
			want: []out{{0, srcA}, {10, srcB}},
		},
		{
			name: "several messages keep order and source",
			msgs: []groMsg{
				{n: 250, seg: 100, src: srcA},
				{n: 64, seg: 0, src: srcB},
				{n: 80, seg: 40, src: srcB},
			},
			want: []out{{100, srcA}, {100, srcA}, {50, srcA}, {64, srcB}, {40, srcB}, {40, srcB}},
		},
		{
			name:    "length beyond buffer is cut to the buffer",
			bufSize: 150,
			msgs:    []groMsg{{n: 400, seg: 100, src: srcA}},
			want:    []out{{100, srcA}, {50, srcA}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.bufSize
			if size == 0 {
				size = 4096
			}
			var s groSplitter
			s.msgs = make([]groMsg, 0, len(tc.msgs))
			for i := range tc.msgs {
				buf := make([]byte, size)
				for j := range buf {
					buf[j] = byte(i*31 + j)
				}
				s.bufs = append(s.bufs, buf)
			}
			s.reset(len(tc.msgs))
			copy(s.msgs, tc.msgs)
			var got []out
			joined := make([][]byte, len(tc.msgs)) // per message, its datagrams put back together
			for s.pending() {
				if len(got) > 1000 {
					t.Fatal("splitter does not finish")
				}
				msg := s.cur
				pkt, src := s.next()
				got = append(got, out{len(pkt), src})
				joined[msg] = append(joined[msg], pkt...)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("datagrams (-want +got):\n%s", diff)
			}
			// The datagrams are the message's bytes, in order, none lost.
			for i, m := range tc.msgs {
				n := min(m.n, size)
				if !bytes.Equal(joined[i], s.bufs[i][:n]) {
					t.Errorf("message %d: datagrams do not rebuild its %d bytes", i, n)
				}
			}
		})
	}
}

func TestGROSplitterDrop(t *testing.T) {
	s := groSplitter{bufs: [][]byte{make([]byte, 1000)}, msgs: make([]groMsg, 1)}
	s.reset(1)
	s.msgs[0] = groMsg{n: 1000, seg: 100}
	s.next()
	s.drop()
	if s.pending() {
		t.Fatal("datagrams pending after drop")
	}
	s.reset(1)
	s.msgs[0] = groMsg{n: 1000, seg: 100}
	if pkt, _ := s.next(); len(pkt) != 100 {
		t.Fatalf("after reset: first datagram %d bytes, want 100", len(pkt))
	}
}
