package netstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// linuxHostNet is the kernel TUN device with its addresses and routes,
// configured with iproute2's ip command. The device is not persistent:
// when the process exits, however it exits, the kernel removes it and,
// with it, its addresses and routes.
type linuxHostNet struct {
	dev  tun.Device
	name string
	log  *slog.Logger

	mu     sync.Mutex // guards the following fields
	addrs  map[netip.Addr]bool
	routes map[netip.Prefix]netip.Addr // prefix -> preferred source

	rawMu      sync.Mutex // guards the following fields
	raw4, raw6 int        // raw IP sockets bound to the device for send; -1 until first used
	rawClosed  bool
}

// closingDevice closes the raw sockets of send with the device.
type closingDevice struct {
	tun.Device
	h *linuxHostNet
}

func (d closingDevice) Close() error {
	d.h.rawMu.Lock()
	d.h.rawClosed = true
	for _, fd := range []int{d.h.raw4, d.h.raw6} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	d.h.raw4, d.h.raw6 = -1, -1
	d.h.rawMu.Unlock()
	return d.Device.Close()
}

// send writes pkt, a whole IP packet, to a raw socket bound to the
// device: the kernel routes it out of the device, where wireguard-go
// reads it and sends it to the peer of its destination. It never blocks.
func (h *linuxHostNet) send(pkt []byte) error {
	if len(pkt) < 1 {
		return fmt.Errorf("netstack: send to TUN: empty packet")
	}
	h.rawMu.Lock()
	defer h.rawMu.Unlock()
	if h.rawClosed {
		return fmt.Errorf("netstack: send to TUN: %w", net.ErrClosed)
	}
	fd, family := &h.raw4, unix.AF_INET
	var to unix.Sockaddr
	switch {
	case pkt[0]>>4 == 4 && len(pkt) >= 20:
		to = &unix.SockaddrInet4{Addr: [4]byte(pkt[16:20])}
	case pkt[0]>>4 == 6 && len(pkt) >= 40:
		fd, family = &h.raw6, unix.AF_INET6
		to = &unix.SockaddrInet6{Addr: [16]byte(pkt[24:40])}
	default:
		return fmt.Errorf("netstack: send to TUN: not an IP packet")
	}
	if *fd < 0 {
		// IPPROTO_RAW: the packet carries its own IP header (IPv4 and IPv6).
		s, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("netstack: send to TUN: raw socket: %w", err)
		}
		if err := unix.SetsockoptString(s, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, h.name); err != nil {
			unix.Close(s)
			return fmt.Errorf("netstack: send to TUN: bind raw socket to %s: %w", h.name, err)
		}
		*fd = s
	}
	if err := unix.Sendto(*fd, pkt, unix.MSG_DONTWAIT, to); err != nil {
		return fmt.Errorf("netstack: send to TUN: %w", err)
	}
	return nil
}

// ipTimeout bounds one ip command.
const ipTimeout = 10 * time.Second

func newHostNet(name string, mtu int, log *slog.Logger) (hostNet, error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netstack: kernel TUN mode needs iproute2's ip command: %w", err)
	}
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("netstack: create TUN device %q (needs root or CAP_NET_ADMIN): %w", name, err)
	}
	real, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("netstack: TUN device name: %w", err)
	}
	h := &linuxHostNet{name: real, log: log, addrs: map[netip.Addr]bool{}, routes: map[netip.Prefix]netip.Addr{}, raw4: -1, raw6: -1}
	h.dev = closingDevice{Device: dev, h: h}
	if err := h.ip("link", "set", "dev", real, "up"); err != nil {
		dev.Close()
		return nil, err
	}
	return h, nil
}

func (h *linuxHostNet) device() tun.Device { return h.dev }

// ip runs one ip command.
func (h *linuxHostNet) ip(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("netstack: ip %v: %w: %s", args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// hostRanges are the only ranges setAddrs puts onto the host: Beam's
// overlay, 100.64.0.0/10 and the IPv6 ULA /48 its coordinators assign
// from (coordinator.ULAPrefix; netstack imports no Beam package above it).
var hostRanges = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:bea0:b0de::/48")}

// errHostRange means setAddrs was asked for an address or route outside
// hostRanges.
var errHostRange = errors.New("netstack: address or route outside the overlay (100.64.0.0/10, fd7a:bea0:b0de::/48) refused for the host's TUN device")

// checkHostRanges returns an error wrapping errHostRange unless every
// address and route lies inside hostRanges: a netmap naming 8.8.8.8 as
// the node's address must not take the host's traffic to it.
func checkHostRanges(addrs []netip.Addr, routes []netip.Prefix) error {
	for _, a := range addrs {
		if !slices.ContainsFunc(hostRanges, func(r netip.Prefix) bool { return r.Contains(a.Unmap()) }) {
			return fmt.Errorf("%w: address %s", errHostRange, a)
		}
	}
	for _, p := range routes {
		p = p.Masked()
		if !slices.ContainsFunc(hostRanges, func(r netip.Prefix) bool { return r.Bits() <= p.Bits() && r.Contains(p.Addr()) }) {
			return fmt.Errorf("%w: route %s", errHostRange, p)
		}
	}
	return nil
}

// setAddrs makes addrs the device's addresses and routes its routes. It
// changes nothing if one of them lies outside hostRanges.
func (h *linuxHostNet) setAddrs(addrs []netip.Addr, routes []netip.Prefix, src []netip.Addr) error {
	if err := checkHostRanges(addrs, routes); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var firstErr error
	keep := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a.Unmap()] = true
	}
	wantRoutes := map[netip.Prefix]netip.Addr{}
	for _, p := range routes {
		p = p.Masked()
		var s netip.Addr
		for _, a := range src {
			if a.Is4() == p.Addr().Is4() && want[a.Unmap()] {
				s = a.Unmap()
				break
			}
		}
		wantRoutes[p] = s
	}
	// Routes that go or change first, so none names a source about to go.
	for p, s := range h.routes {
		if ns, ok := wantRoutes[p]; !ok || ns != s {
			keep(h.ip(family(p.Addr()), "route", "del", p.String(), "dev", h.name))
			delete(h.routes, p)
		}
	}
	for a := range h.addrs {
		if !want[a] {
			keep(h.ip(family(a), "addr", "del", hostPrefix(a), "dev", h.name))
			delete(h.addrs, a)
		}
	}
	for a := range want {
		if h.addrs[a] {
			continue
		}
		args := []string{family(a), "addr", "replace", hostPrefix(a), "dev", h.name}
		if a.Is6() {
			args = append(args, "nodad") // usable at once, for listeners
		}
		if err := h.ip(args...); err != nil {
			keep(err)
			continue
		}
		h.addrs[a] = true
	}
	for p, s := range wantRoutes {
		if _, ok := h.routes[p]; ok {
			continue
		}
		if s.IsValid() && !h.addrs[s] {
			continue // its address failed above
		}
		args := []string{family(p.Addr()), "route", "replace", p.String(), "dev", h.name}
		if s.IsValid() {
			args = append(args, "src", s.String())
		}
		if err := h.ip(args...); err != nil {
			keep(err)
			continue
		}
		h.routes[p] = s
	}
	return firstErr
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "-4"
	}
	return "-6"
}

func hostPrefix(a netip.Addr) string {
	return a.String() + "/" + strconv.Itoa(a.BitLen())
}
