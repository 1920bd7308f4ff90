package edgelab

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// TestEdgeHardNAT publishes the app of a device behind a hard NAT (a new
// public port per destination, so the edge cannot reach it directly): the
// edge reaches it over the relay. (It was behind the edgelab_pending tag
// until the engine's relay path landed.)
func TestEdgeHardNAT(t *testing.T) {
	w := newWorld(t, worldConfig{})
	ctx := t.Context()
	hard := w.addDevice("hard", nslab.NATHard, "")
	if err := upAll(ctx, hard); err != nil {
		t.Fatal(err)
	}
	url, err := hard.expose(ctx, strconv.Itoa(appPort))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var body string
	if err := retry(ctx, 20*time.Second, func() error {
		body, err = w.curl(ctx, 0, "--max-time", "5", url+"/")
		if err == nil && !strings.HasPrefix(body, "hello from hard") {
			err = fmt.Errorf("GET %s: %q", url, body)
		}
		return err
	}); err != nil {
		t.Fatalf("behind a hard NAT: %v", err)
	}
	t.Logf("hard-NAT device answered through the edge %v after expose", time.Since(start).Round(time.Millisecond))
	out, err := w.client(ctx, 0, "ws", "ws://hard."+domain+"/ws", "50")
	if err != nil || !strings.HasPrefix(out, "ws echoed 50 messages") {
		t.Fatalf("websocket to the hard-NAT device: %q, %v", out, err)
	}
	out, err = w.client(ctx, 0, "download", url+"/download", strconv.Itoa(32<<20))
	if err != nil {
		t.Fatalf("32 MiB download from the hard-NAT device: %v", err)
	}
	t.Log(out)
}
