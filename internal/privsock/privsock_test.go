package privsock

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestListenOwnerOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm() &^ 0o600; got != 0 {
		t.Errorf("socket mode = %v; want no bits beyond 0600", fi.Mode().Perm())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.Close()
}
