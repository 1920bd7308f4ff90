package netstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestUAPIWithWgctrl serves an engine's UAPI where wgctrl looks for
// userspace devices and reads its peers and counters with wgctrl, as `wg
// show` would. It needs root for /var/run/wireguard (CI runs as root).
// A peer with no traffic (c: asleep, not configured in wireguard-go) is
// listed too, with zero counters.
func TestUAPIWithWgctrl(t *testing.T) {
	t.Setenv("BEAM_DEBUG_LAZY_PEERS", "1") // lists an asleep peer too
	nodes := newNodes(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	const dir = "/var/run/wireguard"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("create %s (the test needs root): %v", dir, err)
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	name := "beamtest-" + hex.EncodeToString(rnd[:])
	path := filepath.Join(dir, name+".sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.e.ServeUAPI(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeUAPI: %v", err)
		}
	})

	// Some traffic, so there are a handshake and counters.
	bl, err := b.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, bl)
	checkTCPEcho(t, t.Context(), a, netip.AddrPortFrom(b.v4, 7).String())

	wc, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	var dev *wgtypes.Device
	deadline := time.Now().Add(5 * time.Second)
	for {
		dev, err = wc.Device(name)
		if err == nil && len(dev.Peers) == 2 && dev.Peers[0].ReceiveBytes > 0 && !dev.Peers[0].LastHandshakeTime.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("wgctrl Device(%s) = %+v, %v", name, dev, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if dev.Type != wgtypes.Userspace {
		t.Errorf("device type %v, want userspace", dev.Type)
	}
	if got, want := dev.PublicKey, wgtypes.Key(a.key.Public().Raw32()); got != want {
		t.Errorf("device public key %v, want %v", got, want)
	}
	if got, want := dev.Peers[0].PublicKey, wgtypes.Key(b.key.Public().Raw32()); got != want {
		t.Errorf("peer key %v, want %v", got, want)
	}
	st := a.e.Status()
	if len(st) != 2 || st[0].TxBytes == 0 || dev.Peers[0].TransmitBytes == 0 {
		t.Errorf("status %+v vs wgctrl peer %+v", st, dev.Peers[0])
	}
	if a.e.inDevice(c.key.Public()) {
		t.Errorf("peer c without traffic is configured in wireguard-go, want asleep")
	}
	pc := dev.Peers[1]
	if got, want := pc.PublicKey, wgtypes.Key(c.key.Public().Raw32()); got != want {
		t.Errorf("second peer key %v, want %v (the peer asleep)", got, want)
	}
	if pc.ReceiveBytes != 0 || pc.TransmitBytes != 0 || !pc.LastHandshakeTime.IsZero() || len(pc.AllowedIPs) != 2 {
		t.Errorf("peer asleep: %+v, want zero counters and its 2 allowed IPs", pc)
	}
}
