//go:build unix

package scalebench

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises this process's soft limit on open files to the
// hard limit (every fake node holds a connection) and returns the limit
// then in force.
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("scalebench: get open files limit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("scalebench: raise open files limit: %w", err)
		}
	}
	return uint64(lim.Cur), nil // int64 on some BSDs
}
