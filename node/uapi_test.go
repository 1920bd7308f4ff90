package node_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"beam.dev/beam/beamtest/harness"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/types/key"
)

// TestWireGuardNameWithWgctrl runs a daemon with WireGuardName set and
// reads its device with wgctrl, as `wg show` would (needs root, as CI has).
func TestWireGuardNameWithWgctrl(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	authKey := c.AuthKey(coordinatorReusable())
	b := c.AddNode("beta", authKey)
	var rnd [4]byte
	rand.Read(rnd[:])
	name := "beamnode-" + hex.EncodeToString(rnd[:])
	n, err := node.New(node.Options{StateDir: t.TempDir(), Hostname: "alpha", WireGuardName: name})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.Up(ctx, apitype.UpRequest{Coordinator: c.URL, AuthKey: authKey, Hostname: "alpha"}); err != nil {
		t.Fatal(err)
	}
	wc, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	harness.WaitFor(t, 10*time.Second, "wgctrl sees beta as a peer", func() bool {
		dev, err := wc.Device(name)
		if err != nil || len(dev.Peers) != 1 {
			return false
		}
		bk, err := key.ParseNodePublic(b.Status().Self.Key)
		return err == nil && dev.Peers[0].PublicKey == wgtypes.Key(bk.Raw32())
	})
	n.Close()
	if _, err := wc.Device(name); err == nil {
		t.Fatal("device still served after the node closed")
	}
}
