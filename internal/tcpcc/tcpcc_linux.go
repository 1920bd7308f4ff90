package tcpcc

import (
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

func set(fd uintptr, name string) {
	_ = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
}

func get(fd uintptr) (string, error) {
	name, err := unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	return strings.TrimRight(name, "\x00"), err
}

// Default returns the system's default congestion control.
func Default() string { return sysctl("tcp_congestion_control") }

// Grantable reports whether the kernel would give this process
// congestion control name: it has it, and it is allowed to unprivileged
// processes or this one runs as root.
func Grantable(name string) bool {
	if !slices.Contains(strings.Fields(sysctl("tcp_available_congestion_control")), name) {
		return false
	}
	return os.Geteuid() == 0 || slices.Contains(strings.Fields(sysctl("tcp_allowed_congestion_control")), name)
}

func sysctl(name string) string {
	b, _ := os.ReadFile("/proc/sys/net/ipv4/" + name)
	return strings.TrimSpace(string(b))
}
