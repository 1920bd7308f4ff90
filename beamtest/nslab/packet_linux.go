package nslab

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// openPacketSocket opens a raw packet socket bound to ifname, with
// virtio-net headers and without the frames it sends itself.
func openPacketSocket(ifname string) (*os.File, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, int(htons(ethPAll)))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	for _, opt := range []int{packetVnetHdr, packetIgnoreOutgoing} {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_PACKET, opt, 1); err != nil {
			syscall.Close(fd)
			return nil, fmt.Errorf("packet socket option %d: %w", opt, err)
		}
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(ethPAll), Ifindex: ifi.Index}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("bind packet socket to %s: %w", ifname, err)
	}
	return os.NewFile(uintptr(fd), "packet:"+ifname), nil
}
