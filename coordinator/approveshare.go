package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"beam.dev/beam/wire"
)

// Registrations waiting for approval on a store shared by several
// coordinators. Each coordinator keeps them all in memory (pendingRegs)
// and the store keeps them too (ApprovalStore), so that a person may
// approve on any coordinator the code a node got from another, and a
// node's followup may wait on any of them. Writes notify the others
// (ChangePending), which re-read the registration: a new one is added, an
// approval releases the followup waiting there, a deleted one is dropped.
// The coordinator that releases a followup makes the one-off auth key the
// node registers with, so no secret goes through the store.

// PendingRecord is a registration waiting for approval, as a shared
// store keeps it.
type PendingRecord struct {
	wire.PendingRegistration
	// Source is the registering client's address, grouped by sourceKey.
	Source netip.Addr
	// Approval is set once the registration was approved.
	Approval *Approval
}

// ApprovalStore keeps the registrations waiting for approval for the
// coordinators sharing a store. sqlstore's Store implements it on
// PostgreSQL.
type ApprovalStore interface {
	// AddPending inserts p, unless a registration of p.NodeKey is kept
	// already; it returns the one kept.
	AddPending(ctx context.Context, p *PendingRecord) (*PendingRecord, error)
	// PendingByCode returns the registration with code, or ErrNotFound.
	PendingByCode(ctx context.Context, code string) (*PendingRecord, error)
	// Pendings lists every registration kept.
	Pendings(ctx context.Context) ([]*PendingRecord, error)
	// ApprovePending records a's approval of the registration with
	// code: ErrNotFound if there is none, ErrConflict if it was approved.
	ApprovePending(ctx context.Context, code string, a Approval) error
	// DeletePendings deletes the registrations with the given codes and
	// those expired at now (if not zero).
	DeletePendings(ctx context.Context, codes []string, now time.Time) error
}

// sharedPendingSweep is how often a coordinator deletes expired
// registrations from the store.
const sharedPendingSweep = 30 * time.Second

// sharePending records p, which addPendingMem made (or found, if not
// made), in the store, and deletes those dropped to make room. If the
// store keeps another registration of p's node, made through another
// coordinator a moment ago, that one replaces p.
func (rg *registry) sharePending(ctx context.Context, p *pendingReg, made bool, dropped []*pendingReg) (*pendingReg, *apiError) {
	s := rg.core
	ctx = context.WithoutCancel(ctx)
	if len(dropped) > 0 {
		codes := make([]string, len(dropped))
		for i, d := range dropped {
			codes[i] = d.Code
		}
		if err := rg.shared.DeletePendings(ctx, codes, time.Time{}); err != nil {
			s.logger.Warn("delete dropped registrations from the store", "err", err)
		}
	}
	if !made {
		return p, nil
	}
	kept, err := rg.shared.AddPending(ctx, &PendingRecord{PendingRegistration: p.PendingRegistration, Source: p.source})
	if err != nil {
		rg.pending.remove(p)
		s.logger.Error("store pending registration", "err", err)
		return nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
	}
	if kept.Code == p.Code {
		return p, nil
	}
	rg.pending.remove(p)
	if q := rg.pending.apply(kept, s.now()); q != nil {
		return q, nil
	}
	// The one kept expired a moment ago: the node asks again.
	return nil, errorf(http.StatusServiceUnavailable, wire.CodeUnavailable, "a registration of this node expired just now; try again")
}

// shareApproval records a's approval of p in the store, if shared.
func (rg *registry) shareApproval(ctx context.Context, p *pendingReg, a Approval) error {
	if rg.shared == nil {
		return nil
	}
	if err := rg.shared.ApprovePending(ctx, p.Code, a); err != nil {
		switch {
		case errors.Is(err, ErrConflict):
			return fmt.Errorf("%w: code %s was approved already", ErrConflict, p.Code)
		case errors.Is(err, ErrNotFound):
			return fmt.Errorf("%w: no node is waiting with code %q any more", ErrNotFound, p.Code)
		}
		return fmt.Errorf("coordinator: store approval: %w", err)
	}
	return nil
}

// unsharePending deletes p, whose node registered, from the store.
func (rg *registry) unsharePending(ctx context.Context, p *pendingReg) {
	if rg.shared == nil {
		return
	}
	if err := rg.shared.DeletePendings(ctx, []string{p.Code}, time.Time{}); err != nil {
		rg.core.logger.Warn("delete registration from the store", "code", p.Code, "err", err)
	}
}

// sweepSharedPending deletes expired registrations from the store every
// sharedPendingSweep.
func (rg *registry) sweepSharedPending(ctx context.Context, now time.Time) {
	if rg.shared == nil {
		return
	}
	pr := &rg.pending
	pr.mu.Lock()
	due := now.Sub(rg.lastSweep) >= sharedPendingSweep
	if due {
		rg.lastSweep = now
	}
	pr.mu.Unlock()
	if !due {
		return
	}
	if err := rg.shared.DeletePendings(ctx, nil, now); err != nil && ctx.Err() == nil {
		rg.core.logger.Warn("delete expired registrations from the store", "err", err)
	}
}

// lookupShared returns the unexpired registration with code, reading it
// from a shared store if memory does not have it (its notification on
// the way); nil if there is none.
func (rg *registry) lookupShared(ctx context.Context, code string) *pendingReg {
	now := rg.core.now()
	if p := rg.pending.lookup(code, now); p != nil || rg.shared == nil {
		return p
	}
	if err := rg.reloadPending(ctx, normalizeCode(code)); err != nil {
		rg.core.logger.Warn("read pending registration", "err", err)
	}
	return rg.pending.lookup(code, now)
}

// reloadPending re-reads the registration with code, which another
// coordinator wrote, and applies it to memory.
func (rg *registry) reloadPending(ctx context.Context, code string) error {
	if rg.shared == nil {
		return nil
	}
	rec, err := rg.shared.PendingByCode(ctx, code)
	switch {
	case errors.Is(err, ErrNotFound):
		rg.pending.forget(code)
		return nil
	case err != nil:
		return fmt.Errorf("coordinator: read pending registration: %w", err)
	}
	rg.pending.apply(rec, rg.core.now())
	return nil
}

// reloadPendings re-reads every registration from the store, after the
// listener for other coordinators' changes (re)connected.
func (rg *registry) reloadPendings(ctx context.Context) error {
	if rg.shared == nil {
		return nil
	}
	recs, err := rg.shared.Pendings(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: reload pending registrations: %w", err)
	}
	now := rg.core.now()
	kept := make(map[string]bool, len(recs))
	for _, rec := range recs {
		kept[rec.Code] = true
		rg.pending.apply(rec, now)
	}
	pr := &rg.pending
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for code, p := range pr.byCode {
		if !kept[code] {
			pr.dropLocked(p)
		}
	}
	return nil
}

// apply brings the registration rec, as the store holds it, into memory
// and returns it: a new one is added, an approval releases its followup.
// An expired one is not added.
func (pr *pendingRegs) apply(rec *PendingRecord, now time.Time) *pendingReg {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	p := pr.byCode[rec.Code]
	if p == nil {
		if !now.Before(rec.Expires) {
			return nil
		}
		if old := pr.byKey[rec.NodeKey]; old != nil {
			pr.dropLocked(old) // the store keeps one per node: rec replaced it
		}
		p = &pendingReg{PendingRegistration: rec.PendingRegistration, source: rec.Source, done: make(chan struct{})}
		pr.byCode[p.Code] = p
		pr.byKey[p.NodeKey] = p
		pr.bySource[p.source]++
	}
	if rec.Approval != nil && !p.approved() {
		p.approval = *rec.Approval
		close(p.done)
	}
	return p
}

// forget drops the registration with code, which the store no longer
// keeps.
func (pr *pendingRegs) forget(code string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if p := pr.byCode[code]; p != nil {
		pr.dropLocked(p)
	}
}
