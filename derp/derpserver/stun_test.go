package derpserver_test

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"beam.dev/beam/derp"
	"beam.dev/beam/derp/derpserver"
)

// startSTUN serves STUN on a loopback UDP socket until the test ends.
func startSTUN(t *testing.T) net.Addr {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ctx := t.Context()
	wg.Go(func() {
		if err := derpserver.ServeSTUN(ctx, pc, nil); err != nil {
			t.Errorf("ServeSTUN: %v", err)
		}
	})
	t.Cleanup(func() {
		wg.Wait()
		pc.Close()
	})
	return pc.LocalAddr()
}

func TestSTUNWithPionClient(t *testing.T) {
	addr := startSTUN(t)
	conn, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := stun.NewClient(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got stun.XORMappedAddress
	var evErr error
	err = c.Do(stun.MustBuild(stun.TransactionID, stun.BindingRequest), func(e stun.Event) {
		if e.Error != nil {
			evErr = e.Error
			return
		}
		evErr = got.GetFrom(e.Message)
	})
	if err != nil || evErr != nil {
		t.Fatalf("binding request: %v / %v", err, evErr)
	}
	want := conn.LocalAddr().(*net.UDPAddr)
	if !got.IP.Equal(want.IP) || got.Port != want.Port {
		t.Fatalf("mapped address %v, want %v", got, want)
	}
}

func TestSTUNIgnoresGarbage(t *testing.T) {
	addr := startSTUN(t)
	conn, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	tx0, _ := derp.STUNBindingRequest()
	success := derp.STUNBindingResponse(tx0, netip.MustParseAddrPort("192.0.2.1:1"))
	corrupt := bytes.Clone(success)
	corrupt[0] = 0x00 // request type, but the fingerprint no longer matches
	corrupt[1] = 0x01
	for _, junk := range [][]byte{
		[]byte("not stun at all"),
		make([]byte, 20),
		success, // a response, not a request
		corrupt,
		{0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, // attributes promised, missing
	} {
		if _, err := conn.Write(junk); err != nil {
			t.Fatal(err)
		}
	}
	txID, req := derp.STUNBindingRequest()
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	gotTx, mapped, err := derp.ParseSTUNResponse(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	// The first answer is for the real request: the garbage got none.
	if gotTx != txID {
		t.Fatalf("first response has transaction %x, want %x", gotTx, txID)
	}
	if want := conn.LocalAddr().(*net.UDPAddr).AddrPort(); mapped != want {
		t.Fatalf("mapped %v, want %v", mapped, want)
	}
}
