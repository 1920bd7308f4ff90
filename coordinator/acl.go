package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Admin API for the policy (bearer token):
//
//	GET  /api/v1/policy          -> 200 text/plain HuJSON of the policy in force
//	PUT  /api/v1/policy          <- HuJSON; 204 once applied, 400 wire.PolicyErrorBody if refused
//	POST /api/v1/policy/check    <- HuJSON; 204 if PUT would accept it, 400 wire.PolicyErrorBody if not

// policySetting is the settings name of the stored policy text.
const policySetting = "policy_hujson"

// accessControl is the Server's state for users, policy, interactive
// approval and the audit log. Its fields say which lock guards them.
type accessControl struct {
	policy atomic.Pointer[policy.Policy] // the policy in force; never nil after New
	setMu  sync.Mutex                    // serializes policy changes

	// nets holds the policy compiled per network, views the shared node
	// views (see sharedViewLocked). Guarded by Server.mu.
	nets  map[int64]*netACL
	views map[key.NodePublic]*wire.Node

	audit auditLog
}

// initAccessControl loads the stored policy. Called from New.
func (s *Server) initAccessControl(ctx context.Context, opts Options) error {
	s.ac.nets = make(map[int64]*netACL)
	s.ac.views = make(map[key.NodePublic]*wire.Node)
	s.ac.audit.wake = make(chan struct{}, 1)
	src, err := s.store.Setting(ctx, policySetting)
	switch {
	case errors.Is(err, ErrNotFound):
		s.ac.policy.Store(policy.Default())
	case err != nil:
		return fmt.Errorf("coordinator: load policy: %w", err)
	default:
		p, err := policy.Parse(src)
		if err != nil {
			return fmt.Errorf("coordinator: stored policy does not parse: %w", err)
		}
		s.ac.policy.Store(p)
	}
	groups, err := s.loadUserGroups(ctx)
	if err != nil {
		return err
	}
	if len(groups) > 0 {
		s.ac.policy.Store(s.currentPolicy().WithGroupMembers(byGroup(groups)))
	}
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
func (s *Server) currentPolicy() *policy.Policy { return s.ac.policy.Load() }

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
	s.ac.setMu.Lock()
	defer s.ac.setMu.Unlock()
	p, err := s.CheckPolicy(ctx, src)
	if err != nil {
		return err
	}
	if err := s.store.SetSetting(ctx, policySetting, src); err != nil {
		return fmt.Errorf("coordinator: store policy: %w", err)
	}
	groups, err := s.loadUserGroups(ctx)
	if err != nil {
		return err
	}
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

// inOverlay reports whether a is an overlay address.
func inOverlay(a netip.Addr) bool { return CGNATPrefix.Contains(a) || ULAPrefix.Contains(a) }

// netACL is the policy in force compiled for one network's current
// members. It is rebuilt when the policy or the member set changes (a
// node joins, leaves, expires, or changes user, tags or addresses).
// Guarded by Server.mu.
type netACL struct {
	pol      *policy.Policy
	compiled *policy.Compiled
	// members holds the aclFingerprint of every unexpired node of the
	// network, edge nodes included.
	members map[key.NodePublic]string
	// index numbers the nodes given to Compile (members less edges).
	index map[key.NodePublic]int
	// overlayAddrs counts the overlay addresses of all members: a rule
	// whose sources are that many addresses admits every possible
	// WireGuard peer of the network.
	overlayAddrs int
	per          map[key.NodePublic]*nodeACL
}

// nodeACL is one node's share of a netACL.
type nodeACL struct {
	filter  []wire.FilterRule
	visible []uint64 // bitset over netACL.index
}

func (n *nodeACL) sees(i int) bool { return i/64 < len(n.visible) && n.visible[i/64]&(1<<(i%64)) != 0 }

// netACLLocked returns the compiled policy of a network, compiling it if
// needed. s.mu held.
func (s *Server) netACLLocked(networkID int64, now time.Time) *netACL {
	pol := s.currentPolicy()
	if na := s.ac.nets[networkID]; na != nil && na.pol == pol {
		return na
	}
	type member struct {
		id wire.NodeID
		n  *wire.Node
	}
	var ms []member
	na := &netACL{pol: pol, members: make(map[key.NodePublic]string), index: make(map[key.NodePublic]int), per: make(map[key.NodePublic]*nodeACL)}
	for k, e := range s.nodes {
		if e.rec.NetworkID != networkID || e.rec.Node.Expired(now) {
			continue
		}
		na.members[k] = aclFingerprint(&e.rec.Node)
		for _, a := range e.rec.Node.Addresses {
			if inOverlay(a.Addr()) {
				na.overlayAddrs++
			}
		}
		if !e.rec.Node.Edge {
			ms = append(ms, member{e.rec.Node.ID, policyNode(pol, &e.rec.Node)})
		}
	}
	// A stable order keeps filters identical across recompiles.
	slices.SortFunc(ms, func(a, b member) int { return int(a.id - b.id) })
	nodes := make([]*wire.Node, len(ms))
	for i, m := range ms {
		nodes[i] = m.n
		na.index[m.n.Key] = i
	}
	na.compiled = pol.Compile(nodes)
	s.ac.nets[networkID] = na
	return na
}

// forLocked returns node k's share of na, computing it once. s.mu held.
func (na *netACL) forLocked(k key.NodePublic) *nodeACL {
	if r := na.per[k]; r != nil {
		return r
	}
	filter, vis := na.compiled.For(k)
	r := &nodeACL{filter: compactFilter(filter, na.overlayAddrs), visible: make([]uint64, (len(na.index)+63)/64)}
	for _, pk := range vis {
		if i, ok := na.index[pk]; ok {
			r.visible[i/64] |= 1 << (i % 64)
		}
	}
	na.per[k] = r
	return r
}

// overlayPrefixes stands for "every node of the network" in a filter:
// only the network's nodes are WireGuard peers, so only they can send.
var overlayPrefixes = []netip.Prefix{CGNATPrefix, ULAPrefix}

// compactFilter replaces source lists that hold every member's addresses
// by the two overlay prefixes, so "*" rules stay small and the same as
// nodes come and go. A filter is never shared with Compiled after this.
func compactFilter(filter []wire.FilterRule, overlayAddrs int) []wire.FilterRule {
	if filter == nil {
		return []wire.FilterRule{}
	}
	out := make([]wire.FilterRule, len(filter))
	for i, r := range filter {
		if overlayAddrs > 0 && len(r.SrcIPs) == overlayAddrs {
			r.SrcIPs = overlayPrefixes
		}
		out[i] = r
	}
	return out
}

// aclLocked returns self's packet filter and the peers self may see
// under the access policy. The filter and the views are shared with other
// callers and must not be modified. s.mu held.
func (s *Server) aclLocked(self *wire.Node, networkID int64, now time.Time) ([]wire.FilterRule, []*wire.Node) {
	na := s.netACLLocked(networkID, now)
	r := na.forLocked(self.Key)
	var visible []*wire.Node
	for pk, i := range na.index {
		if pk == self.Key || !r.sees(i) {
			continue
		}
		if e := s.nodes[pk]; e != nil && e.rec.NetworkID == networkID && !e.rec.Node.Expired(now) {
			visible = append(visible, s.sharedViewLocked(e))
		}
	}
	return r.filter, visible
}

// sharedViewLocked returns e's view, shared by every stream until e
// changes (notifyLocked drops it), so a policy change or a join costs
// each stream map lookups rather than a copy of every peer. Views are
// never modified. s.mu held.
func (s *Server) sharedViewLocked(e *nodeEntry) *wire.Node {
	if v := s.ac.views[e.rec.Node.Key]; v != nil {
		return v
	}
	v := s.viewLocked(e)
	s.ac.views[e.rec.Node.Key] = v
	return v
}

// aclNotifyLocked is notifyLocked's part for the access policy: it drops
// k's shared view and reports whether k's change needs every stream of
// the network to recompute its peers and filter. s.mu held.
func (s *Server) aclNotifyLocked(networkID int64, k key.NodePublic) bool {
	delete(s.ac.views, k)
	return s.aclChangedLocked(networkID, k)
}

// mayPeerLocked reports whether self's netmap may list node k. s.mu held.
func (s *Server) mayPeerLocked(self *wire.Node, networkID int64, k key.NodePublic, now time.Time) bool {
	if s.policy != nil {
		return true // a PolicyFunc recomputes every peer on each change
	}
	na := s.netACLLocked(networkID, now)
	i, ok := na.index[k]
	return ok && na.forLocked(self.Key).sees(i)
}

// aclChangedLocked reports whether node k's change (it joined, left,
// expired, or changed user, tags or addresses) invalidates the network's
// compiled policy, and drops it if so. s.mu held.
func (s *Server) aclChangedLocked(networkID int64, k key.NodePublic) bool {
	na := s.ac.nets[networkID]
	if na == nil {
		return true
	}
	fp, in := "", false
	if e := s.nodes[k]; e != nil && e.rec.NetworkID == networkID && !e.rec.Node.Expired(s.now()) {
		fp, in = aclFingerprint(&e.rec.Node), true
	}
	old, had := na.members[k]
	if in == had && fp == old {
		return false
	}
	delete(s.ac.nets, networkID)
	return true
}
