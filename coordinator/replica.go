package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
)

// Replicas: coordinators sharing a store serve one network as one
// coordinator, so they hold the same secrets: the machine key (nodes seal
// every request to it, and move between replicas), the admin token (its
// hash is shared) and the relay token (relays verify nodes with whichever
// replica answers). The secrets stay in each coordinator's options (beam
// coordinator's data directory); they are never written to the store, so
// that a leaked database backup gives away neither the admin API nor the
// coordinator's identity. The store keeps the machine key's public half and
// the tokens' hashes; a coordinator that starts while another one with
// different secrets beats refuses to start, naming what differs. With no
// other coordinator running, the starting one's secrets replace the
// stored ones (a rotation).

// Settings of the replicas' shared secrets (public half, hashes).
const (
	machineKeySetting = "machine_key"
	relayTokenSetting = "relay_token_sha256"
)

// ReplicaMismatchError is returned by New when another coordinator on the
// shared store runs with other secrets.
type ReplicaMismatchError struct {
	// Differ names what differs: "machine key", "admin token", "relay token".
	Differ []string
	// MachineKey is the running coordinators' machine public key.
	MachineKey string
}

func (e *ReplicaMismatchError) Error() string {
	theirs := ""
	if e.MachineKey != "" {
		theirs = " (its machine key is " + e.MachineKey + ")"
	}
	return fmt.Sprintf("coordinator: another coordinator runs on this database with a different %s%s: "+
		"replicas must share their secrets: copy coordinator.key, admin.token and relay.token from a running coordinator's data directory into this one's, then start it again",
		strings.Join(e.Differ, ", "), theirs)
}

// checkReplica compares opts' secrets with those of the coordinators that
// beat on the shared store, and records them unless they differ, in one
// claim: of two coordinators with different secrets starting at once, one
// is refused. A no-op without a shared store.
func (f *fanout) checkReplica(ctx context.Context, opts Options) error {
	if f.feed == nil {
		return nil
	}
	type secret struct {
		name, setting string
		mine          []byte
	}
	mk, _ := opts.PrivateKey.Public().MarshalText()
	secrets := []secret{{"machine key", machineKeySetting, mk}}
	if opts.AdminToken != "" {
		h := sha256.Sum256([]byte(opts.AdminToken))
		secrets = append(secrets, secret{"admin token", adminTokenSetting, h[:]})
	}
	if opts.RelayToken != "" {
		h := sha256.Sum256([]byte(opts.RelayToken))
		secrets = append(secrets, secret{"relay token", relayTokenSetting, h[:]})
	}
	mine := make(map[string][]byte, len(secrets))
	for _, s := range secrets {
		mine[s.setting] = s.mine
	}
	stored, ok, err := f.feed.ClaimSecrets(ctx, mine)
	if err != nil {
		return fmt.Errorf("coordinator: claim the replicas' secrets: %w", err)
	}
	if ok {
		return nil
	}
	mismatch := &ReplicaMismatchError{MachineKey: string(stored[machineKeySetting])}
	for _, s := range secrets {
		if v, found := stored[s.setting]; found && !bytes.Equal(v, s.mine) {
			mismatch.Differ = append(mismatch.Differ, s.name)
		}
	}
	return mismatch
}
