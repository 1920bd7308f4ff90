package localapi

import (
	"net"
	"path/filepath"
	"testing"
)

// TestPeerConnHalfCloses: a connection the guard accepted half-closes
// like the unix socket under it, so the dial handler can end a client's
// download while the client still has its side open.
func TestPeerConnHalfCloses(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var c net.Conn = &peerConn{Conn: server, release: func() {}}
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("peerConn has no CloseWrite")
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	buf := make([]byte, 1)
	if n, err := client.Read(buf); n != 0 || err == nil {
		t.Fatalf("client read after CloseWrite: %d, %v; want 0, EOF", n, err)
	}
	// The other direction still works.
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); n != 1 || err != nil {
		t.Fatalf("server read: %d, %v; want 1, nil", n, err)
	}
}
