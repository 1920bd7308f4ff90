package nslab

import (
	"errors"
	"syscall"
)

// processRuns reports whether a process with pid exists (a signal 0 to
// it does not fail with ESRCH).
func processRuns(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
