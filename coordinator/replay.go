package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sync"
	"time"

	"beam.dev/beam/wire"
)

// A sealed request may be sent once: every coordinator remembers the
// requests it saw within the clock-skew window (replayCache). Several
// coordinators on one store would each accept a captured request once,
// so there the store remembers them too (ReplayStore): the first
// coordinator to record a request wins, the others refuse it.
//
// The replayCache lives in memory, so a coordinator that restarts has
// forgotten the requests it took before; with one coordinator (SQLite)
// nothing else remembers them, and a request recorded on the path in
// the window before the restart (a logout, an expose) could be replayed
// once after it. Recording every request in the database would cost a
// write per request. Instead each start of a coordinator draws a random
// boot epoch (bootEpoch), given out with its key (GET wire.PathKey,
// wire.HeaderBootEpoch), and a node of wire.BootEpochVersion or later
// seals it into every request: the coordinator refuses a request sealed
// for another epoch (wire.CodeStaleEpoch, before it records or changes
// anything), so what a start took, only that start could take again,
// and its replayCache refuses that. coordclient then fetches the key
// and epoch again and sends the request anew. Each replica of a shared
// store has its own epoch, so a node moving to another replica goes
// through the same refusal and refetch once. A request bound to this
// start's epoch is therefore not recorded on the shared store either:
// no other coordinator, and no later start, takes it. Requests of older
// nodes carry no epoch and are checked as before (a restart on SQLite
// still forgets them).

// bootEpoch is the coordinator's boot epoch: random, drawn when the
// Server is made. It is immutable.
type bootEpoch struct {
	b    [wire.BootEpochLen]byte
	text string // hex, the value of wire.HeaderBootEpoch
}

func newBootEpoch() bootEpoch {
	var e bootEpoch
	rand.Read(e.b[:])
	e.text = hex.EncodeToString(e.b[:])
	return e
}

// epochSealer is a sealed request that carries its protocol version and
// the boot epoch it was sealed for; every request type of the sealed
// endpoints is one.
type epochSealer interface{ SealedEpoch() (int, []byte) }

var (
	_ epochSealer = (*wire.RegisterRequest)(nil)
	_ epochSealer = (*wire.MapRequest)(nil)
	_ epochSealer = (*wire.ExposeRequest)(nil)
	_ epochSealer = (*wire.TXTRequest)(nil)
)

// check checks the epoch of the opened request v against e. It reports
// whether v is bound to e (it carries e); it refuses v with
// wire.CodeStaleEpoch if it carries another epoch, or none while of
// wire.BootEpochVersion or later. A request of an older version without
// an epoch passes unbound.
func (e *bootEpoch) check(v any) (bool, *apiError) {
	es, ok := v.(epochSealer)
	if !ok {
		return false, nil
	}
	version, got := es.SealedEpoch()
	if len(got) == 0 && version < wire.BootEpochVersion {
		return false, nil
	}
	if !bytes.Equal(got, e.b[:]) {
		return false, errorf(http.StatusUnauthorized, wire.CodeStaleEpoch, "request sealed for another start of this coordinator, or for another coordinator: fetch %s again and resend", wire.PathKey)
	}
	return true, nil
}

// ReplayStore is what a store shared by several coordinators adds for
// sealed requests. The coordinator finds it on Options.Store by type
// assertion and uses it when the store is shared (NodeFeed.SharedNodes);
// sqlstore's Store implements it.
type ReplayStore interface {
	// SeeRequest records the request whose SHA-256 is h as seen until
	// until, and reports whether it was new: not recorded, or recorded
	// until before now.
	SeeRequest(ctx context.Context, h [32]byte, now, until time.Time) (fresh bool, err error)
	// ForgetRequests deletes the requests recorded until before now.
	ForgetRequests(ctx context.Context, now time.Time) error
}

// sharedReplayTimeout bounds the store's check of one request.
const sharedReplayTimeout = 2 * time.Second

// sharedReplaySweep is how often a coordinator deletes stale records.
const sharedReplaySweep = 30 * time.Second

// sharedReplay checks sealed requests against the store. Its zero value
// (store nil) admits every request: the coordinator is the store's only
// user and its replayCache is enough.
type sharedReplay struct {
	core  *Server
	store ReplayStore // nil: not shared

	mu        sync.Mutex // guards the following fields
	lastSweep time.Time
	warned    time.Time
}

func newSharedReplay(core *Server, store Store) *sharedReplay {
	sr := &sharedReplay{core: core}
	if rs, ok := store.(ReplayStore); ok && core.fan.feed != nil {
		sr.store = rs
	}
	return sr
}

// add records the request h, seen at now, in the store and reports
// whether no coordinator saw it before. If the store cannot tell (it is
// unreachable), the request is admitted on this coordinator's own check:
// refusing would stop every node from reaching any coordinator while the
// database is away, for a replay that the window bounds anyway.
func (sr *sharedReplay) add(ctx context.Context, h [32]byte, now time.Time) bool {
	if sr.store == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedReplayTimeout)
	defer cancel()
	fresh, err := sr.store.SeeRequest(ctx, h, now, now.Add(2*MaxClockSkew))
	if err != nil {
		sr.mu.Lock()
		warn := now.Sub(sr.warned) >= time.Minute
		if warn {
			sr.warned = now
		}
		sr.mu.Unlock()
		if warn {
			sr.core.logger.Warn("record a sealed request in the store; checked on this coordinator only", "err", err)
		}
		return true
	}
	return fresh
}

// prune deletes stale records every sharedReplaySweep (janitor).
func (sr *sharedReplay) prune(ctx context.Context, now time.Time) {
	if sr.store == nil {
		return
	}
	sr.mu.Lock()
	due := now.Sub(sr.lastSweep) >= sharedReplaySweep
	if due {
		sr.lastSweep = now
	}
	sr.mu.Unlock()
	if !due {
		return
	}
	if err := sr.store.ForgetRequests(ctx, now); err != nil && ctx.Err() == nil {
		sr.core.logger.Warn("delete stale sealed-request records", "err", err)
	}
}
