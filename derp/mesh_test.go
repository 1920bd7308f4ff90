package derp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// TestMeshKeyNeverSent stands up a server that is not the relay the
// client meant to reach (as anyone could, over plain HTTP) and checks what
// a meshing client hands it: a proof bound to this connection's challenge
// and this server's key, never the mesh key itself.
func TestMeshKeyNeverSent(t *testing.T) {
	const meshKey = "region-secret-mesh-key"
	impostor := key.NewMachine()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	challenge := []byte("0123456789abcdef")
	got := make(chan ClientInfo, 1)
	errc := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(nc)
		if _, err := http.ReadRequest(br); err != nil {
			errc <- err
			return
		}
		nc.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"))
		bw := bufio.NewWriter(nc)
		pub := impostor.Public().Raw32()
		WriteFrame(bw, FrameServerKey, []byte(Magic), pub[:], challenge)
		bw.Flush()
		ft, p, err := ReadFrame(br, MaxFrameSize, nil)
		if err != nil || ft != FrameClientInfo {
			errc <- errors.Join(err, errors.New("no client info"))
			return
		}
		raw, sealed, err := ParseClientInfoPayload(p)
		if err != nil {
			errc <- err
			return
		}
		msg, ok := impostor.OpenFrom(key.NodePublicFromRaw32(raw), sealed)
		if !ok {
			errc <- errors.New("client info does not open")
			return
		}
		if bytes.Contains(msg, []byte(meshKey)) {
			errc <- errors.New("the client info carries the mesh key in the clear")
			return
		}
		var ci ClientInfo
		if err := json.Unmarshal(msg, &ci); err != nil {
			errc <- err
			return
		}
		got <- ci
	}()

	client := key.NewNode()
	_, err = Dial(t.Context(), "http://"+ln.Addr().String()+"/derp", client, ClientOptions{MeshKey: meshKey})
	if err == nil {
		t.Fatal("handshake with an impostor that never answers succeeded")
	}
	var ci ClientInfo
	select {
	case ci = <-got:
	case err := <-errc:
		t.Fatal(err)
	}
	if !bytes.Equal(ci.Challenge, challenge) {
		t.Errorf("client info challenge %q, want %q", ci.Challenge, challenge)
	}
	want := MeshProof(meshKey, challenge, impostor.Public().Raw32(), client.Public().Raw32())
	if !bytes.Equal(ci.MeshProof, want) {
		t.Fatalf("mesh proof %x, want %x", ci.MeshProof, want)
	}
	// The proof is bound to every input: it verifies nowhere else.
	other := key.NewMachine().Public().Raw32()
	for name, p := range map[string][]byte{
		"another server":    MeshProof(meshKey, challenge, other, client.Public().Raw32()),
		"another challenge": MeshProof(meshKey, []byte("fedcba9876543210"), impostor.Public().Raw32(), client.Public().Raw32()),
		"another client":    MeshProof(meshKey, challenge, impostor.Public().Raw32(), other),
		"another mesh key":  MeshProof("guess", challenge, impostor.Public().Raw32(), client.Public().Raw32()),
	} {
		if bytes.Equal(p, ci.MeshProof) {
			t.Errorf("proof for %s equals the client's", name)
		}
	}
}
