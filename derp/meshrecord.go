package derp

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A mesh connection (a relay dialing another with the region's mesh key)
// proves the mesh key both ways in its handshake, but the frames after it
// would otherwise travel as they are: on a plain-HTTP link anyone on the
// path could add a FrameForwardPacket in any node's name, or a
// FramePeerPresent or FramePeerGone that moves or removes the region's
// clients. So from protocol version 4, once the handshake is done, every
// byte of a mesh connection, either way, travels in sealed records:
//
//	4B big-endian length n of what follows | n bytes: AES-256-GCM ciphertext and 16B tag
//
// Each direction has its own key (MeshRecordKeys), made from the mesh
// key, the connection's challenge (the server's random choice), the
// client's MeshNonce (the client's random choice, from version 5) and
// both sides' keys, so no record is good on another connection or in the
// other direction, and each side's keys are fresh on every connection
// even if the other side's choice is a replay: a key never seals two
// records with the same nonce. The nonce is the
// count of records sent before in that direction (4 zero bytes, then 8B
// big-endian), so a record injected, changed, replayed, reordered or left
// out fails to open, and the connection ends (ErrMeshRecord). The
// plaintext of the records, concatenated, is the usual stream of frames.

// ErrMeshRecord is the error of a mesh connection whose peer sent a
// record that does not open with the connection's key: it was injected
// or changed on the way, or the sender does not know the mesh key.
var ErrMeshRecord = errors.New("derp: mesh record does not authenticate (injected or altered on the way)")

// MinMeshVersion is the lowest ProtocolVersion a mesh connection may use:
// the first whose record keys and server proof cover a fresh nonce of the
// dialing relay (4 sealed the frames, but with keys only the server's
// choices made fresh).
const MinMeshVersion = 5

// maxRecordPlain bounds the plaintext of one mesh record; a writer splits
// longer writes.
const maxRecordPlain = 64 << 10

const recordTagLen = 16

// MeshRecordKeys returns the keys of a mesh connection's records: c2s for
// what the client (the dialing relay) sends, s2c for what the server
// sends. Like ServerMeshProof, they are bound to the mesh key, the
// connection's challenge, the client's MeshNonce, the server's machine key
// and the client's node key.
func MeshRecordKeys(meshKey string, challenge, clientNonce []byte, server, client [32]byte) (c2s, s2c [32]byte) {
	c2s = [32]byte(meshMAC("beam derp mesh records client to server v2", meshKey, challenge, clientNonce, server, client))
	s2c = [32]byte(meshMAC("beam derp mesh records server to client v2", meshKey, challenge, clientNonce, server, client))
	return c2s, s2c
}

// MeshRecords returns the reader and writer of a mesh connection after
// its handshake: r is where the connection's bytes come from (a bufio
// reader that may hold bytes read ahead during the handshake), w where
// they go. asServer selects which of the keys is this side's.
//
// The reader's Read returns ErrMeshRecord for a record that does not open.
// The writer seals each Write (in records of at most 64 KiB) and writes
// each record to w in one call; it must not be used by two goroutines at
// once.
func MeshRecords(meshKey string, challenge, clientNonce []byte, server, client [32]byte, asServer bool, r io.Reader, w io.Writer) (io.Reader, io.Writer) {
	c2s, s2c := MeshRecordKeys(meshKey, challenge, clientNonce, server, client)
	in, out := s2c, c2s
	if asServer {
		in, out = c2s, s2c
	}
	return &recordReader{r: r, aead: newGCM(in)}, &recordWriter{w: w, aead: newGCM(out)}
}

func newGCM(k [32]byte) cipher.AEAD {
	b, err := aes.NewCipher(k[:])
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

func recordNonce(seq uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}

type recordReader struct {
	r     io.Reader
	aead  cipher.AEAD
	seq   uint64
	buf   []byte // ciphertext of the current record
	plain []byte // unread plaintext of the current record (aliases buf)
	err   error  // sticky
}

func (rr *recordReader) Read(p []byte) (int, error) {
	for len(rr.plain) == 0 {
		if rr.err != nil {
			return 0, rr.err
		}
		rr.err = rr.next()
	}
	n := copy(p, rr.plain)
	rr.plain = rr.plain[n:]
	return n, nil
}

// next reads and opens one record.
func (rr *recordReader) next() error {
	var hdr [4]byte
	if _, err := io.ReadFull(rr.r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < recordTagLen || n > maxRecordPlain+recordTagLen {
		return fmt.Errorf("%w: record of %d bytes", ErrMeshRecord, n)
	}
	if cap(rr.buf) < int(n) {
		rr.buf = make([]byte, maxRecordPlain+recordTagLen)
	}
	ct := rr.buf[:n]
	if _, err := io.ReadFull(rr.r, ct); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	pt, err := rr.aead.Open(ct[:0], recordNonce(rr.seq), ct, hdr[:])
	if err != nil {
		return fmt.Errorf("%w: record %d", ErrMeshRecord, rr.seq)
	}
	rr.seq++
	rr.plain = pt
	return nil
}

type recordWriter struct {
	w    io.Writer
	aead cipher.AEAD
	seq  uint64
	buf  []byte
}

func (rw *recordWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxRecordPlain)]
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(len(chunk)+recordTagLen))
		rw.buf = append(rw.buf[:0], hdr[:]...)
		rw.buf = rw.aead.Seal(rw.buf, recordNonce(rw.seq), chunk, hdr[:])
		rw.seq++
		if _, err := rw.w.Write(rw.buf); err != nil {
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}
