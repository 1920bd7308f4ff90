package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
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

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times; it is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// treeCPU returns the CPU time of the process pid and of its children,
// those running (each backend of the server is one) and those it has
// reaped.
func treeCPU(pid int) (time.Duration, error) {
	_, own, reaped, err := statCPU(strconv.Itoa(pid))
	if err != nil {
		return 0, err
	}
	ticks := own + reaped
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("pgtest: %w", err)
	}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		pp, t, _, err := statCPU(e.Name())
		if err == nil && pp == pid {
			ticks += t
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// statCPU reads /proc/PID/stat: the parent's PID, the process's own CPU
// ticks (user and system) and those of its reaped children.
func statCPU(pid string) (ppid int, own, reaped uint64, err error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("pgtest: %w", err)
	}
	// pid (comm) state ppid ...: the comm may hold spaces and
	// parentheses; utime, stime, cutime and cstime are fields 14-17 of
	// the whole line.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 15 {
		return 0, 0, 0, errors.New("pgtest: malformed /proc stat")
	}
	ppid, err1 := strconv.Atoi(f[1])
	var t [4]uint64
	for j := range t {
		v, err := strconv.ParseUint(f[11+j], 10, 64)
		if err != nil || err1 != nil {
			return 0, 0, 0, errors.New("pgtest: malformed /proc stat CPU times")
		}
		t[j] = v
	}
	return ppid, t[0] + t[1], t[2] + t[3], nil
}
