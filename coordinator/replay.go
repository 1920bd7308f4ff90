package coordinator

import (
	"context"
	"sync"
	"time"
)

// A sealed request may be sent once: every coordinator remembers the
// requests it saw within the clock-skew window (replayCache). Several
// coordinators on one store would each accept a captured request once,
// so there the store remembers them too (ReplayStore): the first
// coordinator to record a request wins, the others refuse it.

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
