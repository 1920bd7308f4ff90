package coordinator_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestCloseEndsStreams: Close ends every map stream, later requests get
// 503, and no goroutine of the coordinator, the store or the client is
// left behind.
func TestCloseEndsStreams(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	wa, wb := watch(t, a), watch(t, b)
	wa.waitFor("beta online", wait, func(nm *wire.NetMap) bool { p := peerNamed(nm, "beta"); return p != nil && p.Online })
	wb.waitFor("alpha", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })

	closed := make(chan error, 1)
	go func() { closed <- c.Server.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("Close did not return with streams open")
	}
	if err := c.Server.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	resp, err := http.Get(c.URL + "/key")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after Close: status %d, want 503", resp.StatusCode)
	}
	// The clients keep their last netmap and keep retrying; the last
	// netmap still has the peer.
	if nm := wa.waitFor("last netmap kept", wait, func(*wire.NetMap) bool { return true }); peerNamed(nm, "beta") == nil {
		t.Fatal("client dropped its netmap when the coordinator went away")
	}
	_, err = a.Register(context.Background(), coordclient.RegisterParams{})
	var ce *coordclient.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusServiceUnavailable {
		t.Fatalf("Register after Close = %v, want a 503 error", err)
	}
	wa.stop()
	wb.stop()
	c.stop()
	http.DefaultClient.CloseIdleConnections()
}
