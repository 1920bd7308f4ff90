package derpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"

	"beam.dev/beam/derp"
)

// ServeSTUN answers STUN Binding requests arriving on pc with a Binding
// success response that carries the source address as XOR-MAPPED-ADDRESS.
// Anything else is ignored. It returns nil once ctx is done (leaving pc's
// read deadline in the past) and an error if reading from pc fails
// otherwise. It does not close pc. logger may be nil.
func ServeSTUN(ctx context.Context, pc net.PacketConn, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "stun")
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 2048)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				continue
			}
			return fmt.Errorf("stun: read: %w", err)
		}
		resp, ok := stunResponse(buf[:n], addr)
		if !ok {
			continue
		}
		if _, err := pc.WriteTo(resp, addr); err != nil {
			logger.Debug("write response", "to", addr.String(), "err", err)
		}
	}
}

// stunResponse returns the answer to a Binding request from addr.
func stunResponse(p []byte, addr net.Addr) ([]byte, bool) {
	if !derp.IsSTUN(p) {
		return nil, false
	}
	m := &stun.Message{Raw: p}
	if err := m.Decode(); err != nil || m.Type != stun.BindingRequest {
		return nil, false
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		return nil, false
	}
	var ap netip.AddrPort
	switch a := addr.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		var err error
		if ap, err = netip.ParseAddrPort(addr.String()); err != nil {
			return nil, false
		}
	}
	return derp.STUNBindingResponse(m.TransactionID, ap), true
}
