package portmap

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// DefaultGateway returns the next hop of the host's IPv4 default route
// (Linux: /proc/net/route); ErrNoGateway if there is none or it cannot be
// read.
func DefaultGateway() (netip.Addr, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return netip.Addr{}, errors.Join(ErrNoGateway, err)
	}
	defer f.Close()
	return parseRoutes(bufio.NewScanner(f))
}

// parseRoutes finds the default route's gateway in /proc/net/route lines:
// "Iface Destination Gateway Flags ..." with addresses in host byte order
// (little-endian on the machines Beam runs on) as hex.
func parseRoutes(sc *bufio.Scanner) (netip.Addr, error) {
	const flagGateway = 0x2
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[1] != "00000000" {
			continue
		}
		gw, err1 := hex.DecodeString(f[2])
		flags, err2 := strconv.ParseUint(f[3], 16, 32)
		if err1 != nil || err2 != nil || len(gw) != 4 {
			continue
		}
		if flags&flagGateway == 0 {
			continue
		}
		v := binary.LittleEndian.Uint32(gw)
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		if a.IsUnspecified() {
			continue
		}
		return a, nil
	}
	return netip.Addr{}, ErrNoGateway
}
