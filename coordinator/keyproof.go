package coordinator

import (
	"encoding/hex"
	"io"
	"net/http"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Challenge lengths GET wire.PathKeyProof takes, in bytes.
const (
	minProofChallenge = 16
	maxProofChallenge = 64
)

// handleKeyProof answers GET wire.PathKeyProof: the proof that this
// coordinator holds its machine key (key.Shared.Proof of the challenge
// with the key it shares with the given node key). It proves the key
// and nothing else: it changes no state, and the proof opens or forges
// no box (see key.Shared.Proof).
func (s *Server) handleKeyProof(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	q := r.URL.Query()
	nk, err := key.ParseNodePublic(q.Get("node"))
	if err != nil || nk.IsZero() {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "node: want a node public key"))
		return
	}
	c, err := hex.DecodeString(q.Get("challenge"))
	if err != nil || len(c) < minProofChallenge || len(c) > maxProofChallenge {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "challenge: want %d to %d bytes in hex", minProofChallenge, maxProofChallenge))
		return
	}
	p := s.priv.Shared(nk).Proof(c)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, hex.EncodeToString(p[:]))
}
