//go:build !linux

package udprelay

import "net"

var oobSize = 0

func enableGRO(*net.UDPConn) bool         { return false }
func supportsGSO(*net.UDPConn) bool       { return false }
func groSegmentSize([]byte) int           { return 0 }
func gsoControl(oob []byte, _ int) []byte { return oob[:0] }
func gsoFailed(error) bool                { return true }
