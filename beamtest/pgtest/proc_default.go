//go:build !linux

package pgtest

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// procAttrs returns how initdb and the server run: as the current user,
// which must not be root (PostgreSQL refuses it; on Linux, pgtest runs
// the server as nobody instead).
func procAttrs(string) (initdb, server *syscall.SysProcAttr, err error) {
	if os.Geteuid() == 0 {
		return nil, nil, errors.New("pgtest: PostgreSQL does not run as root; run the tests as another user")
	}
	return nil, nil, nil
}

// treeCPU is not implemented off Linux.
func treeCPU(int) (time.Duration, error) {
	return 0, errors.New("pgtest: the server's CPU time is known on Linux only")
}
