package tcpcc

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// pair returns both ends of a loopback TCP connection: the socket d
// dialed and the one a listener made with lc accepted.
func pair(t *testing.T, d *net.Dialer, lc *net.ListenConfig) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return c, a
}

func of(t *testing.T, c net.Conn) string {
	t.Helper()
	name, err := Of(c)
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// TestControl asks for Reno, which every Linux kernel has and which is not
// the usual default, on a dialed socket and on a listener, and checks the
// dialed and the accepted connection got it; a name the kernel does not
// know leaves the default and still connects.
func TestControl(t *testing.T) {
	defName := Default()
	if defName == "reno" {
		t.Fatal("the system default is reno, so this test could not tell a choice from the default")
	}
	c, a := pair(t, &net.Dialer{Control: Control("reno")}, &net.ListenConfig{Control: Control("reno")})
	if got := of(t, c); got != "reno" {
		t.Errorf("dialed socket: congestion control %q, want reno", got)
	}
	if got := of(t, a); got != "reno" {
		t.Errorf("accepted socket: congestion control %q, want reno (inherited from the listener)", got)
	}
	c, a = pair(t, &net.Dialer{Control: Control("no-such-control")}, &net.ListenConfig{})
	if got := of(t, c); got != defName {
		t.Errorf("dialed socket after a refused choice: %q, want the default %q", got, defName)
	}
	if got := of(t, a); got != defName {
		t.Errorf("accepted socket: %q, want the default %q", got, defName)
	}
}

// TestPreferred checks Dialer and ListenConfig give BBR where the kernel
// grants it to this process, and keep the default where it does not. The
// expectation comes from the kernel, not from this package: the default
// is what a socket nobody configured has, and BBR is grantable if a
// setsockopt of it on a fresh socket succeeds. Default and Grantable must
// agree with the kernel too.
func TestPreferred(t *testing.T) {
	c, _ := pair(t, &net.Dialer{}, &net.ListenConfig{})
	def := of(t, c)
	if def == "" {
		t.Fatal("a plain socket reports no congestion control")
	}
	if got := Default(); got != def {
		t.Errorf("Default() = %q, want %q, what a plain socket has", got, def)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	granted := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, Preferred) == nil
	if got := Grantable(Preferred); got != granted {
		t.Errorf("Grantable(%q) = %v, but setsockopt says %v", Preferred, got, granted)
	}
	want := def
	if granted {
		want = Preferred
	}
	t.Logf("default %s; %s granted: %v", def, Preferred, granted)
	c, a := pair(t, Dialer(), ListenConfig())
	for side, conn := range map[string]net.Conn{"dialed": c, "accepted": a} {
		if got := of(t, conn); got != want {
			t.Errorf("%s socket: congestion control %q, want %s", side, got, want)
		}
	}
}
