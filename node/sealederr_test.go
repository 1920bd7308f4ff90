package node_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/beamtest/harness"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/wire"
)

// forgingProxy is someone on a plain http:// path to the coordinator:
// while forge is set it ends every map stream after its first frame with
// an unsealed node_removed trailer, and answers every other map stream
// request with an unsealed 403 node_not_registered.
type forgingProxy struct {
	t       *testing.T
	up      *url.URL
	rp      *httputil.ReverseProxy
	forge   atomic.Bool
	streams atomic.Int32 // map streams the proxy ended
	bodies  atomic.Int32 // map requests it answered 403
}

func (p *forgingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.forge.Load() || r.URL.Path != wire.PathMap {
		p.rp.ServeHTTP(w, r)
		return
	}
	if (p.streams.Load()+p.bodies.Load())%2 == 1 {
		p.bodies.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"error":"node not registered","code":"node_not_registered"}`)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, p.up.String()+r.URL.Path, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get(wire.HeaderKeepAlive) == "" {
		// Not a stream (an endpoint update): pass it on.
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(http.StatusOK)
	var hdr [4]byte
	if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
		return
	}
	frame := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(resp.Body, frame); err != nil {
		return
	}
	w.Write(hdr[:])
	w.Write(frame)
	w.Header().Set(wire.TrailerError, string(wire.CodeNodeRemoved)+": node was removed")
	p.streams.Add(1)
}

// TestForgedRemovalIgnored: an unsealed "node removed" (stream trailer)
// or "node not registered" (error body) written by someone on the path
// does not stop the node, while the coordinator's own sealed removal
// does.
func TestForgedRemovalIgnored(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{KeepAlive: 500 * time.Millisecond})
	u, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	p := &forgingProxy{t: t, up: u, rp: httputil.NewSingleHostReverseProxy(u)}
	p.rp.FlushInterval = -1
	hs := httptest.NewServer(p)
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close() })

	n, err := node.New(node.Options{StateDir: t.TempDir(), Hostname: "victim", UpTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if _, err := n.Up(opCtx(t), apitype.UpRequest{Coordinator: hs.URL, AuthKey: c.AuthKey(coordinator.AuthKeyOptions{}), Hostname: "victim"}); err != nil {
		t.Fatalf("Up: %v", err)
	}

	p.forge.Store(true)
	hs.CloseClientConnections() // the node's stream comes back through the forger
	harness.WaitFor(t, 30*time.Second, "two forged stream ends and two forged refusals", func() bool {
		return p.streams.Load() >= 2 && p.bodies.Load() >= 2
	})
	if st := n.Status(); st.State == apitype.StateNeedsLogin || st.Self == nil {
		t.Fatalf("after forged removals: state %s, self %v; want the node still joined", st.State, st.Self)
	}

	p.forge.Store(false)
	hs.CloseClientConnections()
	harness.WaitFor(t, 30*time.Second, "the node streams again", func() bool { return n.Status().State == apitype.StateRunning })

	// The coordinator's own removal is sealed, and ends the session.
	if err := c.Coord.RemoveNode(opCtx(t), "victim"); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 20*time.Second, "the removed node stops", func() bool { return n.Status().State == apitype.StateNeedsLogin })
}
