package derp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
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

// TestMeshClientRequiresServerProof has a server finish the handshake (an
// impostor can: it holds its own machine key) and checks that a meshing
// client refuses every server info that does not prove the mesh key:
// none, the client's own proof reflected back, and a proof under another
// key. The same server with the right proof is accepted, so the refusals
// are about the proof and nothing else.
func TestMeshClientRequiresServerProof(t *testing.T) {
	const meshKey = "region-secret-mesh-key"
	for _, tc := range []struct {
		name   string
		answer func(ci ClientInfo, server, client [32]byte) []byte
		ok     bool
	}{
		{"no proof", func(ClientInfo, [32]byte, [32]byte) []byte { return nil }, false},
		{"reflected proof", func(ci ClientInfo, _, _ [32]byte) []byte { return ci.MeshProof }, false},
		{"wrong mesh key", func(ci ClientInfo, server, client [32]byte) []byte {
			return ServerMeshProof("guess", ci.Challenge, ci.MeshNonce, server, client)
		}, false},
		// A proof that does not cover this connection's nonce: what a
		// server handshake recorded from another connection carries.
		{"another connection's nonce", func(ci ClientInfo, server, client [32]byte) []byte {
			return ServerMeshProof(meshKey, ci.Challenge, make([]byte, MeshNonceLen), server, client)
		}, false},
		{"version 4 proof (no nonce)", func(ci ClientInfo, server, client [32]byte) []byte {
			return meshMAC("beam derp mesh server v1", meshKey, ci.Challenge, nil, server, client)
		}, false},
		{"right proof", func(ci ClientInfo, server, client [32]byte) []byte {
			return ServerMeshProof(meshKey, ci.Challenge, ci.MeshNonce, server, client)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := key.NewMachine()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			errc := make(chan error, 1)
			go func() {
				errc <- serveOneHandshake(ln, srv, func(ci ClientInfo, client [32]byte) ServerInfo {
					return ServerInfo{Version: ProtocolVersion, MeshProof: tc.answer(ci, srv.Public().Raw32(), client)}
				})
			}()
			c, err := Dial(t.Context(), "http://"+ln.Addr().String()+"/derp", key.NewNode(), ClientOptions{MeshKey: meshKey})
			switch {
			case tc.ok && err != nil:
				t.Fatalf("Dial with a valid server proof: %v", err)
			case tc.ok:
				c.Close()
			case !errors.Is(err, ErrMeshUnproven):
				t.Fatalf("Dial = %v, want ErrMeshUnproven", err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// serveOneHandshake accepts one relay connection on ln and answers its
// handshake as server key srv, with the server info info returns.
func serveOneHandshake(ln net.Listener, srv key.MachinePrivate, info func(ci ClientInfo, client [32]byte) ServerInfo) error {
	return serveOneHandshakeTo(ln, srv, info, io.Discard)
}

// serveOneHandshakeTo is serveOneHandshake, copying what the client sends
// after the handshake to rest.
func serveOneHandshakeTo(ln net.Listener, srv key.MachinePrivate, info func(ci ClientInfo, client [32]byte) ServerInfo, rest io.Writer) error {
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(nc)
	if _, err := http.ReadRequest(br); err != nil {
		return err
	}
	nc.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"))
	bw := bufio.NewWriter(nc)
	pub := srv.Public().Raw32()
	WriteFrame(bw, FrameServerKey, []byte(Magic), pub[:], []byte("0123456789abcdef"))
	bw.Flush()
	ft, p, err := ReadFrame(br, MaxFrameSize, nil)
	if err != nil || ft != FrameClientInfo {
		return errors.Join(err, errors.New("no client info"))
	}
	raw, sealed, err := ParseClientInfoPayload(p)
	if err != nil {
		return err
	}
	clientKey := key.NodePublicFromRaw32(raw)
	msg, ok := srv.OpenFrom(clientKey, sealed)
	if !ok {
		return errors.New("client info does not open")
	}
	var ci ClientInfo
	if err := json.Unmarshal(msg, &ci); err != nil {
		return err
	}
	si, err := json.Marshal(info(ci, raw))
	if err != nil {
		return err
	}
	if err := WriteFrame(bw, FrameServerInfo, srv.SealTo(clientKey, si)); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	// Wait for the client to hang up so it reads the whole answer.
	io.Copy(rest, br)
	return nil
}

// TestMeshKeysFreshOnRepeatedChallenge has a relay that knows the mesh
// key answer two connections of one meshing client (one node key, as a
// relay keeps for its process life) with the same server key and the
// same challenge, as a replayed server handshake would. The client's
// nonce still makes each connection's keys its own: the same frame, the
// first record on each, seals to other bytes, and each opens only under
// its own connection's keys.
func TestMeshKeysFreshOnRepeatedChallenge(t *testing.T) {
	const meshKey = "region-secret-mesh-key"
	srv := key.NewMachine()
	client := key.NewNode()
	var nonces [][]byte
	var firsts [][]byte
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var rest bytes.Buffer
		gotCI := make(chan ClientInfo, 1)
		errc := make(chan error, 1)
		go func() {
			errc <- serveOneHandshakeTo(ln, srv, func(ci ClientInfo, client [32]byte) ServerInfo {
				gotCI <- ci
				return ServerInfo{Version: ProtocolVersion, MeshProof: ServerMeshProof(meshKey, ci.Challenge, ci.MeshNonce, srv.Public().Raw32(), client)}
			}, &rest)
		}()
		c, err := Dial(t.Context(), "http://"+ln.Addr().String()+"/derp", client, ClientOptions{MeshKey: meshKey})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WatchConns(); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		ci := <-gotCI
		if len(ci.MeshNonce) != MeshNonceLen {
			t.Fatalf("client info mesh nonce of %d bytes, want %d", len(ci.MeshNonce), MeshNonceLen)
		}
		b := rest.Bytes()
		if len(b) < 4 || len(b) < 4+int(binary.BigEndian.Uint32(b)) {
			t.Fatalf("client sent %d bytes after the handshake, want a record", len(b))
		}
		first := b[:4+binary.BigEndian.Uint32(b)]
		// The server of this connection opens it to the watch frame.
		rr, _ := MeshRecords(meshKey, ci.Challenge, ci.MeshNonce, srv.Public().Raw32(), client.Public().Raw32(), true, bytes.NewReader(first), io.Discard)
		if got, err := io.ReadAll(rr); err != nil || !bytes.Equal(got, frameBytes(FrameWatchConns, nil)) {
			t.Fatalf("first record opens to %x, %v; want the watch frame", got, err)
		}
		nonces = append(nonces, ci.MeshNonce)
		firsts = append(firsts, bytes.Clone(first))
	}
	if bytes.Equal(nonces[0], nonces[1]) {
		t.Fatal("two connections sent the same mesh nonce")
	}
	if bytes.Equal(firsts[0], firsts[1]) {
		t.Fatal("the same frame sealed to the same bytes on two connections with the same challenge: key and nonce reused")
	}
	// Each connection's record opens only under its own keys.
	rr, _ := MeshRecords(meshKey, []byte("0123456789abcdef"), nonces[1], srv.Public().Raw32(), client.Public().Raw32(), true, bytes.NewReader(firsts[0]), io.Discard)
	if _, err := io.ReadAll(rr); !errors.Is(err, ErrMeshRecord) {
		t.Fatalf("first connection's record under the second's keys: %v, want ErrMeshRecord", err)
	}
}

// TestPinnedServerKey dials a server with a pinned key: the right key
// completes the handshake; another is refused with ErrServerKey, and the
// server reads nothing from the client (no client info, no mesh proof).
func TestPinnedServerKey(t *testing.T) {
	const meshKey = "region-secret-mesh-key"
	srv := key.NewMachine()
	for _, tc := range []struct {
		name   string
		pinned key.MachinePublic
		ok     bool
	}{
		{"right key", srv.Public(), true},
		{"another key", key.NewMachine().Public(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			errc := make(chan error, 1)
			go func() {
				errc <- serveOneHandshake(ln, srv, func(ci ClientInfo, client [32]byte) ServerInfo {
					return ServerInfo{Version: ProtocolVersion, MeshProof: ServerMeshProof(meshKey, ci.Challenge, ci.MeshNonce, srv.Public().Raw32(), client)}
				})
			}()
			c, err := Dial(t.Context(), "http://"+ln.Addr().String()+"/derp", key.NewNode(), ClientOptions{MeshKey: meshKey, ServerKey: tc.pinned})
			if tc.ok {
				if err != nil {
					t.Fatalf("Dial with the server's key pinned: %v", err)
				}
				c.Close()
				if serverErr := <-errc; serverErr != nil {
					t.Fatal(serverErr)
				}
				return
			}
			if !errors.Is(err, ErrServerKey) {
				t.Fatalf("Dial = %v, want ErrServerKey", err)
			}
			if serverErr := <-errc; !errors.Is(serverErr, io.EOF) {
				t.Fatalf("server side = %v, want EOF before any client info", serverErr)
			}
		})
	}
}

// TestMeshClientRefusesOldServer has a relay that proves the mesh key as
// an older version did but speaks protocol version 3 (which sends mesh
// frames after the handshake as they are) or 4 (whose record keys only
// the server makes fresh): the meshing client refuses it and says why.
func TestMeshClientRefusesOldServer(t *testing.T) {
	const meshKey = "region-secret-mesh-key"
	for _, version := range []int{3, 4} {
		t.Run(fmt.Sprint("version ", version), func(t *testing.T) {
			srv := key.NewMachine()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			errc := make(chan error, 1)
			go func() {
				errc <- serveOneHandshake(ln, srv, func(ci ClientInfo, client [32]byte) ServerInfo {
					return ServerInfo{Version: version, MeshProof: meshMAC("beam derp mesh server v1", meshKey, ci.Challenge, nil, srv.Public().Raw32(), client)}
				})
			}()
			_, err = Dial(t.Context(), "http://"+ln.Addr().String()+"/derp", key.NewNode(), ClientOptions{MeshKey: meshKey})
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "upgrade") || !strings.Contains(err.Error(), fmt.Sprint("version ", version)) {
				t.Fatalf("Dial = %v, want ErrRefused naming version %d and saying to upgrade", err, version)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}
