// Package portmap asks the local NAT gateway for a UDP port mapping, by
// PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD (SSDP, then SOAP), and
// tells which of them the gateway offers.
//
// It sends only to the gateway it is given: UDP ports 5351 (PCP and
// NAT-PMP) and 1900 (SSDP, unicast), and HTTP to URLs on the gateway's
// own address (a description naming another host is refused). Every
// exchange is bounded by a timeout.
// Finding the gateway, and deciding whether to ask it at all, is the
// caller's business (see [DefaultGateway]).
package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Ports the gateway listens on.
const (
	pmpPort  = 5351 // PCP and NAT-PMP
	ssdpPort = 1900
)

// Defaults.
const (
	// DefaultLifetime is the lifetime asked for a mapping.
	DefaultLifetime = 2 * time.Hour
	// DefaultTimeout bounds one exchange with the gateway (with one
	// retransmission halfway).
	DefaultTimeout = 500 * time.Millisecond
)

// Protocol names as reports show them.
const (
	ProtoPCP    = "PCP"
	ProtoNATPMP = "NAT-PMP"
	ProtoUPnP   = "UPnP"
)

// Mapping is a UDP port mapping the gateway granted.
type Mapping struct {
	// Protocol is ProtoPCP or ProtoNATPMP.
	Protocol string
	// External is the public address and port the gateway forwards to
	// Internal.
	External netip.AddrPort
	// Internal is the local port the mapping forwards to.
	Internal uint16
	// Lifetime is what the gateway granted, from Granted.
	Lifetime time.Duration
	Granted  time.Time
	// nonce is the PCP mapping nonce (renewals and deletion reuse it).
	nonce [12]byte
	// upnp is the UPnP service that holds the mapping.
	upnp upnpService
}

// RenewAt returns when the mapping should be renewed: halfway through
// its lifetime.
func (m Mapping) RenewAt() time.Time { return m.Granted.Add(m.Lifetime / 2) }

// Client talks to one gateway from one local address.
type Client struct {
	// Gateway is the NAT gateway (the default route's next hop).
	Gateway netip.Addr
	// Timeout bounds each exchange; zero means DefaultTimeout.
	Timeout time.Duration
	// Lifetime is asked for new mappings; zero means DefaultLifetime.
	Lifetime time.Duration

	// pmpPort and ssdpPort replace the standard ports in tests.
	pmpPort, ssdpPort int
}

func (c *Client) port(std int) int {
	switch {
	case std == pmpPort && c.pmpPort != 0:
		return c.pmpPort
	case std == ssdpPort && c.ssdpPort != 0:
		return c.ssdpPort
	}
	return std
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

func (c *Client) lifetime() time.Duration {
	if c.Lifetime > 0 {
		return c.Lifetime
	}
	return DefaultLifetime
}

// ErrNoGateway is returned when Client.Gateway is not a usable IPv4
// address.
var ErrNoGateway = errors.New("portmap: no IPv4 gateway")

// exchange sends req to the gateway's port from a fresh socket, resends
// it once halfway through the timeout, and returns the first answer that
// accept takes.
func (c *Client) exchange(ctx context.Context, port int, req []byte, accept func([]byte) bool) ([]byte, netip.Addr, error) {
	if !c.Gateway.Is4() || c.Gateway.IsUnspecified() {
		return nil, netip.Addr{}, ErrNoGateway
	}
	var d net.Dialer
	port = c.port(port)
	conn, err := d.DialContext(ctx, "udp4", netip.AddrPortFrom(c.Gateway, uint16(port)).String())
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("dial gateway: %w", err)
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	deadline := time.Now().Add(c.timeout())
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 1100)
	resend := time.Now().Add(time.Until(deadline) / 2)
	sent := false
	for {
		if !sent || time.Now().After(resend) {
			if _, err := conn.Write(req); err != nil {
				return nil, local, fmt.Errorf("send to gateway: %w", err)
			}
			if sent {
				resend = deadline
			}
			sent = true
		}
		wait := resend
		if !wait.After(time.Now()) {
			wait = deadline
		}
		conn.SetReadDeadline(wait)
		n, err := conn.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, local, ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if time.Now().Before(deadline) {
					continue
				}
				return nil, local, fmt.Errorf("no answer from %v:%d in %v", c.Gateway, port, c.timeout())
			}
			// ICMP port unreachable: nothing listens there.
			return nil, local, fmt.Errorf("gateway %v:%d: %w", c.Gateway, port, err)
		}
		if accept(buf[:n]) {
			return buf[:n], local, nil
		}
	}
}

// NAT-PMP (RFC 6886).

// pmpExternal asks the gateway's public address by NAT-PMP.
func (c *Client) pmpExternal(ctx context.Context) (netip.Addr, error) {
	resp, _, err := c.exchange(ctx, pmpPort, []byte{0, 0}, func(b []byte) bool {
		return len(b) >= 12 && b[0] == 0 && b[1] == 128
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("nat-pmp: external address: %w", err)
	}
	if rc := binary.BigEndian.Uint16(resp[2:]); rc != 0 {
		return netip.Addr{}, fmt.Errorf("nat-pmp: external address: result code %d", rc)
	}
	return netip.AddrFrom4([4]byte(resp[8:12])), nil
}

// pmpMap asks for (or, with lifetime 0, deletes) a UDP mapping of
// internal by NAT-PMP.
func (c *Client) pmpMap(ctx context.Context, internal, suggested uint16, lifetime time.Duration) (port uint16, granted time.Duration, err error) {
	req := make([]byte, 12)
	req[1] = 1 // map UDP
	binary.BigEndian.PutUint16(req[4:], internal)
	binary.BigEndian.PutUint16(req[6:], suggested)
	binary.BigEndian.PutUint32(req[8:], uint32(lifetime/time.Second))
	resp, _, err := c.exchange(ctx, pmpPort, req, func(b []byte) bool {
		return len(b) >= 16 && b[0] == 0 && b[1] == 129 && binary.BigEndian.Uint16(b[8:]) == internal
	})
	if err != nil {
		return 0, 0, fmt.Errorf("nat-pmp: map: %w", err)
	}
	if rc := binary.BigEndian.Uint16(resp[2:]); rc != 0 {
		return 0, 0, fmt.Errorf("nat-pmp: map: result code %d", rc)
	}
	return binary.BigEndian.Uint16(resp[10:]), time.Duration(binary.BigEndian.Uint32(resp[12:])) * time.Second, nil
}

// PCP (RFC 6887).

const (
	pcpVersion     = 2
	pcpOpAnnounce  = 0
	pcpOpMap       = 1
	pcpResponse    = 0x80
	pcpHeaderLen   = 24
	pcpMapLen      = 36
	pcpUDP         = 17
	pmpUnsuppVer   = 1 // NAT-PMP result code for a version it does not speak
	pcpResultOK    = 0
	pcpMinRespLen  = pcpHeaderLen
	pcpMapRespLen  = pcpHeaderLen + pcpMapLen
	pcpNonceOffset = pcpHeaderLen
)

// pcpRequest builds a PCP request header for op from client.
func pcpRequest(op byte, lifetime time.Duration, client netip.Addr, body []byte) []byte {
	b := make([]byte, pcpHeaderLen, pcpHeaderLen+len(body))
	b[0] = pcpVersion
	b[1] = op
	binary.BigEndian.PutUint32(b[4:], uint32(lifetime/time.Second))
	x := client.As16() // IPv4 as ::ffff:a.b.c.d
	copy(b[8:24], x[:])
	return append(b, body...)
}

// pcpMapBody is the MAP opcode's body.
func pcpMapBody(nonce [12]byte, internal, suggested uint16, suggestedIP netip.Addr) []byte {
	b := make([]byte, pcpMapLen)
	copy(b[0:12], nonce[:])
	b[12] = pcpUDP
	binary.BigEndian.PutUint16(b[16:], internal)
	binary.BigEndian.PutUint16(b[18:], suggested)
	var m [16]byte
	m[10], m[11] = 0xff, 0xff
	if suggestedIP.Is4() {
		v := suggestedIP.As4()
		copy(m[12:], v[:])
	}
	copy(b[20:36], m[:])
	return b
}

// pcpMap asks for (or, with lifetime 0, deletes) a UDP mapping of
// internal by PCP.
func (c *Client) pcpMap(ctx context.Context, nonce [12]byte, internal, suggested uint16, suggestedIP netip.Addr, lifetime time.Duration) (netip.AddrPort, time.Duration, error) {
	// The client address must be the socket's own; find it first.
	local, err := c.localAddr(ctx)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("pcp: map: %w", err)
	}
	req := pcpRequest(pcpOpMap, lifetime, local, pcpMapBody(nonce, internal, suggested, suggestedIP))
	resp, _, err := c.exchange(ctx, pmpPort, req, func(b []byte) bool {
		if len(b) >= 4 && b[0] == 0 && binary.BigEndian.Uint16(b[2:]) == pmpUnsuppVer {
			return true // a NAT-PMP-only gateway
		}
		return len(b) >= pcpMinRespLen && b[0] == pcpVersion && b[1] == pcpResponse|pcpOpMap &&
			(b[3] != pcpResultOK || len(b) >= pcpMapRespLen && [12]byte(b[24:36]) == nonce)
	})
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("pcp: map: %w", err)
	}
	if resp[0] != pcpVersion {
		return netip.AddrPort{}, 0, errors.New("pcp: map: the gateway speaks NAT-PMP only")
	}
	if rc := resp[3]; rc != pcpResultOK {
		return netip.AddrPort{}, 0, fmt.Errorf("pcp: map: result code %d", rc)
	}
	ip := netip.AddrFrom16([16]byte(resp[44:60])).Unmap()
	port := binary.BigEndian.Uint16(resp[42:])
	return netip.AddrPortFrom(ip, port), time.Duration(binary.BigEndian.Uint32(resp[4:])) * time.Second, nil
}

// localAddr returns the local address the host uses towards the gateway
// (connecting a UDP socket sends nothing).
func (c *Client) localAddr(ctx context.Context) (netip.Addr, error) {
	if !c.Gateway.Is4() || c.Gateway.IsUnspecified() {
		return netip.Addr{}, ErrNoGateway
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp4", netip.AddrPortFrom(c.Gateway, pmpPort).String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("route to gateway: %w", err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// Map asks the gateway to forward a public UDP port to the local port
// internal: by PCP, else NAT-PMP, else UPnP IGD. prev, if valid, is the
// mapping to renew (its protocol, port and nonce are asked again).
func (c *Client) Map(ctx context.Context, internal uint16, prev Mapping) (Mapping, error) {
	var errs []error
	if prev.Protocol == "" || prev.Protocol == ProtoPCP {
		nonce := prev.nonce
		suggested, suggestedIP := internal, netip.Addr{}
		if prev.Protocol == ProtoPCP {
			suggested, suggestedIP = prev.External.Port(), prev.External.Addr()
		} else {
			rand.Read(nonce[:])
		}
		ext, life, err := c.pcpMap(ctx, nonce, internal, suggested, suggestedIP, c.lifetime())
		if err == nil {
			return Mapping{Protocol: ProtoPCP, External: ext, Internal: internal, Lifetime: life, Granted: time.Now(), nonce: nonce}, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			return Mapping{}, errors.Join(errs...)
		}
	}
	if prev.Protocol == "" || prev.Protocol == ProtoNATPMP {
		m, err := c.mapNATPMP(ctx, internal, prev)
		if err == nil {
			return m, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			return Mapping{}, errors.Join(errs...)
		}
	}
	if prev.Protocol == "" || prev.Protocol == ProtoUPnP {
		svc, suggested := prev.upnp, internal
		if prev.Protocol == ProtoUPnP {
			suggested = prev.External.Port()
		} else {
			var err error
			if svc, err = c.upnpFind(ctx); err != nil {
				return Mapping{}, errors.Join(append(errs, err)...)
			}
		}
		ext, life, err := c.upnpMap(ctx, svc, internal, suggested)
		if err == nil {
			return Mapping{Protocol: ProtoUPnP, External: ext, Internal: internal, Lifetime: life, Granted: time.Now(), upnp: svc}, nil
		}
		errs = append(errs, err)
	}
	return Mapping{}, errors.Join(errs...)
}

// mapNATPMP is Map by NAT-PMP.
func (c *Client) mapNATPMP(ctx context.Context, internal uint16, prev Mapping) (Mapping, error) {
	suggested := internal
	if prev.Protocol == ProtoNATPMP {
		suggested = prev.External.Port()
	}
	port, life, err := c.pmpMap(ctx, internal, suggested, c.lifetime())
	if err != nil {
		return Mapping{}, err
	}
	ip, err := c.pmpExternal(ctx)
	if err != nil {
		return Mapping{}, err
	}
	return Mapping{Protocol: ProtoNATPMP, External: netip.AddrPortFrom(ip, port), Internal: internal, Lifetime: life, Granted: time.Now()}, nil
}

// Delete asks the gateway to remove m.
func (c *Client) Delete(ctx context.Context, m Mapping) error {
	switch m.Protocol {
	case ProtoPCP:
		_, _, err := c.pcpMap(ctx, m.nonce, m.Internal, m.External.Port(), m.External.Addr(), 0)
		return err
	case ProtoNATPMP:
		_, _, err := c.pmpMap(ctx, m.Internal, 0, 0)
		return err
	case ProtoUPnP:
		return c.upnpDelete(ctx, m.upnp, m.External.Port())
	}
	return fmt.Errorf("portmap: delete: unknown protocol %q", m.Protocol)
}

// Offers is what the gateway answered to Probe.
type Offers struct {
	PCP, NATPMP, UPnP bool
	// ExternalIP is the public address NAT-PMP reported; invalid if none.
	ExternalIP netip.Addr
}

// Protocols lists the protocols offered, in the order Map tries them.
func (o Offers) Protocols() []string {
	var out []string
	if o.PCP {
		out = append(out, ProtoPCP)
	}
	if o.NATPMP {
		out = append(out, ProtoNATPMP)
	}
	if o.UPnP {
		out = append(out, ProtoUPnP)
	}
	return out
}

// Probe asks the gateway, at once, whether it speaks PCP (an ANNOUNCE),
// NAT-PMP (an external address request) and UPnP IGD (an SSDP search
// sent to it alone); each within the client's timeout.
func (c *Client) Probe(ctx context.Context) (Offers, error) {
	if !c.Gateway.Is4() || c.Gateway.IsUnspecified() {
		return Offers{}, ErrNoGateway
	}
	var o Offers
	type res struct {
		proto string
		ok    bool
		ip    netip.Addr
	}
	ch := make(chan res, 3)
	go func() {
		ip, err := c.pmpExternal(ctx)
		ch <- res{ProtoNATPMP, err == nil, ip}
	}()
	go func() {
		local, err := c.localAddr(ctx)
		if err != nil {
			ch <- res{proto: ProtoPCP}
			return
		}
		_, _, err = c.exchange(ctx, pmpPort, pcpRequest(pcpOpAnnounce, 0, local, nil), func(b []byte) bool {
			return len(b) >= pcpMinRespLen && b[0] == pcpVersion && b[1] == pcpResponse|pcpOpAnnounce && b[3] == pcpResultOK
		})
		ch <- res{proto: ProtoPCP, ok: err == nil}
	}()
	go func() {
		_, err := c.ssdpSearch(ctx)
		ch <- res{proto: ProtoUPnP, ok: err == nil}
	}()
	for range 3 {
		r := <-ch
		switch r.proto {
		case ProtoNATPMP:
			o.NATPMP, o.ExternalIP = r.ok, r.ip
		case ProtoPCP:
			o.PCP = r.ok
		case ProtoUPnP:
			o.UPnP = r.ok
		}
	}
	return o, nil
}

// ssdpSearch sends an SSDP M-SEARCH for an Internet gateway device to the
// gateway's port 1900 (unicast: nothing else on the network hears it) and
// returns the LOCATION of its description.
func (c *Client) ssdpSearch(ctx context.Context) (string, error) {
	req := "M-SEARCH * HTTP/1.1\r\n" +
		"HOST: " + netip.AddrPortFrom(c.Gateway, ssdpPort).String() + "\r\n" +
		"MAN: \"ssdp:discover\"\r\n" +
		"MX: 1\r\n" +
		"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
	var location string
	_, _, err := c.exchange(ctx, ssdpPort, []byte(req), func(b []byte) bool {
		s := string(b)
		if !strings.HasPrefix(s, "HTTP/1.1 200") {
			return false
		}
		for _, line := range strings.Split(s, "\r\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && strings.EqualFold(strings.TrimSpace(k), "location") {
				location = strings.TrimSpace(v)
			}
		}
		return location != ""
	})
	if err != nil {
		return "", fmt.Errorf("ssdp: %w", err)
	}
	return location, nil
}
