package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// The core's node and network tables: every job reads and changes nodes
// and networks through these, under Server.mu (the *Locked ones) or
// taking it.

// updateSelf applies mut to the node nk, persists it, tells peers if the
// peer-visible fields changed, and returns the node's view.
func (s *Server) updateSelf(ctx context.Context, nk key.NodePublic, mut func(*NodeRecord)) (*wire.Node, *apiError) {
	s.mu.Lock()
	e := s.nodes[nk]
	if e == nil {
		s.mu.Unlock()
		return nil, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered")
	}
	before := s.viewLocked(e)
	authBefore := e.rec.AuthKeyID
	mut(&e.rec)
	after := s.viewLocked(e)
	changed := !nodeEqual(before, after)
	expiry := !before.KeyExpiry.Equal(after.KeyExpiry) || e.rec.AuthKeyID != authBefore
	if changed {
		s.notifyLocked(e.rec.NetworkID, nk)
	}
	s.mu.Unlock()
	if changed || expiry {
		if err := s.persist(ctx, nk, expiry); err != nil && !errors.Is(err, ErrNotFound) {
			s.logger.Error("persist node", "node", nk.ShortString(), "err", err)
			return nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
		}
	}
	return after, nil
}

// persist writes the current in-memory record of nk to the store: the
// fields the node reports, and its key expiry and auth key if expiry.
// The two are written apart so that a node's own update never puts back
// an expiry that another coordinator sharing the store has changed.
func (s *Server) persist(ctx context.Context, nk key.NodePublic, expiry bool) error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	e := s.nodes[nk]
	if e == nil {
		s.mu.Unlock()
		return ErrNotFound
	}
	rec := e.rec
	rec.Node.Endpoints = slices.Clone(rec.Node.Endpoints)
	s.mu.Unlock()
	if err := s.store.UpdateNode(ctx, &rec); err != nil {
		return err
	}
	if expiry {
		return s.store.UpdateNodeExpiry(ctx, &rec)
	}
	return nil
}

// viewLocked returns the node as peers and itself see it. s.mu held.
func (s *Server) viewLocked(e *nodeEntry) *wire.Node {
	n := e.rec.Node
	n.Addresses = slices.Clone(n.Addresses)
	// Cleaned again: endpoints stored before they were bounded
	// (wire.MaxEndpoints) would make nodes refuse the peer.
	n.Endpoints = slices.Clone(wire.CleanEndpoints(n.Endpoints))
	n.Tags = slices.Clone(n.Tags)
	local := s.sessions[n.Key] != nil
	n.Online = local || e.remote == PresenceOnline || e.grace
	n.Unknown = !local && e.remote == PresenceUnknown
	return &n
}

// nodeRev returns the wire.Node.Rev of n: the first 8 bytes of the
// SHA-256 of a canonical encoding of the fields nodeEqual compares, and
// Edge, so that it is the same for the same fields on every coordinator
// and across restarts. Times count to the microsecond, what the
// PostgreSQL store keeps.
func nodeRev(n *wire.Node) uint64 {
	b := make([]byte, 0, 512)
	str := func(s string) []byte {
		b = binary.AppendUvarint(b, uint64(len(s)))
		return append(b, s...)
	}
	b = binary.AppendVarint(b, int64(n.ID))
	k, d := n.Key.Raw32(), n.DiscoKey.Raw32()
	b = append(b, k[:]...)
	b = append(b, d[:]...)
	b = str(n.Name)
	b = str(n.DNSName)
	b = str(n.Hostname)
	b = str(n.OS)
	b = binary.AppendUvarint(b, uint64(len(n.Addresses)))
	for _, a := range n.Addresses {
		b = str(a.String())
	}
	b = binary.AppendUvarint(b, uint64(len(n.Endpoints)))
	for _, ep := range n.Endpoints {
		b = str(ep.String())
	}
	b = binary.AppendVarint(b, int64(n.HomeDERP))
	b = binary.AppendUvarint(b, uint64(n.PeerRelay))
	var exp int64
	if !n.KeyExpiry.IsZero() {
		exp = n.KeyExpiry.UnixMicro()
	}
	b = binary.AppendVarint(b, exp)
	b = str(n.User)
	b = binary.AppendUvarint(b, uint64(len(n.Tags)))
	for _, t := range n.Tags {
		b = str(t)
	}
	flag := func(v bool) byte {
		if v {
			return 1
		}
		return 0
	}
	b = append(b, flag(n.Ephemeral), flag(n.Unknown), flag(n.Edge))
	sum := sha256.Sum256(b)
	return binary.BigEndian.Uint64(sum[:8])
}

// nodeEqual reports whether a and b are equal apart from Online and
// LastSeen. Unknown counts: peers get the whole node when it changes,
// which older nodes that know only Online take as it is (offline).
func nodeEqual(a, b *wire.Node) bool {
	return a.ID == b.ID && a.Key == b.Key && a.DiscoKey == b.DiscoKey && a.Name == b.Name &&
		a.DNSName == b.DNSName && a.Hostname == b.Hostname && a.OS == b.OS &&
		slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Endpoints, b.Endpoints) &&
		a.HomeDERP == b.HomeDERP && a.PeerRelay == b.PeerRelay && a.KeyExpiry.Equal(b.KeyExpiry) && a.User == b.User &&
		slices.Equal(a.Tags, b.Tags) && a.Ephemeral == b.Ephemeral && a.Unknown == b.Unknown && a.Edge == b.Edge
}

// removeNode deletes nk from the store and memory, ends its stream with
// code and msg, and tells its peers.
func (s *Server) removeNode(ctx context.Context, nk key.NodePublic, code wire.ErrorCode, msg string) error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	e := s.nodes[nk]
	s.mu.Unlock()
	if e == nil {
		return ErrNotFound
	}
	if err := s.store.DeleteNode(ctx, e.rec.Node.ID); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete node: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[nk] != e {
		return nil
	}
	delete(s.nodes, nk)
	s.reg.releaseIPv4(e.rec.Node.Addresses)
	s.edge.dropRoutesLocked(e, false) // the store deleted them with the node
	if ss := s.sessions[nk]; ss != nil {
		ss.end(code, msg)
	}
	s.notifyLocked(e.rec.NetworkID, nk)
	return nil
}

// expireLocked ends e's stream and drops it from its peers' maps. s.mu held.
func (s *Server) expireLocked(e *nodeEntry) {
	if ss := s.sessions[e.rec.Node.Key]; ss != nil {
		ss.end(wire.CodeNodeExpired, "node key expired")
	}
	s.notifyLocked(e.rec.NetworkID, e.rec.Node.Key)
	s.edge.dropRoutesLocked(e, true)
	s.logger.Info("node key expired", "node", e.rec.Node.Key.ShortString(), "name", e.rec.Node.Name)
	s.audit(s.ctx, actorCoordinator, "node.expired", e.rec.Node.Name, "")
}

// findNodeLocked resolves a node by "nodekey:...", "network/name" or a
// name unique across networks. s.mu held.
func (s *Server) findNodeLocked(ref string) (*nodeEntry, error) {
	if strings.HasPrefix(ref, "nodekey:") {
		nk, err := key.ParseNodePublic(ref)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, ref)
		}
		if e := s.nodes[nk]; e != nil {
			return e, nil
		}
		return nil, fmt.Errorf("%w: node %s", ErrNotFound, nk.ShortString())
	}
	netName, name, scoped := strings.Cut(ref, "/")
	if !scoped {
		name = ref
	}
	var found *nodeEntry
	for _, e := range s.nodes {
		if e.rec.Node.Name != name {
			continue
		}
		if scoped {
			if n := s.networks[e.rec.NetworkID]; n == nil || n.Name != netName {
				continue
			}
		}
		if found != nil {
			return nil, fmt.Errorf("coordinator: node name %q is in several networks; use network/name", name)
		}
		found = e
	}
	if found == nil {
		return nil, fmt.Errorf("%w: node %q", ErrNotFound, ref)
	}
	return found, nil
}

// Nodes returns every node of every network, sorted by network then name.
func (s *Server) Nodes(ctx context.Context) ([]*wire.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	type item struct {
		net string
		n   *wire.Node
	}
	items := make([]item, 0, len(s.nodes))
	pol := s.currentPolicy()
	for _, e := range s.nodes {
		n := s.viewLocked(e)
		if _, ungranted := pol.HeldTags(n); len(ungranted) > 0 {
			c := *n // the view is shared: copy before adding to it
			c.UngrantedTags = ungranted
			n = &c
		}
		items = append(items, item{s.networks[e.rec.NetworkID].Name, n})
	}
	slices.SortFunc(items, func(a, b item) int {
		if c := strings.Compare(a.net, b.net); c != 0 {
			return c
		}
		return strings.Compare(a.n.Name, b.n.Name)
	})
	out := make([]*wire.Node, len(items))
	for i, it := range items {
		out[i] = it.n
	}
	return out, nil
}

// RemoveNode deletes the node ref ("name", "network/name" or
// "nodekey:..."): its stream ends, its peers drop it, and its key is no
// longer registered. It returns an error wrapping ErrNotFound if there is
// no such node.
func (s *Server) RemoveNode(ctx context.Context, ref string) error {
	s.mu.Lock()
	e, err := s.findNodeLocked(ref)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if err := s.removeNode(ctx, e.rec.Node.Key, wire.CodeNodeRemoved, "node was removed by an admin"); err != nil {
		return err
	}
	s.logger.Info("node removed", "node", e.rec.Node.Key.ShortString(), "name", e.rec.Node.Name)
	return nil
}

// ExpireNode sets the key expiry of node ref (as in RemoveNode) to now:
// its stream ends and its peers drop it until it registers again with an
// auth key.
func (s *Server) ExpireNode(ctx context.Context, ref string) error {
	s.mu.Lock()
	e, err := s.findNodeLocked(ref)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	now := s.now()
	if _, aerr := s.updateSelf(ctx, e.rec.Node.Key, func(n *NodeRecord) { n.Node.KeyExpiry = now }); aerr != nil {
		return aerr
	}
	s.mu.Lock()
	if e := s.nodes[e.rec.Node.Key]; e != nil && !e.expiryHandled {
		e.expiryHandled = true
		s.expireLocked(e)
	}
	s.mu.Unlock()
	return nil
}

// ensureNetwork returns the network called name, creating it (with domain
// NAME.BaseDomain) if it does not exist yet.
func (s *Server) ensureNetwork(ctx context.Context, name string) (*Network, error) {
	s.mu.Lock()
	network := s.netNames[name]
	s.mu.Unlock()
	if network != nil {
		return network, nil
	}
	if SanitizeLabel(name) != name {
		return nil, fmt.Errorf("%w: network name %q must be a DNS label (a-z, 0-9, -)", ErrInvalid, name)
	}
	n, err := s.store.EnsureNetwork(ctx, name, name+"."+s.baseDomain)
	if err != nil {
		return nil, fmt.Errorf("coordinator: create network %q: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.netNames[name]; cur != nil {
		return cur, nil
	}
	s.networks[n.ID] = n
	s.netNames[n.Name] = n
	s.logger.Info("network created", "network", n.Name, "domain", n.Domain)
	return n, nil
}
