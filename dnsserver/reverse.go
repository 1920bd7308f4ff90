package dnsserver

import (
	"net/netip"
	"strings"
)

const (
	v4RevSuffix = ".in-addr.arpa."
	v6RevSuffix = ".ip6.arpa."
)

// parseReverse returns the address a full reverse name stands for:
// "4.3.2.1.in-addr.arpa." (1.2.3.4), or 32 nibbles then "ip6.arpa.".
// name must be lower-case with a trailing dot. Partial names (a zone cut such as
// "64.100.in-addr.arpa.") are not addresses and return false.
func parseReverse(name string) (netip.Addr, bool) {
	switch {
	case strings.HasSuffix(name, v4RevSuffix):
		labels := strings.Split(strings.TrimSuffix(name, v4RevSuffix), ".")
		if len(labels) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, l := range labels {
			if len(l) == 0 || len(l) > 3 || (len(l) > 1 && l[0] == '0') {
				return netip.Addr{}, false
			}
			n := 0
			for _, c := range []byte(l) {
				if c < '0' || c > '9' {
					return netip.Addr{}, false
				}
				n = n*10 + int(c-'0')
			}
			if n > 255 {
				return netip.Addr{}, false
			}
			b[3-i] = byte(n)
		}
		return netip.AddrFrom4(b), true
	case strings.HasSuffix(name, v6RevSuffix):
		rest := strings.TrimSuffix(name, v6RevSuffix)
		// 32 nibbles, each followed by a dot except the last: 63 bytes.
		if len(rest) != 63 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i := range 32 {
			c := rest[2*i]
			if i < 31 && rest[2*i+1] != '.' {
				return netip.Addr{}, false
			}
			var v byte
			switch {
			case c >= '0' && c <= '9':
				v = c - '0'
			case c >= 'a' && c <= 'f':
				v = c - 'a' + 10
			default:
				return netip.Addr{}, false
			}
			// Nibble i counts from the least significant end.
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}
