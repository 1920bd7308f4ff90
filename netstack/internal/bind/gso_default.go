//go:build !linux

package bind

import "net"

const gsoControlSize = 0

func supportsGSO(*net.UDPConn) bool { return false }

func putGSOSize(oob []byte, _ uint16) []byte { return oob[:0] }

func gsoFailed(error) bool { return false }

func enableGRO(*net.UDPConn) bool { return false }
