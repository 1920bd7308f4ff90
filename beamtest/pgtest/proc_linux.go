package pgtest

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// procAttrs returns how initdb and the server run: as the current user
// unless that is root, which PostgreSQL refuses; then as "nobody", who is
// given dir. Should the test binary die, the server shuts down at once.
func procAttrs(dir string) (initdb, server *syscall.SysProcAttr, err error) {
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			return nil, nil, fmt.Errorf("pgtest: PostgreSQL does not run as root, and there is no user nobody to run it as: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		if err := os.Chown(dir, int(uid), int(gid)); err != nil {
			return nil, nil, fmt.Errorf("pgtest: %w", err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	return &syscall.SysProcAttr{Credential: cred}, &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}, nil
}
