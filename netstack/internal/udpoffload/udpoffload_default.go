//go:build !linux

package udpoffload

import "net"

// GROControlSize and GSOControlSize are 0: there is no offload here.
const (
	GROControlSize = 0
	GSOControlSize = 0
)

// EnableGRO reports false: no receive offload here.
func EnableGRO(*net.UDPConn) bool { return false }

// SupportsGSO reports false: no segmentation offload here.
func SupportsGSO(*net.UDPConn) bool { return false }

// GROSegmentSize reports 0: every message is one datagram.
func GROSegmentSize([]byte) int { return 0 }

// PutGSOSize returns an empty control message.
func PutGSOSize(oob []byte, _ uint16) []byte { return oob[:0] }

// GSOFailed reports false: nothing here sends with segmentation.
func GSOFailed(error) bool { return false }
