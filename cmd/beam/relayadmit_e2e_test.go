package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// nodeKey returns the node key d registered with (its state file).
func nodeKey(t *testing.T, d *device) key.NodePrivate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.state, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		PrivateKey key.NodePrivate `json:"private_key"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.PrivateKey.IsZero() {
		t.Fatalf("%s's node key: %v", d.name, err)
	}
	return st.PrivateKey
}

// TestServerRelayAdmitsNodesOnly: the relay of a real `beam server`
// refuses a node key its coordinator does not know (before, any key was
// relayed, without a limit), admits a registered device's key with the
// rate and burst of --relay-rate and --relay-burst in its server info,
// and two devices forced onto the relay still carry a TCP stream through
// it.
func TestServerRelayAdmitsNodesOnly(t *testing.T) {
	c, _ := startDevServerWith(t, 0, "--relay-rate", "80Mbit", "--relay-burst", "2MiB")
	p := overlayPairOn(t, c, "BEAM_DEBUG_ALWAYS_RELAY=1")

	// The devices talk over the relay.
	port := echoServer(t)
	conn := p.dialBeta(t, port)
	defer conn.Close()
	msg := []byte("through the relay")
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo through alpha to beta: %q, %v", got, err)
	}
	if path := p.path(); path != "relay" {
		t.Errorf("alpha reaches beta over %q, want relay", path)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if dc, err := derp.Dial(ctx, c.url, key.NewNode(), derp.ClientOptions{}); !errors.Is(err, derp.ErrRefused) || !strings.Contains(err.Error(), "not admitted") {
		if err == nil {
			t.Errorf("an unregistered key at the server's relay: admitted with %+v, want refused", dc.ServerInfo())
			dc.Close()
		} else {
			t.Errorf("an unregistered key at the server's relay: %v, want refused as not admitted", err)
		}
	}
	dc, err := derp.Dial(ctx, c.url, nodeKey(t, p.alpha), derp.ClientOptions{})
	if err != nil {
		t.Fatalf("alpha's key at the server's relay: %v", err)
	}
	si := dc.ServerInfo()
	dc.Close()
	if si.TokenBucketBytesPerSecond != 80_000_000/8 || si.TokenBucketBytesBurst != 2<<20 {
		t.Errorf("server info for alpha: rate %d B/s, burst %d B; want %d and %d (--relay-rate 80Mbit, --relay-burst 2MiB)",
			si.TokenBucketBytesPerSecond, si.TokenBucketBytesBurst, 80_000_000/8, 2<<20)
	}
}
