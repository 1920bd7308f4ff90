//go:build !unix

package scalebench

import "errors"

// RaiseFileLimit has nothing to raise here: the benchmark runs where the
// coordinator's /proc figures are, on Linux.
func RaiseFileLimit() (uint64, error) {
	return 0, errors.New("scalebench: open files limit: not supported on this platform")
}
