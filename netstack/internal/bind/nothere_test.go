package bind

import (
	"encoding/binary"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// TestPeerNotHere: when the relay reports that the peer an unanswered
// initiation went to is not connected to it, the initiation goes through
// the relay again notHereRetry later; an answered one does not.
func TestPeerNotHere(t *testing.T) {
	fr := &fakeRelay{}
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: fr})
	if err != nil {
		t.Fatal(err)
	}
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey, HomeRegion: 1}})
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	init := make([]byte, initiationSize)
	binary.LittleEndian.PutUint32(init, msgInitiation)
	ep, err := b.ParseEndpoint(peerKey.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send([][]byte{init}, ep); err != nil {
		t.Fatal(err)
	}
	inits := func() int {
		n := 0
		for _, s := range fr.take() {
			if s.dst == peerKey && s.n == initiationSize {
				n++
			}
		}
		return n
	}
	if got := inits(); got != 1 {
		t.Fatalf("initiations through the relay: %d, want 1", got)
	}
	start := time.Now()
	b.PeerNotHere(peerKey)
	deadline := start.Add(5 * time.Second)
	for inits() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the initiation was not sent again after the relay said the peer is not there")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if took := time.Since(start); took < notHereRetry {
		t.Errorf("sent again after %v, want at least %v", took, notHereRetry)
	}

	// Answered (a response naming the initiation's sender index, 0):
	// nothing more.
	b.DeliverRelayed(1, peerKey, handshakeMsg(msgResponse, 5, 0))
	b.PeerNotHere(peerKey)
	time.Sleep(2 * notHereRetry)
	if got := inits(); got != 0 {
		t.Errorf("an answered initiation was sent again %d times", got)
	}
}
