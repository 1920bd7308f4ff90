package edge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// clientHello is what the edge reads from a TLS ClientHello before deciding
// between passthrough and termination.
type clientHello struct {
	ServerName string   // SNI host_name, as sent (not normalised); "" if absent
	ALPN       []string // offered application protocols
}

// TLS wire constants (RFC 8446).
const (
	recordTypeHandshake  = 22      // TLSPlaintext.type handshake
	handshakeClientHello = 1       // Handshake.msg_type client_hello
	extServerName        = 0       // server_name extension (RFC 6066)
	extALPN              = 16      // application_layer_protocol_negotiation (RFC 7301)
	sniHostName          = 0       // ServerName.name_type host_name
	maxRecordLen         = 16384   // TLSPlaintext.length limit
	maxClientHelloLen    = 1 << 16 // we refuse larger ClientHellos
	recordHeaderLen      = 5
	handshakeHeaderLen   = 4
)

var errNotTLS = errors.New("edge: not a TLS ClientHello")

// readClientHello reads TLS records from r until it holds one complete
// ClientHello handshake message, and parses it. It returns every byte it
// read, to be replayed to whoever handles the connection next, also on
// error.
//
// Each record on the wire is:
//
//	type(1)=22 | legacy_version(2) | length(2) | fragment(length)
//
// and the handshake message, possibly split over several records, is:
//
//	msg_type(1)=1 | length(3) | ClientHello(length)
func readClientHello(r io.Reader) (clientHello, []byte, error) {
	var raw, msg []byte
	var hdr [recordHeaderLen]byte
	for {
		if n, err := io.ReadFull(r, hdr[:]); err != nil {
			return clientHello{}, append(raw, hdr[:n]...), fmt.Errorf("edge: read TLS record header: %w", err)
		}
		raw = append(raw, hdr[:]...)
		if hdr[0] != recordTypeHandshake || hdr[1] != 3 {
			return clientHello{}, raw, errNotTLS
		}
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		if n == 0 || n > maxRecordLen {
			return clientHello{}, raw, fmt.Errorf("edge: TLS record length %d: %w", n, errNotTLS)
		}
		start := len(raw)
		raw = append(raw, make([]byte, n)...)
		if got, err := io.ReadFull(r, raw[start:]); err != nil {
			return clientHello{}, raw[:start+got], fmt.Errorf("edge: read TLS record: %w", err)
		}
		msg = append(msg, raw[start:]...)
		if len(msg) < handshakeHeaderLen {
			continue
		}
		if msg[0] != handshakeClientHello {
			return clientHello{}, raw, errNotTLS
		}
		mlen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if mlen > maxClientHelloLen {
			return clientHello{}, raw, fmt.Errorf("edge: ClientHello of %d bytes is too large", mlen)
		}
		if len(msg) >= handshakeHeaderLen+mlen {
			ch, err := parseClientHello(msg[handshakeHeaderLen : handshakeHeaderLen+mlen])
			return ch, raw, err
		}
	}
}

// helloReader reads big-endian fields from a ClientHello body.
type helloReader struct {
	b   []byte
	bad bool
}

func (h *helloReader) bytes(n int) []byte {
	if h.bad || n < 0 || n > len(h.b) {
		h.bad = true
		return nil
	}
	v := h.b[:n]
	h.b = h.b[n:]
	return v
}

func (h *helloReader) u8() int {
	v := h.bytes(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (h *helloReader) u16() int {
	v := h.bytes(2)
	if v == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(v))
}

// parseClientHello parses a ClientHello body (after the handshake header):
//
//	legacy_version(2) | random(32) | session_id<0..32> (1-byte length)
//	| cipher_suites<2..2^16-2> (2-byte length) | compression_methods<1..2^8-1>
//	| extensions<0..2^16-1> (2-byte length, optional in TLS 1.0-1.2)
//
// where each extension is type(2) | length(2) | data. server_name data is a
// 2-byte-length list of name_type(1) | name<1..2^16-1>; ALPN data is a
// 2-byte-length list of 1-byte-length protocol names.
func parseClientHello(body []byte) (clientHello, error) {
	var ch clientHello
	h := &helloReader{b: body}
	h.bytes(2 + 32)
	if sid := h.u8(); sid > 32 {
		return ch, fmt.Errorf("edge: ClientHello session id of %d bytes: %w", sid, errNotTLS)
	} else {
		h.bytes(sid)
	}
	if cs := h.u16(); cs%2 != 0 || cs == 0 {
		return ch, fmt.Errorf("edge: ClientHello cipher suites: %w", errNotTLS)
	} else {
		h.bytes(cs)
	}
	h.bytes(h.u8()) // compression methods
	if h.bad {
		return ch, fmt.Errorf("edge: short ClientHello: %w", errNotTLS)
	}
	if len(h.b) == 0 {
		return ch, nil // no extensions
	}
	ext := &helloReader{b: h.bytes(h.u16())}
	if h.bad || len(h.b) != 0 {
		return ch, fmt.Errorf("edge: ClientHello extensions length: %w", errNotTLS)
	}
	seen := map[int]bool{}
	for len(ext.b) > 0 && !ext.bad {
		typ := ext.u16()
		data := &helloReader{b: ext.bytes(ext.u16())}
		if ext.bad {
			break
		}
		if seen[typ] {
			return ch, fmt.Errorf("edge: duplicate ClientHello extension %d: %w", typ, errNotTLS)
		}
		seen[typ] = true
		switch typ {
		case extServerName:
			list := &helloReader{b: data.bytes(data.u16())}
			for len(list.b) > 0 && !list.bad {
				nt := list.u8()
				name := list.bytes(list.u16())
				if list.bad || nt != sniHostName {
					continue
				}
				if len(name) == 0 || ch.ServerName != "" {
					return ch, fmt.Errorf("edge: bad server_name extension: %w", errNotTLS)
				}
				ch.ServerName = string(name)
			}
			if list.bad || data.bad || len(data.b) != 0 {
				return ch, fmt.Errorf("edge: malformed server_name extension: %w", errNotTLS)
			}
		case extALPN:
			list := &helloReader{b: data.bytes(data.u16())}
			for len(list.b) > 0 && !list.bad {
				p := list.bytes(list.u8())
				if len(p) == 0 {
					list.bad = true
					break
				}
				ch.ALPN = append(ch.ALPN, string(p))
			}
			if list.bad || data.bad || len(data.b) != 0 {
				return ch, fmt.Errorf("edge: malformed ALPN extension: %w", errNotTLS)
			}
		}
	}
	if ext.bad {
		return ch, fmt.Errorf("edge: malformed ClientHello extensions: %w", errNotTLS)
	}
	return ch, nil
}
