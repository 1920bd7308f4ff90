package tcpcc

import (
	"context"
	"net"
	"testing"
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
// offers it to this process, and keep the default where it does not.
func TestPreferred(t *testing.T) {
	want := Default()
	if Grantable(Preferred) {
		want = Preferred
	}
	if want == "" {
		t.Fatal("no default congestion control in /proc/sys/net/ipv4")
	}
	c, a := pair(t, Dialer(), ListenConfig())
	for side, conn := range map[string]net.Conn{"dialed": c, "accepted": a} {
		if got := of(t, conn); got != want {
			t.Errorf("%s socket: congestion control %q, want %s", side, got, want)
		}
	}
}
