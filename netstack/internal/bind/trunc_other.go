//go:build !unix

package bind

// msgTrunc is 0 where the receive flags never say a datagram was cut
// short: on Windows a datagram larger than the buffer is a read error
// (WSAEMSGSIZE), which the read loop skips like any other.
const msgTrunc = 0
