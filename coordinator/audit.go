package coordinator

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"beam.dev/beam/wire"
)

// Admin API for the audit log (bearer token):
//
//	GET /api/v1/audit?limit=N   -> []wire.AuditEntry, newest first (N defaults to 100, at most 10000)
//
// Actions recorded (Action, with Target):
//
//	authkey.create, authkey.delete   auth key prefix (never the secret)
//	user.create, user.delete         user name
//	node.register, node.reauth       node name (actor: the node, Detail: how it joined)
//	node.logout                      node name
//	node.remove                      node name (actor: admin, or coordinator for ephemeral nodes)
//	node.expire                      node name (actor: admin) ; node.expired when the key ran out
//	node.set_expiry                  node name, Detail the new expiry
//	node.rename                      old node name, Detail the new name
//	node.approve                     approval code, Detail user/tags
//	policy.set                       "policy", Detail a hash of the new text
//	route.claim, route.release       public route name (from the expose path)
//	console.login, console.logout    who signed in to the web console (Detail: how, from where)
//	console.login_failed             "admin" (actor console:?, Detail: from where)
//
// The web console (coordinator/console) records the same actions as the
// admin API for what it does, with the actor "console:NAME".

// AuditStore keeps the audit log.
type AuditStore interface {
	// AppendAudit stores entries in order; their IDs are assigned by the store.
	AppendAudit(ctx context.Context, entries []wire.AuditEntry) error
	// Audit returns the newest limit entries, newest first.
	Audit(ctx context.Context, limit int) ([]wire.AuditEntry, error)
}

// Actors of audit entries.
const (
	actorAdmin       = "admin"
	actorCoordinator = "coordinator"
)

func actorNode(name string) string { return "node:" + name }

// maxAuditQueue bounds the entries waiting to be written.
const maxAuditQueue = 10000

// auditLog queues entries so audit can be called with any lock held; the
// auditLoop goroutine writes them, and readers flush first.
type auditLog struct {
	wake chan struct{} // cap 1

	mu      sync.Mutex // guards the following fields
	queue   []wire.AuditEntry
	dropped int

	writeMu sync.Mutex // serializes flushes so entries are stored in order
}

// audit records that actor did action to target. It never blocks on I/O
// and may be called with any of the Server's locks held; the entry is
// written to the store shortly after (and before any read of the log).
// detail must not hold secrets. On a request Options.AdminAuth admitted
// (ctx), the actor "admin" becomes "admin:WHO".
func (s *Server) audit(ctx context.Context, actor, action, target, detail string) {
	if who, ok := ctx.Value(adminWhoKey{}).(string); ok && actor == actorAdmin {
		actor = actorAdmin + ":" + who // admitted by Options.AdminAuth
	}
	a := &s.access.audit
	a.mu.Lock()
	if len(a.queue) >= maxAuditQueue {
		a.dropped++
	} else {
		a.queue = append(a.queue, wire.AuditEntry{Time: s.now(), Actor: actor, Action: action, Target: target, Detail: detail})
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// flushAudit writes every queued entry to the store.
func (s *Server) flushAudit(ctx context.Context) error {
	a := &s.access.audit
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	a.mu.Lock()
	batch, dropped := a.queue, a.dropped
	a.queue, a.dropped = nil, 0
	a.mu.Unlock()
	if dropped > 0 {
		s.logger.Warn("audit queue overflowed; entries lost", "count", dropped)
	}
	if len(batch) == 0 {
		return nil
	}
	if err := s.store.AppendAudit(ctx, batch); err != nil {
		s.logger.Error("write audit log", "entries", len(batch), "err", err)
		return err
	}
	return nil
}

// auditLoop writes queued audit entries until the Server closes, then
// writes what is left.
func (s *Server) auditLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.flushAudit(ctx)
			cancel()
			return
		case <-s.access.audit.wake:
		}
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		s.flushAudit(ctx)
		cancel()
	}
}

// Audit returns the newest limit audit entries, newest first.
func (s *Server) Audit(ctx context.Context, limit int) ([]wire.AuditEntry, error) {
	if err := s.flushAudit(ctx); err != nil {
		return nil, err
	}
	return s.store.Audit(ctx, limit)
}

// authKeyDetail describes a new auth key for the audit log (never its secret).
func authKeyDetail(ak *AuthKey) string {
	var b strings.Builder
	fmt.Fprintf(&b, "reusable=%v ephemeral=%v", ak.Reusable, ak.Ephemeral)
	if ak.User != "" {
		fmt.Fprintf(&b, " user=%s", ak.User)
	}
	if len(ak.Tags) > 0 {
		fmt.Fprintf(&b, " tags=%s", strings.Join(ak.Tags, ","))
	}
	if !ak.Expiry.IsZero() {
		fmt.Fprintf(&b, " expires=%s", ak.Expiry.UTC().Format(time.RFC3339))
	}
	if ak.NodeKeyExpiry != 0 {
		fmt.Fprintf(&b, " node_key_expiry=%s", formatKeyExpiry(ak.NodeKeyExpiry))
	}
	return b.String()
}
