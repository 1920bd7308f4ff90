package derp

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestMeshRecords writes frames through one side's records and reads
// them on the other, then changes the bytes on the way as an attacker on
// the path would: each change fails with ErrMeshRecord, never with
// frames.
func TestMeshRecords(t *testing.T) {
	const meshKey = "region-secret-mesh-key"
	challenge := []byte("0123456789abcdef")
	nonce := bytes.Repeat([]byte{9}, MeshNonceLen)
	server, client := [32]byte{1}, [32]byte{2}
	// sealed returns what the client sends for msgs, record by record.
	sealed := func(msgs ...[]byte) [][]byte {
		var w recordsTo
		_, rw := MeshRecords(meshKey, challenge, nonce, server, client, false, nil, &w)
		for _, m := range msgs {
			if _, err := rw.Write(m); err != nil {
				t.Fatal(err)
			}
		}
		return w.recs
	}
	readNonce := func(asServer bool, key string, nonce []byte, recs ...[]byte) ([]byte, error) {
		rr, _ := MeshRecords(key, challenge, nonce, server, client, asServer, bytes.NewReader(bytes.Join(recs, nil)), io.Discard)
		return io.ReadAll(rr)
	}
	read := func(asServer bool, key string, recs ...[]byte) ([]byte, error) {
		return readNonce(asServer, key, nonce, recs...)
	}

	big := bytes.Repeat([]byte{7}, maxRecordPlain+100)
	recs := sealed([]byte("frame one"), []byte("frame two"), big)
	if len(recs) != 4 {
		t.Fatalf("got %d records, want 4 (the big write split in two)", len(recs))
	}
	got, err := read(true, meshKey, recs...)
	if err != nil {
		t.Fatalf("read untouched records: %v", err)
	}
	if want := append([]byte("frame oneframe two"), big...); !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(want))
	}
	if bytes.Contains(bytes.Join(recs, nil), []byte("frame one")) {
		t.Error("records carry the plaintext")
	}

	// Records of a connection with another client nonce (the same
	// challenge, as a replayed server handshake would give) do not open.
	if _, err := readNonce(true, meshKey, make([]byte, MeshNonceLen), recs[0]); !errors.Is(err, ErrMeshRecord) {
		t.Errorf("record read under another client nonce: %v, want ErrMeshRecord", err)
	}

	flipped := bytes.Clone(recs[1])
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name     string
		asServer bool
		key      string
		recs     [][]byte
	}{
		{"frame injected in the clear", true, meshKey, [][]byte{recs[0], frameBytes(FrameForwardPacket, make([]byte, 70))}},
		{"record changed", true, meshKey, [][]byte{recs[0], flipped}},
		{"record replayed", true, meshKey, [][]byte{recs[0], recs[0]}},
		{"records reordered", true, meshKey, [][]byte{recs[1], recs[0]}},
		{"record left out", true, meshKey, [][]byte{recs[0], recs[2]}},
		{"reflected to its sender", false, meshKey, recs[:1]},
		{"another mesh key", true, "guess", recs[:1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := read(tc.asServer, tc.key, tc.recs...)
			if !errors.Is(err, ErrMeshRecord) {
				t.Fatalf("read = %v, want ErrMeshRecord", err)
			}
		})
	}
}

// recordsTo keeps each Write as one record.
type recordsTo struct{ recs [][]byte }

func (w *recordsTo) Write(p []byte) (int, error) {
	w.recs = append(w.recs, bytes.Clone(p))
	return len(p), nil
}

// BenchmarkMeshRecords measures sealing and opening a mesh link's bytes,
// in writes of one forwarded 1,280-byte packet frame each, against the
// same frames through the same buffer unsealed.
func BenchmarkMeshRecords(b *testing.B) {
	challenge := []byte("0123456789abcdef")
	nonce := make([]byte, MeshNonceLen)
	frame := frameBytes(FrameForwardPacket, make([]byte, 64+1280))
	for _, sealed := range []bool{false, true} {
		name := "plain"
		if sealed {
			name = "sealed"
		}
		b.Run(name, func(b *testing.B) {
			var link bytes.Buffer
			var r io.Reader = &link
			var w io.Writer = &link
			if sealed {
				r, _ = MeshRecords("k", challenge, nonce, [32]byte{1}, [32]byte{2}, true, &link, io.Discard)
				_, w = MeshRecords("k", challenge, nonce, [32]byte{1}, [32]byte{2}, false, nil, &link)
			}
			buf := make([]byte, len(frame))
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				if _, err := w.Write(frame); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(r, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
