package cli

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"beam.dev/beam/configs"
)

// listenSTUNAlt opens the second STUN responder of a relay whose first
// STUN listener is first, configured as stunAddr, as alt asks
// (configs.STUNAltUsage). A node that sees different mappings from the
// two ports knows its NAT is hard, which one relay could not otherwise
// show. It returns nil and no error when alt is off, when there is no
// first listener, or when the derived port is taken (with a warning:
// the relay still works, only that detection is lost).
func listenSTUNAlt(first net.PacketConn, stunAddr, alt string, logger *slog.Logger) (net.PacketConn, error) {
	if first == nil || alt == configs.STUNAltOff {
		return nil, nil
	}
	if alt != "" {
		pc, err := net.ListenPacket("udp", alt)
		if err != nil {
			return nil, fmt.Errorf("listen second STUN port: %w", err)
		}
		return pc, nil
	}
	la := first.LocalAddr().(*net.UDPAddr)
	host := ""
	if !la.IP.IsUnspecified() {
		host = la.IP.String()
	}
	try := []string{}
	if la.Port < 65535 {
		try = append(try, net.JoinHostPort(host, strconv.Itoa(la.Port+1)))
	}
	if _, port, err := net.SplitHostPort(stunAddr); err == nil && (port == "0" || port == "") {
		// The first port was ephemeral: so may the second be.
		try = append(try, net.JoinHostPort(host, "0"))
	}
	var err error
	for _, a := range try {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", a); err == nil {
			return pc, nil
		}
	}
	if logger == nil {
		return nil, nil
	}
	logger.Warn("second STUN port not served: nodes behind a hard NAT cannot tell it from this relay alone (set --stun-alt-addr)",
		"stun", la.String(), "err", err)
	return nil, nil
}

// stunAltPort returns the firewall line for the second STUN port of a
// server configured with stunAddr and alt, or "" if there is none.
func stunAltPort(stunAddr, alt string) string {
	if stunAddr == "" || alt == configs.STUNAltOff {
		return ""
	}
	if alt != "" {
		_, p, _ := net.SplitHostPort(alt)
		return p
	}
	_, p, err := net.SplitHostPort(stunAddr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil || n == 0 || n >= 65535 {
		return ""
	}
	return strconv.Itoa(n + 1)
}
