package derp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/pion/stun/v3"
)

// STUN message layout (RFC 5389), for reference:
//
//	2B type | 2B attributes length | 4B magic cookie 0x2112A442 | 12B transaction ID | attributes
//
// Beam sends Binding requests carrying only FINGERPRINT and expects Binding
// success responses carrying XOR-MAPPED-ADDRESS (or, from old servers,
// MAPPED-ADDRESS).

// ErrNotSTUN is returned by ParseSTUNResponse for bytes that are not a STUN
// Binding success response.
var ErrNotSTUN = errors.New("derp: not a STUN binding response")

// IsSTUN reports whether pkt looks like a STUN message (long enough and
// carrying the magic cookie). It is cheap enough to run on every received
// UDP packet for demultiplexing; it does not validate the message.
func IsSTUN(pkt []byte) bool {
	return stun.IsMessage(pkt) && pkt[0]&0xc0 == 0
}

// STUNBindingRequest returns a new Binding request with a random
// transaction ID, and that ID.
func STUNBindingRequest() (txID [12]byte, pkt []byte) {
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	return m.TransactionID, m.Raw
}

// STUNBindingResponse returns a Binding success response for txID that
// tells the requester it was seen at addr.
func STUNBindingResponse(txID [12]byte, addr netip.AddrPort) []byte {
	ip := addr.Addr().Unmap()
	m, err := stun.Build(
		stun.NewTransactionIDSetter(txID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IP(ip.AsSlice()), Port: int(addr.Port())},
		stun.Fingerprint,
	)
	if err != nil {
		// Only an invalid (zero) address can fail; answer without it.
		m = stun.MustBuild(stun.NewTransactionIDSetter(txID), stun.BindingSuccess, stun.Fingerprint)
	}
	return m.Raw
}

// ParseSTUNResponse decodes a Binding success response and returns its
// transaction ID and the mapped address it reports. IPv4 addresses are
// returned unmapped.
func ParseSTUNResponse(pkt []byte) (txID [12]byte, mapped netip.AddrPort, err error) {
	if !IsSTUN(pkt) {
		return txID, mapped, ErrNotSTUN
	}
	m := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if err := m.Decode(); err != nil {
		return txID, mapped, fmt.Errorf("%w: %w", ErrNotSTUN, err)
	}
	txID = m.TransactionID
	if m.Type != stun.BindingSuccess {
		return txID, mapped, fmt.Errorf("%w: message type %v", ErrNotSTUN, m.Type)
	}
	if m.Contains(stun.AttrFingerprint) {
		if err := stun.Fingerprint.Check(m); err != nil {
			return txID, mapped, fmt.Errorf("%w: %w", ErrNotSTUN, err)
		}
	}
	var ip net.IP
	var port int
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err == nil {
		ip, port = xa.IP, xa.Port
	} else {
		var ma stun.MappedAddress
		if err2 := ma.GetFrom(m); err2 != nil {
			return txID, mapped, fmt.Errorf("%w: no mapped address: %w", ErrNotSTUN, err)
		}
		ip, port = ma.IP, ma.Port
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return txID, mapped, fmt.Errorf("%w: bad mapped address length %d", ErrNotSTUN, len(ip))
	}
	return txID, netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}
