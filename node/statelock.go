package node

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// lockFile is the file in the state directory a daemon holds locked
// (flock) while it runs. Its content names the holder for the daemon that
// is refused.
const lockFile = "daemon.lock"

// StateInUseError is returned by New when another daemon holds the state
// directory: two daemons on one node key would fight over the node's
// session at the coordinator forever.
type StateInUseError struct {
	// Dir is the state directory.
	Dir string
	// PID and Socket name the daemon that holds it, as it recorded them;
	// zero and empty if it recorded nothing.
	PID    int
	Socket string
}

func (e *StateInUseError) Error() string {
	who := "another beam daemon"
	if e.PID != 0 {
		who = fmt.Sprintf("another beam daemon (pid %d", e.PID)
		if e.Socket != "" {
			who += ", socket " + e.Socket
		}
		who += ")"
	}
	msg := fmt.Sprintf("state directory %s is in use by %s", e.Dir, who)
	if e.Socket != "" {
		msg += fmt.Sprintf("; stop it with `beam --socket %s daemon stop` or choose another --state", e.Socket)
	} else {
		msg += "; stop it or choose another --state"
	}
	return msg
}

// lockHolder is the content of the lock file.
type lockHolder struct {
	PID    int    `json:"pid"`
	Socket string `json:"socket,omitempty"`
}

// stateLock is a held lock on a state directory; release unlocks it.
type stateLock struct {
	f *os.File
}

// lockStateDir creates dir (0700) if needed and locks it for this
// process, recording the PID and socket. It fails with *StateInUseError
// while another daemon holds it.
func lockStateDir(dir, socket string) (*stateLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	locked, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state dir: %w", err)
	}
	if !locked {
		e := &StateInUseError{Dir: dir}
		var h lockHolder
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &h) == nil {
			e.PID, e.Socket = h.PID, h.Socket
		}
		f.Close()
		return nil, e
	}
	b, _ := json.Marshal(lockHolder{PID: os.Getpid(), Socket: socket})
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(append(b, '\n'), 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("write state lock: %w", err)
		}
	}
	return &stateLock{f: f}, nil
}

// release unlocks the directory. It is safe to call more than once.
func (l *stateLock) release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Close() // closing the descriptor drops the flock
	l.f = nil
}
