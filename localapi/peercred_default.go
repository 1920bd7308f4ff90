//go:build !linux

package localapi

import (
	"errors"
	"net"
)

// peerCredSupported: only the Linux build reads peer credentials; elsewhere
// the socket's file mode (owner only) is the whole check.
const peerCredSupported = false

func peerUID(net.Conn) (int, error) {
	return 0, errors.New("localapi: peer credentials are not read on this platform")
}
