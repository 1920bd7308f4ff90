package udpoffload

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message as the kernel lays it out, padded to
// its aligned space.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func int32Bytes(v int32) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(v))
}

func TestGROSegmentSize(t *testing.T) {
	gro := func(data []byte) []byte { return cmsg(unix.SOL_UDP, unix.UDP_GRO, data) }
	badLen := func(l int) []byte {
		b := gro(int32Bytes(1312))
		(*unix.Cmsghdr)(unsafe.Pointer(&b[0])).SetLen(l)
		return b
	}
	for _, tc := range []struct {
		name string
		oob  []byte
		want int
	}{
		{"none", nil, 0},
		{"int, as the kernel writes it", gro(int32Bytes(1312)), 1312},
		{"two bytes", gro(binary.NativeEndian.AppendUint16(nil, 1312)), 1312},
		{"one byte", gro([]byte{7}), 0},
		{"no data", gro(nil), 0},
		{"negative", gro(int32Bytes(-1)), 0},
		{"after another message", append(cmsg(unix.SOL_IP, unix.IP_TOS, []byte{0x10}), gro(int32Bytes(1200))...), 1200},
		{"other message only", cmsg(unix.SOL_IP, unix.IP_TOS, []byte{0x10}), 0},
		{"UDP_SEGMENT is not UDP_GRO", cmsg(unix.SOL_UDP, unix.UDP_SEGMENT, int32Bytes(1312)), 0},
		{"GRO type at another level", cmsg(unix.SOL_IP, unix.UDP_GRO, int32Bytes(1312)), 0},
		{"header cut short", gro(int32Bytes(1312))[:unix.SizeofCmsghdr-1], 0},
		{"data cut off", gro(int32Bytes(1312))[:unix.SizeofCmsghdr+2], 0},
		{"length below header", badLen(3), 0},
		{"length zero", badLen(0), 0},
		{"length past buffer", badLen(1 << 20), 0},
		{"length huge", badLen(-1), 0}, // all ones
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := GROSegmentSize(tc.oob); got != tc.want {
				t.Errorf("GROSegmentSize = %d, want %d", got, tc.want)
			}
		})
	}
}

// FuzzGROSegmentSize checks that control data from the kernel, however
// mangled, never panics the parser or yields a negative size.
func FuzzGROSegmentSize(f *testing.F) {
	f.Add([]byte{})                                                   // no control data
	f.Add(cmsg(unix.SOL_UDP, unix.UDP_GRO, int32Bytes(1312)))         // well formed
	f.Add(cmsg(unix.SOL_UDP, unix.UDP_GRO, []byte{1}))                // short data
	f.Add(append(cmsg(unix.SOL_IP, unix.IP_TOS, []byte{1}), 1, 2, 3)) // trailing junk
	f.Add(cmsg(unix.SOL_UDP, unix.UDP_GRO, int32Bytes(1312))[:10])    // cut header
	f.Fuzz(func(t *testing.T, oob []byte) {
		if got := GROSegmentSize(oob); got < 0 {
			t.Fatalf("negative segment size %d", got)
		}
	})
}

// TestPutGSOSize: the control message PutGSOSize writes is one
// UDP_SEGMENT message carrying the size, as the kernel reads it.
func TestPutGSOSize(t *testing.T) {
	oob := PutGSOSize(make([]byte, GSOControlSize), 1312)
	hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Level != unix.SOL_UDP || hdr.Type != unix.UDP_SEGMENT || len(data) < 2 || len(rest) != 0 {
		t.Fatalf("control message: level %d type %d data %x rest %d, want one UDP_SEGMENT", hdr.Level, hdr.Type, data, len(rest))
	}
	if got := binary.NativeEndian.Uint16(data); got != 1312 {
		t.Errorf("segment size = %d, want 1312", got)
	}
}
