package coordclient

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// ErrKeyNotProven is returned by CheckMachineKey when the server at the
// URL did not show that it holds the machine key.
var ErrKeyNotProven = errors.New("coordclient: the server did not prove it holds the coordinator's machine key")

// CheckMachineKey asks the coordinator at baseURL to prove that it holds
// the private half of want (GET wire.PathKeyProof with a fresh node key
// and random challenge), and returns nil only if its answer is the
// proof. A nil hc means http.DefaultClient. The error wraps
// ErrUnreachable when the server cannot be reached, else
// ErrKeyNotProven.
func CheckMachineKey(ctx context.Context, hc *http.Client, baseURL string, want key.MachinePublic) error {
	if hc == nil {
		hc = http.DefaultClient
	}
	nk := key.NewNode()
	var c [32]byte
	rand.Read(c[:])
	pub, _ := nk.Public().MarshalText()
	u := strings.TrimRight(baseURL, "/") + wire.PathKeyProof + "?" + url.Values{
		"node":      {string(pub)},
		"challenge": {hex.EncodeToString(c[:])},
	}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("coordclient: key proof: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 2*key.ProofLen+1))
	if err != nil {
		return fmt.Errorf("%w: read answer: %w", ErrKeyNotProven, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w (GET %s: %s)", ErrKeyNotProven, wire.PathKeyProof, resp.Status)
	}
	got, err := hex.DecodeString(strings.TrimSpace(string(body)))
	p := nk.Shared(want).Proof(c[:])
	if err != nil || !hmac.Equal(got, p[:]) {
		return fmt.Errorf("%w (wrong proof for %s)", ErrKeyNotProven, want.ShortString())
	}
	return nil
}
