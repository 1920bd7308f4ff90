package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/wire"
)

// Admin API for the policy (bearer token):
//
//	GET  /api/v1/policy          -> 200 text/plain HuJSON of the policy in force
//	PUT  /api/v1/policy          <- HuJSON; 204 once applied, 400 wire.PolicyErrorBody if refused
//	POST /api/v1/policy/check    <- HuJSON; 204 if PUT would accept it, 400 wire.PolicyErrorBody if not

// policySetting is the settings name of the stored policy text.
const policySetting = "policy_hujson"

// access is the coordinator's access job: the policy in force, the policy
// compiled for each network and kept current node by node (access.go),
// and from it each node's packet filter and the peers it may see; and the
// audit log. Server embeds it, so streams ask s.filterLocked and
// s.mayPeerLocked, and the core tells it of a node's change through
// s.aclNotifyLocked.
//
// The compiled state is guarded by Server.mu, as the streams job's is:
// it changes with the node records it is computed from (which it reads
// through core when it compiles), and every reader is a stream already
// holding that lock; a lock of its own would add an order without taking
// work from under Server.mu.
type access struct {
	core *Server

	policy atomic.Pointer[policy.Policy] // the policy in force; never nil after New
	setMu  sync.Mutex                    // serializes policy changes

	// groups is the user groups JSON the policy in force was built with
	// (nil for none stored), so a reload from the store can tell whether
	// anything changed. Guarded by setMu.
	groups []byte

	// nets holds the policy compiled per network. Guarded by Server.mu.
	nets map[int64]*netACL
	// compiles counts netACL builds, a cost measure for tests. Guarded
	// by Server.mu.
	compiles int

	audit auditLog
}

// initAccessControl creates the access job and loads the stored policy.
// Called from New.
func (s *Server) initAccessControl(ctx context.Context, opts Options) error {
	s.access = &access{core: s, nets: make(map[int64]*netACL)}
	s.access.audit.wake = make(chan struct{}, 1)
	p, groups, err := s.loadPolicy(ctx)
	if err != nil {
		return err
	}
	s.access.policy.Store(p)
	s.access.groups = groups
	return nil
}

// loadPolicy reads the stored policy and user groups and returns the
// policy they make, and the groups' stored JSON.
func (s *Server) loadPolicy(ctx context.Context) (*policy.Policy, []byte, error) {
	p := policy.Default()
	src, err := s.store.Setting(ctx, policySetting)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return nil, nil, fmt.Errorf("coordinator: load policy: %w", err)
	default:
		if p, err = policy.Parse(src); err != nil {
			return nil, nil, fmt.Errorf("coordinator: stored policy does not parse: %w", err)
		}
	}
	groups, gj, err := s.loadUserGroupsJSON(ctx)
	if err != nil {
		return nil, nil, err
	}
	if len(groups) > 0 {
		p = p.WithGroupMembers(byGroup(groups))
	}
	return p, gj, nil
}

// reloadPolicy puts in force the policy and user groups as the store
// holds them, when another coordinator changed them; nothing happens if
// they are the ones in force.
func (s *Server) reloadPolicy(ctx context.Context) error {
	s.access.setMu.Lock()
	defer s.access.setMu.Unlock()
	p, groups, err := s.loadPolicy(ctx)
	if err != nil {
		return err
	}
	if bytes.Equal(p.Source(), s.currentPolicy().Source()) && bytes.Equal(groups, s.access.groups) {
		return nil
	}
	s.access.groups = groups
	s.applyPolicyLocked(p)
	sum := sha256.Sum256(p.Source())
	s.logger.Info("policy changed on another coordinator", "sha256", hex.EncodeToString(sum[:8]))
	return nil
}

// startAccessControl starts the audit writer. Called from New once s.ctx exists.
func (s *Server) startAccessControl() {
	s.wg.Add(1)
	go s.auditLoop()
}

// accessRoutes adds the routes of users, policy, approval and audit.
func (s *Server) accessRoutes(mux, admin *http.ServeMux) {
	admin.HandleFunc("GET "+wire.PathPolicy, s.handleGetPolicy)
	admin.HandleFunc("PUT "+wire.PathPolicy, s.handleSetPolicy)
	admin.HandleFunc("POST "+wire.PathPolicyCheck, s.handleCheckPolicy)
}

// currentPolicy returns the policy in force.
func (a *access) currentPolicy() *policy.Policy { return a.policy.Load() }

// Policy returns the text of the policy in force (the default policy's if
// none was set).
func (s *Server) Policy() []byte { return slices.Clone(s.currentPolicy().Source()) }

// CheckPolicy parses src, checks that every user it names exists, and runs
// its tests against the current nodes of every network. It returns the
// parsed policy, or the problems as *policy.Error values (joined with
// errors.Join); a failing test wraps policy.ErrTestFailed.
func (s *Server) CheckPolicy(ctx context.Context, src []byte) (*policy.Policy, error) {
	p, err := policy.Parse(src)
	if err != nil {
		return nil, err
	}
	users, err := s.Users(ctx)
	if err != nil {
		return nil, err
	}
	known := make(map[string]bool, len(users))
	for _, u := range users {
		known[u.Name] = true
	}
	if err := p.CheckUsers(func(u string) bool { return known[u] }); err != nil {
		return nil, err
	}
	now := s.now()
	s.mu.Lock()
	byNet := make(map[int64][]*wire.Node)
	for id := range s.networks {
		byNet[id] = nil
	}
	for _, e := range s.nodes {
		if !e.rec.Node.Expired(now) && !e.rec.Node.Edge {
			byNet[e.rec.NetworkID] = append(byNet[e.rec.NetworkID], policyNode(p, &e.rec.Node))
		}
	}
	s.mu.Unlock()
	for _, nodes := range byNet {
		if err := p.Validate(nodes); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// SetPolicy checks src as CheckPolicy does and, if it passes, stores it
// and applies it: every streaming node gets its new packet filter and
// peer list within moments.
func (s *Server) SetPolicy(ctx context.Context, src []byte) error {
	s.access.setMu.Lock()
	defer s.access.setMu.Unlock()
	p, err := s.CheckPolicy(ctx, src)
	if err != nil {
		return err
	}
	if err := s.store.SetSetting(ctx, policySetting, src); err != nil {
		return fmt.Errorf("coordinator: store policy: %w", err)
	}
	groups, gj, err := s.loadUserGroupsJSON(ctx)
	if err != nil {
		return err
	}
	s.access.groups = gj
	s.applyPolicyLocked(p.WithGroupMembers(byGroup(groups)))
	sum := sha256.Sum256(src)
	s.logger.Info("policy changed", "sha256", hex.EncodeToString(sum[:8]))
	return nil
}

// mayExpose reports whether node n may publish a public route under name
// according to the policy in force. It does not check that name is free.
func (s *Server) mayExpose(n *wire.Node, name string) bool {
	return s.currentPolicy().MayExpose(n, name)
}

// policyProblems flattens the *policy.Error values in err.
func policyProblems(err error) []wire.PolicyProblem {
	var out []wire.PolicyProblem
	var walk func(error)
	walk = func(err error) {
		if pe, ok := err.(*policy.Error); ok {
			out = append(out, wire.PolicyProblem{Line: pe.Line, Column: pe.Column, Message: pe.Msg, TestFailed: errors.Is(pe, policy.ErrTestFailed)})
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

// writePolicyError answers a refused policy, or passes other errors on.
func (s *Server) writePolicyError(w http.ResponseWriter, op string, err error) {
	probs := policyProblems(err)
	if len(probs) == 0 {
		s.adminError(w, op, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(wire.PolicyErrorBody{Error: err.Error(), Code: wire.CodeBadPolicy, Problems: probs})
}

// maxPolicySize bounds a policy upload.
const maxPolicySize = 1 << 20

func readPolicyBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPolicySize))
	if err != nil {
		writeError(w, errorf(http.StatusRequestEntityTooLarge, wire.CodeBadRequest, "policy too large or cut short"))
		return nil, false
	}
	return b, true
}

func (s *Server) handleGetPolicy(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(s.Policy())
}

func (s *Server) handleSetPolicy(w http.ResponseWriter, r *http.Request) {
	src, ok := readPolicyBody(w, r)
	if !ok {
		return
	}
	if err := s.SetPolicy(r.Context(), src); err != nil {
		s.writePolicyError(w, "set policy", err)
		return
	}
	sum := sha256.Sum256(src)
	s.audit(r.Context(), actorAdmin, "policy.set", "policy", "sha256:"+hex.EncodeToString(sum[:8]))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleCheckPolicy(w http.ResponseWriter, r *http.Request) {
	src, ok := readPolicyBody(w, r)
	if !ok {
		return
	}
	if _, err := s.CheckPolicy(r.Context(), src); err != nil {
		s.writePolicyError(w, "check policy", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// decodeJSONBody strictly decodes a JSON request body into v, answering
// 400 itself when it cannot.
func decodeJSONBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestSize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "malformed request body"))
		return false
	}
	return true
}

// policyNode is the part of n the policy p looks at, copied so the
// compiled policy does not share memory with live records. Tags p no
// longer grants (dropped from tagOwners after the node got them) are left
// out: the node does not hold them. A node whose tags are all ungranted
// holds none and has no user either: it was given a tag's identity, never
// its user's, so losing the tag leaves it matched only by "*" and its
// addresses.
func policyNode(p *policy.Policy, n *wire.Node) *wire.Node {
	held, ungranted := p.HeldTags(n)
	user := n.User
	if len(held) == 0 && len(ungranted) > 0 {
		user = ""
	}
	return &wire.Node{ID: n.ID, Key: n.Key, Name: n.Name, User: user, Tags: slices.Clone(held), Addresses: slices.Clone(n.Addresses)}
}

// aclFingerprint is what of n the compiled policy depends on.
func aclFingerprint(n *wire.Node) string {
	var b strings.Builder
	b.WriteString(n.User)
	b.WriteByte('|')
	b.WriteString(strings.Join(n.Tags, ","))
	b.WriteByte('|')
	for _, a := range n.Addresses {
		b.WriteString(a.String())
		b.WriteByte(',')
	}
	if n.Edge {
		b.WriteString("|edge")
	}
	return b.String()
}
