package coordinator

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Interactive join. A RegisterRequest without an auth key from an unknown
// node key (outside dev mode) is answered with an AuthCode and an AuthURL
// (/register/CODE) instead of a refusal. The node re-sends the request
// with Followup set to the code; the coordinator holds each such request
// up to followupWait and answers either with the registered node (once
// approved) or with the code again. A person approves with
// `beam admin nodes approve CODE` (POST /api/v1/registrations/{code}/approve);
// an Approver can offer another way at the AuthURL.
//
// Admin API (bearer token):
//
//	GET  /api/v1/registrations                 -> []wire.PendingRegistration
//	POST /api/v1/registrations/{code}/approve  wire.ApproveRequest -> 204

const (
	// approvalTTL is how long an approval code stays valid.
	approvalTTL = 10 * time.Minute
	// followupWait is how long a followup request is held waiting for approval.
	followupWait = 60 * time.Second
	// maxPending bounds the registrations waiting for approval.
	maxPending = 1024
	// maxPendingPerSource bounds those of one source address (IPv6: one
	// /64). A source over it loses its oldest waiting registration, and
	// a full queue loses the oldest of the source with the most: a flood
	// from a few places churns its own registrations and never locks out
	// a person's.
	maxPendingPerSource = 8
	// codeAlphabet has no 0/O, 1/I/L: codes are read aloud and typed.
	codeAlphabet = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
	codeLen      = 8
)

// Approval says how to admit a pending node: as a node of User, or
// carrying Tags (which the policy's tagOwners must list), or neither.
type Approval struct {
	User string
	Tags []string
	// Actor names who approved, for the audit log; empty means "admin".
	Actor string
	// NodeKeyExpiry is how long the node's key stays valid, as
	// AuthKeyOptions.NodeKeyExpiry (a login's lifetime); zero means the
	// default.
	NodeKeyExpiry time.Duration
}

// Approver shows a person how to approve a pending node. A node's AuthURL
// points at /register/CODE; the Server answers it by calling
// ServeApproval with the pending registration (unknown or expired codes
// get 404 without reaching the Approver). The default page explains how
// to approve with beam admin. A login-based approver (OIDC) would instead
// authenticate the visitor and call Server.ApproveRegistration with the
// visitor's user.
type Approver interface {
	ServeApproval(w http.ResponseWriter, r *http.Request, p wire.PendingRegistration)
}

// adminApprover is the default Approver: a page saying how to approve.
type adminApprover struct{}

func (adminApprover) ServeApproval(w http.ResponseWriter, r *http.Request, p wire.PendingRegistration) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprintf(w, "Beam: a node is waiting to join this network.\n\n"+
		"  code:      %s\n  hostname:  %q\n  expires:   %s\n\n"+
		"An admin of this coordinator approves it with:\n\n"+
		"  beam admin nodes approve %s [--user NAME | --tag tag:NAME]\n\n"+
		"The node joins the default network as soon as it is approved.\n",
		p.Code, p.Hostname, p.Expires.UTC().Format(time.RFC3339), p.Code)
}

// pendingReg is one registration waiting for approval.
type pendingReg struct {
	wire.PendingRegistration
	source netip.Addr    // the registering client's address (sourceKey)
	done   chan struct{} // closed once approved

	// Set before done is closed, never changed after.
	approval Approval
}

// pendingRegs holds the registrations waiting for approval.
type pendingRegs struct {
	mu     sync.Mutex // guards the following fields
	byCode map[string]*pendingReg
	byKey  map[key.NodePublic]*pendingReg
	// bySource counts the registrations of each source address.
	bySource map[netip.Addr]int
}

// normalizeCode upper-cases a typed code and drops spaces and dashes.
func normalizeCode(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return -1
		}
		if r >= 'a' && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}, s)
}

func newApprovalCode() string {
	b := make([]byte, codeLen)
	rand.Read(b)
	for i := range b {
		// 256 % 31 != 0: the bias is under 1% per character, harmless for a
		// code that only names a pending registration.
		b[i] = codeAlphabet[int(b[i])%len(codeAlphabet)]
	}
	return string(b)
}

// pruneLocked drops expired registrations. pendingRegs.mu held.
func (pr *pendingRegs) pruneLocked(now time.Time) {
	for _, p := range pr.byCode {
		if !now.Before(p.Expires) {
			pr.dropLocked(p)
		}
	}
}

// pruneApprovals drops expired registrations (janitor), and from a shared
// store every sharedPendingSweep.
func (rg *registry) pruneApprovals(ctx context.Context) {
	s := rg.core
	now := s.now()
	pr := &rg.pending
	pr.mu.Lock()
	pr.pruneLocked(now)
	pr.mu.Unlock()
	rg.sweepSharedPending(ctx, now)
}

// deleteApprovalKey deletes a one-off auth key made for an approved
// registration once its followup registered with it (or failed to): it
// can admit nobody else. The audit log keeps its creation and says why
// it went.
func (rg *registry) deleteApprovalKey(ctx context.Context, prefix, why string) {
	s := rg.core
	if err := s.store.DeleteAuthKey(ctx, prefix); err != nil {
		if !errors.Is(err, ErrNotFound) {
			s.logger.Warn("delete approval auth key", "prefix", prefix, "err", err)
		}
		return
	}
	s.audit(ctx, actorCoordinator, "authkey.delete", prefix, why)
}

// lookup returns the unexpired registration with code, or nil.
func (pr *pendingRegs) lookup(code string, now time.Time) *pendingReg {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	p := pr.byCode[normalizeCode(code)]
	if p == nil || !now.Before(p.Expires) {
		return nil
	}
	return p
}

// remove forgets p.
func (pr *pendingRegs) remove(p *pendingReg) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.dropLocked(p)
}

// dropLocked forgets p, if it is still held. pendingRegs.mu held.
func (pr *pendingRegs) dropLocked(p *pendingReg) {
	if pr.byCode[p.Code] != p {
		return
	}
	delete(pr.byCode, p.Code)
	if pr.byKey[p.NodeKey] == p {
		delete(pr.byKey, p.NodeKey)
	}
	if n := pr.bySource[p.source]; n <= 1 {
		delete(pr.bySource, p.source)
	} else {
		pr.bySource[p.source] = n - 1
	}
}

// oldestWaitingLocked returns the oldest registration not yet approved,
// of source if it is valid, else of the source with the most; nil if
// none waits. pendingRegs.mu held.
func (pr *pendingRegs) oldestWaitingLocked(source netip.Addr) *pendingReg {
	if !source.IsValid() {
		most := 0
		for s, n := range pr.bySource {
			if n > most {
				source, most = s, n
			}
		}
	}
	var oldest *pendingReg
	for _, p := range pr.byCode {
		if p.source != source || p.approved() {
			continue
		}
		if oldest == nil || p.Created.Before(oldest.Created) {
			oldest = p
		}
	}
	return oldest
}

// approved reports whether p was approved.
func (p *pendingReg) approved() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// addPending returns the registration waiting for nk, creating it for a
// client at source. To make room it drops the oldest waiting registration
// of source when source has maxPendingPerSource, or of the source with
// the most when the queue is full. On a shared store it records the
// registration there, where the other coordinators find it.
func (rg *registry) addPending(ctx context.Context, req *wire.RegisterRequest, source netip.Addr) (*pendingReg, *apiError) {
	p, made, dropped, aerr := rg.addPendingMem(req, source)
	if aerr != nil || rg.shared == nil {
		return p, aerr
	}
	return rg.sharePending(ctx, p, made, dropped)
}

// addPendingMem is addPending in memory: it also reports whether it made
// the registration, and those it dropped to make room.
func (rg *registry) addPendingMem(req *wire.RegisterRequest, source netip.Addr) (_ *pendingReg, made bool, dropped []*pendingReg, _ *apiError) {
	s := rg.core
	now := s.now()
	source = sourceKey(source)
	pr := &rg.pending
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.pruneLocked(now)
	if p := pr.byKey[req.NodeKey]; p != nil {
		return p, false, nil, nil
	}
	for _, from := range []netip.Addr{source, {}} {
		full := len(pr.byCode) >= maxPending
		if from.IsValid() {
			full = pr.bySource[from] >= maxPendingPerSource
		}
		if !full {
			continue
		}
		old := pr.oldestWaitingLocked(from)
		if old == nil {
			return nil, false, dropped, errorf(http.StatusServiceUnavailable, wire.CodeUnavailable, "too many registrations are waiting for approval")
		}
		pr.dropLocked(old)
		dropped = append(dropped, old)
		rg.droppedLog.log(s.logger, now, "code", old.Code, "source", old.source, "hostname", old.Hostname)
	}
	code := newApprovalCode()
	for pr.byCode[code] != nil {
		code = newApprovalCode()
	}
	p := &pendingReg{
		PendingRegistration: wire.PendingRegistration{
			Code: code, NodeKey: req.NodeKey, Hostname: req.Hostname, OS: req.OS, Created: now, Expires: now.Add(approvalTTL),
		},
		source: source,
		done:   make(chan struct{}),
	}
	pr.byCode[code] = p
	pr.byKey[req.NodeKey] = p
	pr.bySource[source]++
	rg.waitingLog.log(s.logger, now, "node", req.NodeKey.ShortString(), "hostname", req.Hostname, "code", code)
	return p, true, dropped, nil
}

// PendingRegistrations lists the registrations waiting for approval.
func (s *Server) PendingRegistrations() []wire.PendingRegistration { return s.reg.pendingList() }

// pendingList is Server.PendingRegistrations.
func (rg *registry) pendingList() []wire.PendingRegistration {
	pr := &rg.pending
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.pruneLocked(rg.core.now())
	out := make([]wire.PendingRegistration, 0, len(pr.byCode))
	for _, p := range pr.byCode {
		select {
		case <-p.done:
			continue // approved; the node is on its way
		default:
		}
		out = append(out, p.PendingRegistration)
	}
	slices.SortFunc(out, func(a, b wire.PendingRegistration) int { return a.Created.Compare(b.Created) })
	return out
}

// ApproveRegistration admits the node waiting with code into the default
// network, owned by a.User or carrying a.Tags. It fails with ErrNotFound
// for an unknown or expired code and ErrConflict if it was approved
// already; an unknown user or a tag the policy does not list fails with
// ErrInvalid.
func (s *Server) ApproveRegistration(ctx context.Context, code string, a Approval) error {
	return s.reg.approve(ctx, code, a)
}

// afterShareApprovalForTest, if set, is called by approve with the code
// once the store took the approval, before the followup is released here.
// Only tests set it, through SetApprovalHookForTest in export_test.go.
var afterShareApprovalForTest atomic.Pointer[func(code string)]

// approve is Server.ApproveRegistration. It records the approval and
// releases the node's followup, on this coordinator or, through a shared
// store, on the one holding it; that coordinator makes the one-off auth
// key the node registers with.
func (rg *registry) approve(ctx context.Context, code string, a Approval) error {
	s := rg.core
	p := rg.lookupShared(ctx, code)
	if p == nil {
		return fmt.Errorf("%w: no node is waiting with code %q (codes expire after %v)", ErrNotFound, normalizeCode(code), approvalTTL)
	}
	if p.approved() {
		return fmt.Errorf("%w: code %s was approved already", ErrConflict, p.Code)
	}
	s.mu.Lock()
	owner := ""
	if e := s.nodes[p.NodeKey]; e != nil {
		owner = e.rec.Node.User
	}
	s.mu.Unlock()
	if owner != "" && a.User != "" && owner != a.User {
		return fmt.Errorf("%w: this device belongs to %s; only %s can authenticate it again", ErrInvalid, owner, owner)
	}
	if err := s.checkKeyOwner(ctx, a.User, a.Tags); err != nil {
		return err
	}
	if err := rg.shareApproval(ctx, p, a); err != nil {
		return err
	}
	if h := afterShareApprovalForTest.Load(); h != nil {
		(*h)(p.Code)
	}
	pr := &rg.pending
	pr.mu.Lock()
	switch {
	case rg.shared != nil && (p.approved() || pr.byCode[p.Code] != p):
		// The store took this approval (it refuses a second one), so
		// it stands: the coordinator holding the followup released it
		// and may have registered the node and dropped the code here
		// already, before this one got the lock.
	case p.approved():
		pr.mu.Unlock()
		return fmt.Errorf("%w: code %s was approved already", ErrConflict, p.Code)
	case pr.byCode[p.Code] != p:
		pr.mu.Unlock()
		// Dropped meanwhile (expired, or to make room): its node starts over.
		return fmt.Errorf("%w: no node is waiting with code %q any more", ErrNotFound, p.Code)
	default:
		p.approval = a
		close(p.done)
	}
	pr.mu.Unlock()
	actor := a.Actor
	if actor == "" {
		actor = actorAdmin
	}
	detail := "user=" + a.User
	if len(a.Tags) > 0 {
		detail += " tags=" + strings.Join(a.Tags, ",")
	}
	s.audit(ctx, actor, "node.approve", p.Code, detail+" hostname="+p.Hostname)
	s.logger.Info("registration approved", "code", p.Code, "node", p.NodeKey.ShortString(), "user", a.User, "tags", a.Tags)
	return nil
}

// sourceKey groups client addresses for the per-source bound: an IPv4
// address, or the /64 of an IPv6 one.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// remoteAddr is the IP address r came from; the zero Addr if unknown.
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}

// authURL is where the person approving node with code goes.
func authURL(r *http.Request, code string) string {
	scheme := "http"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	return scheme + "://" + r.Host + wire.ApprovalPagePath(code)
}

// interactiveRegister handles the registrations that need approval: a
// new node key without an auth key (outside dev mode on loopback), and
// every Followup. It reports false, having written nothing, for the
// requests register handles.
//
// A new node key's request is not recorded against replays: its replay
// finds the registration it made waiting (or makes another one, bounded
// like any other by maxPending), which anyone can do with a key of their
// own, and the code is sealed to the node. A registered node's request
// (Reauth) is recorded.
func (rg *registry) interactiveRegister(w http.ResponseWriter, r *http.Request, q *sealedRequest, req *wire.RegisterRequest) bool {
	s := rg.core
	nk := q.nk
	if req.Followup != "" {
		rg.followup(w, r, q, req)
		return true
	}
	if req.AuthKey != "" || req.Logout || (rg.devMode && localRequest(r)) {
		return false
	}
	s.mu.Lock()
	known := s.nodes[nk] != nil
	s.mu.Unlock()
	if known && !req.Reauth {
		return false
	}
	if known {
		if aerr := s.seeRequest(r.Context(), q); aerr != nil {
			writeError(w, aerr)
			return true
		}
	}
	p, aerr := rg.addPending(r.Context(), req, remoteAddr(r))
	if aerr != nil {
		writeError(w, aerr)
		return true
	}
	s.writeSealed(w, nk, &wire.RegisterResponse{AuthURL: authURL(r, p.Code), AuthCode: p.Code})
	return true
}

// followup holds a Followup request until its registration is approved,
// followupWait passes, or the node hangs up. A followup with its node's
// code is recorded against replays before it is held.
func (rg *registry) followup(w http.ResponseWriter, r *http.Request, q *sealedRequest, req *wire.RegisterRequest) {
	s := rg.core
	nk := q.nk
	p := rg.lookupShared(r.Context(), req.Followup)
	if p == nil {
		s.mu.Lock()
		known := s.nodes[nk] != nil
		s.mu.Unlock()
		if known {
			// Approved and registered by an earlier followup whose answer was lost.
			rg.finishApproved(w, r, q, req, "")
			return
		}
		writeError(w, errorf(http.StatusForbidden, wire.CodeApprovalExpired, "approval code is unknown or expired; register again"))
		return
	}
	if p.NodeKey != nk {
		writeError(w, errorf(http.StatusForbidden, wire.CodeForbidden, "approval code belongs to another node key"))
		return
	}
	if aerr := s.seeRequest(r.Context(), q); aerr != nil {
		writeError(w, aerr)
		return
	}
	t := time.NewTimer(followupWait)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		s.writeSealed(w, nk, &wire.RegisterResponse{AuthURL: authURL(r, p.Code), AuthCode: p.Code})
		return
	case <-r.Context().Done():
		return
	case <-s.ctx.Done():
		writeError(w, errorf(http.StatusServiceUnavailable, wire.CodeUnavailable, "coordinator is shutting down"))
		return
	}
	ctx := context.WithoutCancel(r.Context())
	a := p.approval
	secret, ak, err := rg.createAuthKey(ctx, AuthKeyOptions{User: a.User, Tags: a.Tags, Expiry: approvalTTL, NodeKeyExpiry: a.NodeKeyExpiry})
	if err != nil {
		s.logger.Warn("auth key for an approved registration", "code", p.Code, "err", err)
		if errors.Is(err, ErrInvalid) { // its user was deleted, or a tag's owner changed, since
			writeError(w, errorf(http.StatusForbidden, wire.CodeForbidden, "the approval no longer holds: %v", err))
			return
		}
		writeError(w, asAPIError(err))
		return
	}
	ok := rg.finishApproved(w, r, q, req, secret)
	rg.deleteApprovalKey(ctx, ak.Prefix, "approval key used")
	if ok {
		rg.pending.remove(p)
		rg.unsharePending(ctx, p)
	}
}

// finishApproved registers an approved node with the auth key made for it
// (or rejoins it if it is registered already) and answers the followup.
// It reports whether the node is registered.
func (rg *registry) finishApproved(w http.ResponseWriter, r *http.Request, q *sealedRequest, req *wire.RegisterRequest, authKey string) bool {
	s := rg.core
	nk := q.nk
	rr := *req
	rr.AuthKey, rr.Followup = authKey, ""
	resp, aerr := s.countRegistration(rg.registerBounded(r, q, &rr))
	if aerr != nil {
		if aerr.status >= 500 {
			s.logger.Warn("approved registration failed", "node", nk.ShortString(), "err", aerr)
		}
		writeError(w, aerr)
		return false
	}
	s.writeSealed(w, nk, resp)
	return true
}

func (rg *registry) handleApprovalPage(w http.ResponseWriter, r *http.Request) {
	s := rg.core
	p := rg.pending.lookup(r.PathValue("code"), s.now())
	if p == nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintln(w, "Beam: no node is waiting with this code; it may have expired. Start the node's login again.")
		return
	}
	rg.approver.ServeApproval(w, r, p.PendingRegistration)
}
