package expose

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// The edge sends routes with a PROXY protocol option (haproxy's
// proxy-protocol.txt) a header before the client's bytes; see
// edge/proxyproto.go for the byte layout it writes.

const (
	// proxyV2Sig opens a PROXY protocol v2 header.
	proxyV2Sig = "\r\n\r\n\x00\r\nQUIT\n"
	// maxProxyV1 is the longest v1 line, CRLF included.
	maxProxyV1 = 107
	// maxProxyV2 caps a v2 header's address and TLV part; the edge sends
	// 12 or 36 bytes.
	maxProxyV2 = 512
)

var errProxyHeader = errors.New("malformed PROXY protocol header")

// readProxyHeader reads a PROXY protocol header of version 1 or 2 from
// br, if the stream starts with one (a TLS ClientHello does not), and
// returns its bytes as they arrived and the client's address and port
// (not valid for "PROXY UNKNOWN", a v2 LOCAL header or an address family
// other than TCP over IPv4 or IPv6). With no header it returns nil and
// reads nothing.
func readProxyHeader(br *bufio.Reader) (hdr []byte, src netip.AddrPort, err error) {
	b, err := br.Peek(1)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("read PROXY header: %w", err)
	}
	switch b[0] {
	case 'P':
		return readProxyV1(br)
	case '\r':
		return readProxyV2(br)
	default:
		return nil, netip.AddrPort{}, nil
	}
}

// readProxyV1 reads "PROXY TCP4|TCP6 src dst sport dport\r\n" or
// "PROXY UNKNOWN...\r\n".
func readProxyV1(br *bufio.Reader) ([]byte, netip.AddrPort, error) {
	var line []byte
	for {
		b, err := br.Peek(min(len(line)+1, maxProxyV1))
		if err != nil {
			return nil, netip.AddrPort{}, fmt.Errorf("read PROXY v1 header: %w", err)
		}
		if i := bytes.Index(b, []byte("\r\n")); i >= 0 {
			line = b[:i+2]
			break
		}
		if len(b) == maxProxyV1 {
			return nil, netip.AddrPort{}, fmt.Errorf("%w: v1 line longer than %d bytes", errProxyHeader, maxProxyV1)
		}
		line = b
	}
	hdr := bytes.Clone(line)
	br.Discard(len(hdr))
	f := bytes.Split(hdr[:len(hdr)-2], []byte(" "))
	if len(f) < 2 || string(f[0]) != "PROXY" {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: %q", errProxyHeader, hdr)
	}
	if string(f[1]) == "UNKNOWN" {
		return hdr, netip.AddrPort{}, nil
	}
	if len(f) != 6 || (string(f[1]) != "TCP4" && string(f[1]) != "TCP6") {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: %q", errProxyHeader, hdr)
	}
	ip, err := netip.ParseAddr(string(f[2]))
	port, perr := strconv.ParseUint(string(f[4]), 10, 16)
	if err != nil || perr != nil || ip.Is4() != (string(f[1]) == "TCP4") {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: %q", errProxyHeader, hdr)
	}
	return hdr, netip.AddrPortFrom(ip, uint16(port)), nil
}

// readProxyV2 reads sig(12) | ver_cmd(1) | fam(1) | len(2) | len bytes.
func readProxyV2(br *bufio.Reader) ([]byte, netip.AddrPort, error) {
	b, err := br.Peek(16)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("read PROXY v2 header: %w", err)
	}
	if string(b[:12]) != proxyV2Sig || b[12]>>4 != 2 {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: bad v2 signature or version", errProxyHeader)
	}
	cmd, fam := b[12]&0x0f, b[13]
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if n > maxProxyV2 {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: v2 length %d", errProxyHeader, n)
	}
	b, err = br.Peek(16 + n)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("read PROXY v2 header: %w", err)
	}
	hdr := bytes.Clone(b)
	br.Discard(len(hdr))
	a := hdr[16:]
	switch {
	case cmd == 0: // LOCAL
		return hdr, netip.AddrPort{}, nil
	case cmd != 1:
		return nil, netip.AddrPort{}, fmt.Errorf("%w: v2 command %d", errProxyHeader, cmd)
	case fam == 0x11 && len(a) >= 12:
		return hdr, netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), binary.BigEndian.Uint16(a[8:10])), nil
	case fam == 0x21 && len(a) >= 36:
		return hdr, netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[:16])).Unmap(), binary.BigEndian.Uint16(a[32:34])), nil
	default:
		return hdr, netip.AddrPort{}, nil
	}
}
