// Package tcpcc asks the kernel for a TCP congestion control on Beam's
// own kernel TCP connections: the relay legs. The overlay's TCP rides
// inside a relay connection, so when that leg loses packets its kernel
// congestion control alone sets the pace; with Cubic, the usual default,
// a few percent loss holds it to a few segments per round trip, while
// BBR keeps the path's bandwidth. Linux lets a socket choose (unprivileged
// processes among net.ipv4.tcp_allowed_congestion_control); elsewhere,
// or when the kernel refuses, the socket keeps the system default.
package tcpcc

import (
	"net"
	"syscall"
)

// Preferred is the congestion control Beam asks for on relay connections.
const Preferred = "bbr"

// Control returns a function for net.Dialer.Control or
// net.ListenConfig.Control that asks for congestion control name on TCP
// sockets. A refusal is not an error: the socket keeps the default. On a
// listening socket the choice carries over to the connections it accepts.
func Control(name string) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		switch network {
		case "tcp", "tcp4", "tcp6":
			c.Control(func(fd uintptr) { set(fd, name) })
		}
		return nil
	}
}

// Dialer returns a net.Dialer that asks for Preferred.
func Dialer() *net.Dialer { return &net.Dialer{Control: Control(Preferred)} }

// ListenConfig returns a net.ListenConfig that asks for Preferred on the
// listener and so on every connection it accepts.
func ListenConfig() *net.ListenConfig { return &net.ListenConfig{Control: Control(Preferred)} }

// Of returns the congestion control of a TCP connection, or "" where the
// platform cannot tell.
func Of(c net.Conn) (string, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return "", nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return "", err
	}
	var name string
	var gerr error
	if err := rc.Control(func(fd uintptr) { name, gerr = get(fd) }); err != nil {
		return "", err
	}
	return name, gerr
}
