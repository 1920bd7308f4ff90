package node_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"beam.dev/beam/node"
)

// TestStateLock: New creates a missing state directory (0700) and holds it;
// a second Node on it is refused with the first one's PID and socket, and
// after Close the directory is free again.
func TestStateLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "state")
	first, err := node.New(node.Options{StateDir: dir, Socket: "/tmp/first.sock"})
	if err != nil {
		t.Fatalf("New on a missing directory: %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("state dir mode %v, want 0700", got)
	}

	_, err = node.New(node.Options{StateDir: dir, Socket: "/tmp/second.sock"})
	inUse, ok := errors.AsType[*node.StateInUseError](err)
	if !ok {
		t.Fatalf("second New: got %v, want a *StateInUseError", err)
	}
	if inUse.PID != os.Getpid() || inUse.Socket != "/tmp/first.sock" || inUse.Dir != dir {
		t.Errorf("second New: got pid %d socket %q dir %q, want pid %d socket /tmp/first.sock dir %s", inUse.PID, inUse.Socket, inUse.Dir, os.Getpid(), dir)
	}
	for _, want := range []string{strconv.Itoa(os.Getpid()), "/tmp/first.sock"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	third, err := node.New(node.Options{StateDir: dir})
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	third.Close()
}
