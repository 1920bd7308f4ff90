package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Overlay address space. IPv4 comes from 100.64.0.0/10; a node's IPv6
// address is ULAPrefix with the node's IPv4 address in the low 32 bits, so
// both are unique and stable together.
var (
	// CGNATPrefix is the overlay IPv4 range (wire.OverlayIPv4).
	CGNATPrefix = wire.OverlayIPv4
	// ULAPrefix is the overlay IPv6 range (wire.OverlayIPv6).
	ULAPrefix = wire.OverlayIPv6

	firstIPv4 = netip.MustParseAddr("100.64.0.1")
	lastIPv4  = netip.MustParseAddr("100.127.255.254")
	// magicDNSAddr is the in-overlay DNS server; never handed to a node.
	magicDNSAddr = netip.MustParseAddr("100.100.100.100")
)

func nextIPv4(a netip.Addr) netip.Addr {
	n := a.Next()
	if !n.IsValid() || lastIPv4.Less(n) {
		return firstIPv4
	}
	return n
}

// ipv6For returns the overlay IPv6 address that goes with v4.
func ipv6For(v4 netip.Addr) netip.Addr {
	b := ULAPrefix.Addr().As16()
	v := v4.As4()
	copy(b[12:], v[:])
	return netip.AddrFrom16(b)
}

// registry is the coordinator's registration job: auth keys, admitting
// node keys (this file), the names (rename.go) and overlay addresses of
// nodes, and the queue of registrations waiting for interactive approval
// (approve.go). The queue stays here rather than with access control: a
// pending registration is a registration that has not finished, and
// approving it finishes it with an auth key made for it. The nodes
// themselves belong to the core (Server), which registry changes under
// Server.mu.
//
// Lock order: mu, then Server.persistMu, then Server.mu, then addrs (a
// leaf). pending has its own lock.
type registry struct {
	core     *Server
	devMode  bool
	approver Approver // never nil
	// nodeKeyExpiry is Options.NodeKeyExpiry resolved: > 0, or < 0 for never.
	nodeKeyExpiry time.Duration

	// mu serializes registrations and renames: name allocation. A
	// registration waits for it no longer than its deadline
	// (registerTimeout).
	mu ctxMutex

	// addrs allocates overlay IPv4 addresses; IPv6 ones follow them.
	addrs struct {
		sync.Mutex // guards the following fields
		used       map[netip.Addr]bool
		next       netip.Addr
	}

	// keys are the reusable auth keys lookupAuthKey read lately.
	keys struct {
		sync.Mutex // guards the following field
		byHash     map[[32]byte]knownKey
	}

	// clashes reads the nodes a new node clashed with in the store
	// (learnClashRegLocked); nil when this coordinator is the store's
	// only user.
	clashes ClashReader

	pending pendingRegs
	// shared keeps the pending registrations where the other
	// coordinators on the store find them (approveshare.go); nil when
	// this coordinator is the store's only user.
	shared ApprovalStore
	// lastSweep is when expired registrations were last deleted from
	// shared. Guarded by pending.mu.
	lastSweep time.Time
	// Log lines that anyone can cause, limited (limits.go): refused
	// registrations, and registrations waiting for approval or dropped
	// to make room for others.
	refusedLog, waitingLog, droppedLog logLimiter
}

// newRegistry returns the registration job of core on opts.
func newRegistry(core *Server, opts Options) *registry {
	rg := &registry{core: core, devMode: opts.DevMode, approver: opts.Approver, nodeKeyExpiry: opts.NodeKeyExpiry, mu: make(ctxMutex, 1)}
	rg.refusedLog = logLimiter{msg: "registration refused", burst: 1}
	rg.waitingLog = logLimiter{msg: "registration waiting for approval", burst: 5}
	rg.droppedLog = logLimiter{msg: "registration dropped to make room", burst: 1}
	if rg.approver == nil {
		rg.approver = adminApprover{}
	}
	if rg.nodeKeyExpiry == 0 {
		rg.nodeKeyExpiry = DefaultNodeKeyExpiry
	}
	rg.addrs.used = make(map[netip.Addr]bool)
	rg.addrs.next = firstIPv4
	rg.pending.byCode = make(map[string]*pendingReg)
	rg.pending.byKey = make(map[key.NodePublic]*pendingReg)
	rg.pending.bySource = make(map[netip.Addr]int)
	if nf, ok := opts.Store.(NodeFeed); ok && nf.SharedNodes() {
		if as, ok := opts.Store.(ApprovalStore); ok {
			rg.shared = as
		}
		if cr, ok := opts.Store.(ClashReader); ok {
			rg.clashes = cr
		}
	}
	return rg
}

// allocIPv4 returns the next free overlay IPv4 address. It stays free
// until useIPv4 marks it.
func (rg *registry) allocIPv4() (netip.Addr, error) {
	rg.addrs.Lock()
	defer rg.addrs.Unlock()
	a := rg.addrs.next
	for range 1 << 22 {
		if !rg.addrs.used[a] && a != magicDNSAddr {
			rg.addrs.next = nextIPv4(a)
			return a, nil
		}
		a = nextIPv4(a)
	}
	return netip.Addr{}, errors.New("coordinator: overlay address space exhausted")
}

// useIPv4 marks the IPv4 addresses among addrs as taken. With start, it
// also moves the allocation past them (loading nodes from the store).
func (rg *registry) useIPv4(addrs []netip.Prefix, start bool) {
	rg.addrs.Lock()
	defer rg.addrs.Unlock()
	for _, p := range addrs {
		if a := p.Addr(); a.Is4() {
			rg.addrs.used[a] = true
			if start && !a.Less(rg.addrs.next) {
				rg.addrs.next = nextIPv4(a)
			}
		}
	}
}

// jumpIPv4 moves the allocation to a random address of the range. Two
// coordinators registering at once on one store pick the same next free
// address, and one of them loses each round (learning the other's node
// only then); once one of them allocates elsewhere, they stop racing.
func (rg *registry) jumpIPv4() {
	first, last := addrUint32(firstIPv4), addrUint32(lastIPv4)
	rg.addrs.Lock()
	defer rg.addrs.Unlock()
	rg.addrs.next = addrFromUint32(first + rand.Uint32N(last-first+1))
}

func addrUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addrFromUint32(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// releaseIPv4 frees the addresses of a removed node.
func (rg *registry) releaseIPv4(addrs []netip.Prefix) {
	rg.addrs.Lock()
	defer rg.addrs.Unlock()
	for _, p := range addrs {
		delete(rg.addrs.used, p.Addr())
	}
}

// SanitizeLabel turns a hostname into a DNS label: the first dot-separated
// part, lower case, runs of other characters than a-z, 0-9 and '-'
// replaced by one '-', at most 63 bytes, "node" if nothing is left.
func SanitizeLabel(hostname string) string {
	hostname, _, _ = strings.Cut(hostname, ".")
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(hostname) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.Trim(b.String(), "-")
	if len(out) > 63 {
		out = strings.TrimRight(out[:63], "-")
	}
	if out == "" {
		return "node"
	}
	return out
}

// uniqueNameLocked returns base, or base-2, base-3, ... whichever is not
// taken in the network. It looks at the names that could be one of
// those, which all begin with base's first 40 bytes: building a set of
// every name in the network cost each registration O(N) allocations under
// s.mu. s.mu held.
func (rg *registry) uniqueNameLocked(networkID int64, base string) string {
	s := rg.core
	// A candidate keeps at least 63-12 bytes of base (a suffix has at
	// most 11 digits), less trailing dashes.
	prefix := strings.TrimRight(base[:min(len(base), 40)], "-")
	taken := make(map[string]bool)
	for _, e := range s.nodes {
		if e.rec.NetworkID == networkID && strings.HasPrefix(e.rec.Node.Name, prefix) {
			taken[e.rec.Node.Name] = true
		}
	}
	if !taken[base] {
		return base
	}
	for i := 2; ; i++ {
		suf := "-" + strconv.Itoa(i)
		b := base
		if len(b)+len(suf) > 63 {
			b = strings.TrimRight(b[:63-len(suf)], "-")
		}
		if c := b + suf; !taken[c] {
			return c
		}
	}
}

// hashSecret returns the stored hash of an auth key or token.
func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// lookupAuthKey finds a usable auth key. A reusable key it found is
// kept for keyCacheTTL (knownKeys), so that a burst of registrations
// with one key, the usual way to enroll a fleet, reads it once: on a
// shared store each read is a round trip under rg.mu. What it keeps may
// outlive the key's deletion by another coordinator by that long, and
// no more: a node is stored only with a use of its key in the same
// transaction (NodeStore.InsertNode, RenewNode), which finds no key.
func (rg *registry) lookupAuthKey(ctx context.Context, secret string) (*AuthKey, *apiError) {
	s := rg.core
	h := sha256.Sum256([]byte(secret))
	now := s.now()
	ak := rg.knownKey(h, now)
	if ak == nil {
		var err error
		ak, err = s.store.AuthKeyByHash(ctx, h[:])
		if errors.Is(err, ErrNotFound) {
			return nil, errorf(http.StatusUnauthorized, wire.CodeAuthKeyInvalid, "auth key is not valid")
		}
		if err != nil {
			s.logger.Error("look up auth key", "err", err)
			return nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
		}
		if ak.Reusable {
			rg.keepKey(h, ak, now)
		}
	}
	if !ak.Expiry.IsZero() && !now.Before(ak.Expiry) {
		return nil, errorf(http.StatusUnauthorized, wire.CodeAuthKeyInvalid, "auth key %s expired", ak.Prefix)
	}
	if !ak.Reusable && ak.UseCount > 0 {
		return nil, errorf(http.StatusUnauthorized, wire.CodeAuthKeyInvalid, "auth key %s was already used", ak.Prefix)
	}
	return ak, nil
}

// keyCacheTTL is how long lookupAuthKey keeps a reusable key it read;
// maxKnownKeys bounds how many it keeps.
const (
	keyCacheTTL  = 10 * time.Second
	maxKnownKeys = 64
)

// knownKey returns the reusable key with the hash h that lookupAuthKey
// read within keyCacheTTL before now, or nil. The key is shared: callers
// must not change it.
func (rg *registry) knownKey(h [32]byte, now time.Time) *AuthKey {
	rg.keys.Lock()
	defer rg.keys.Unlock()
	k, ok := rg.keys.byHash[h]
	if !ok || now.Sub(k.at) >= keyCacheTTL || now.Before(k.at) {
		return nil
	}
	return k.ak
}

// keepKey keeps the reusable key ak with the hash h, read at now.
func (rg *registry) keepKey(h [32]byte, ak *AuthKey, now time.Time) {
	rg.keys.Lock()
	defer rg.keys.Unlock()
	if rg.keys.byHash == nil || len(rg.keys.byHash) >= maxKnownKeys {
		rg.keys.byHash = make(map[[32]byte]knownKey)
	}
	rg.keys.byHash[h] = knownKey{ak: ak, at: now}
}

// forgetKeys drops the keys lookupAuthKey keeps, when this coordinator
// deletes one.
func (rg *registry) forgetKeys() {
	rg.keys.Lock()
	defer rg.keys.Unlock()
	rg.keys.byHash = nil
}

// knownKey is a reusable key lookupAuthKey read, and when.
type knownKey struct {
	ak *AuthKey
	at time.Time
}

// ClashReader is what a store shared by several coordinators adds for
// registrations it refuses as conflicts. The coordinator finds it on
// Options.Store by type assertion and uses it when the store is shared
// (NodeFeed.SharedNodes); sqlstore's Store implements it.
type ClashReader interface {
	// NodesClashing returns the nodes that hold rec's node key, its
	// name in its network, or either of its addresses, and the Presence
	// of those among them that stream from a coordinator on another
	// store (the others are absent).
	NodesClashing(ctx context.Context, rec *NodeRecord) (recs []*NodeRecord, remote map[wire.NodeID]Presence, err error)
}

// registerAttempts bounds how often register tries again after the store
// refused a new node because another coordinator on the same store took
// its name, address or key first. Coordinators registering at once pick
// the same next name, so one of them loses each round; a random pause
// before the next attempt lets the others' registrations through.
const registerAttempts = 16

// errRegisterConflict is registerOnce's answer when the store refused the
// new node with ErrConflict.
var errRegisterConflict = errorf(http.StatusConflict, wire.CodeUnavailable, "name or address taken by another coordinator; try again")

// registerTimeout bounds a registration: its wait for the registrations
// before it (they run one at a time) and its reads and writes of the
// store. A database that stops answering then fails it with
// errRegisterTimeout, instead of holding it, and every registration
// queued behind it, until TCP gives up on the connection (minutes, or
// never for a database that still acknowledges). A variable for tests.
var registerTimeout = 30 * time.Second

// registerRetryAfter is the Retry-After of errRegisterTimeout: how long a
// node waits before it sends its registration again. A variable for
// tests.
var registerRetryAfter = 5 * time.Second

// errRegisterTimeout returns the answer to a registration that ran out of
// registerTimeout: 503 with Retry-After, which coordclient honours.
func errRegisterTimeout() *apiError {
	return &apiError{status: http.StatusServiceUnavailable, code: wire.CodeUnavailable,
		msg: "the coordinator's database did not answer in time; try again", retryAfter: registerRetryAfter}
}

// errRegisterStore returns the answer to a registration a store error
// failed (the database refused or dropped the connection, or its driver
// gave up connecting): 503 with Retry-After too, as the database is most
// likely down for a moment, rather than a 500 the node does not retry.
func errRegisterStore() *apiError {
	return &apiError{status: http.StatusServiceUnavailable, code: wire.CodeUnavailable,
		msg: "the coordinator's database failed; try again", retryAfter: registerRetryAfter}
}

// registerBounded runs register for r within registerTimeout, and finishes
// even if the node hangs up, so that memory and store agree. A
// registration that ran out of time answers errRegisterTimeout, whatever
// step (a store error, a canceled wait) it failed at.
func (rg *registry) registerBounded(r *http.Request, q *sealedRequest, req *wire.RegisterRequest) (*wire.RegisterResponse, *apiError) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), registerTimeout)
	defer cancel()
	resp, aerr := rg.register(ctx, q, req, localRequest(r))
	switch {
	case aerr == nil:
	case ctx.Err() != nil:
		aerr = errRegisterTimeout()
	case aerr.status == http.StatusInternalServerError && aerr.code == wire.CodeInternal:
		aerr = errRegisterStore() // a store error
	}
	return resp, aerr
}

// ctxMutex is a mutex whose holder-to-be may give up waiting when its
// context ends (LockContext). Make it with make(ctxMutex, 1).
type ctxMutex chan struct{}

// Lock locks m, waiting as long as it takes.
func (m ctxMutex) Lock() { m <- struct{}{} }

// LockContext locks m, or returns ctx's error if ctx ends first.
func (m ctxMutex) LockContext(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unlock unlocks m, which must be locked.
func (m ctxMutex) Unlock() { <-m }

// register handles a RegisterRequest whose sender proved it holds
// req.NodeKey; q is the request as opened, which register records
// against replays (Server.seeRequest) once it knows the request may
// change something: it comes from a registered node key, carries a valid
// auth key, or joins in dev mode. A request that is refused before
// (an unknown key with a wrong auth key, a logout of an unknown key)
// is not recorded: it changes nothing, so its replay changes nothing
// either, and anyone can send such requests with keys of their own.
// loopback says whether it came from this host (localRequest).
//
// Memory may lag the store when other coordinators share it: if the
// store refuses the new node as a conflict, register re-reads the nodes
// from the store and tries again, a few times.
func (rg *registry) register(ctx context.Context, q *sealedRequest, req *wire.RegisterRequest, loopback bool) (*wire.RegisterResponse, *apiError) {
	s := rg.core
	if err := rg.mu.LockContext(ctx); err != nil {
		return nil, errRegisterTimeout()
	}
	defer rg.mu.Unlock()
	for i := 1; ; i++ {
		resp, clash, aerr := rg.registerOnce(ctx, q, req, loopback)
		if aerr != errRegisterConflict {
			return resp, aerr
		}
		if i == registerAttempts {
			return nil, errorf(http.StatusServiceUnavailable, wire.CodeUnavailable, "registration kept conflicting with other coordinators; try again")
		}
		t := time.NewTimer(rand.N(time.Duration(i) * 5 * time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errRegisterTimeout()
		case <-t.C:
		}
		if err := rg.learnClashRegLocked(ctx, clash); err != nil {
			s.logger.Error("resync nodes after a registration conflict", "err", err)
			return nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
		}
	}
}

// learnClashRegLocked brings into memory what the store refused the new
// node rec for: the nodes that hold its key, name or addresses, which
// other coordinators registered a moment ago (their notifications on the
// way). When another took the address, the allocation moves elsewhere
// (jumpIPv4). Without a ClashReader, or when it finds no such node (it
// was removed meanwhile), every node is read again (syncNodesRegLocked).
// rg.mu held.
func (rg *registry) learnClashRegLocked(ctx context.Context, rec *NodeRecord) error {
	s := rg.core
	if rg.clashes == nil {
		return s.syncNodesRegLocked(ctx)
	}
	found, err := rg.readClashesRegLocked(ctx, rec)
	if err != nil {
		return err
	}
	if !found {
		return s.syncNodesRegLocked(ctx)
	}
	return nil
}

// readClashesRegLocked reads the nodes that clash with rec and applies
// them to memory, reporting whether there were any. As in syncNodes it
// holds persistMu from the read until memory has them. rg.mu held.
func (rg *registry) readClashesRegLocked(ctx context.Context, rec *NodeRecord) (bool, error) {
	s := rg.core
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	recs, remote, err := rg.clashes.NodesClashing(ctx, rec)
	if err != nil {
		return false, fmt.Errorf("coordinator: read the nodes a registration clashed with: %w", err)
	}
	if len(recs) == 0 {
		return false, nil
	}
	for _, r := range recs {
		if _, err := s.networkByID(ctx, r.NetworkID); err != nil {
			return false, err
		}
	}
	addrTaken := false
	s.mu.Lock()
	for _, r := range recs {
		s.applyRecordLocked(r, remote[r.Node.ID])
		for _, p := range r.Node.Addresses {
			addrTaken = addrTaken || slices.Contains(rec.Node.Addresses, p)
		}
	}
	s.mu.Unlock()
	if addrTaken {
		rg.jumpIPv4()
	}
	return true, nil
}

// registerOnce is one attempt of register. With errRegisterConflict it
// returns the new node the store refused (clash). rg.mu held.
func (rg *registry) registerOnce(ctx context.Context, q *sealedRequest, req *wire.RegisterRequest, loopback bool) (_ *wire.RegisterResponse, clash *NodeRecord, _ *apiError) {
	s := rg.core
	see := func() *apiError { return s.seeRequest(ctx, q) }
	now := s.now()
	s.mu.Lock()
	var existing *NodeRecord
	if e := s.nodes[req.NodeKey]; e != nil {
		rec := e.rec
		existing = &rec
	}
	s.mu.Unlock()

	if req.Logout {
		if existing == nil {
			return nil, nil, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered")
		}
		if aerr := see(); aerr != nil {
			return nil, nil, aerr
		}
		if err := s.removeNode(ctx, req.NodeKey, wire.CodeNodeRemoved, "node logged out"); err != nil {
			return nil, nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
		}
		s.logger.Info("node logged out", "node", req.NodeKey.ShortString(), "name", existing.Node.Name)
		s.audit(ctx, actorNode(existing.Node.Name), "node.logout", existing.Node.Name, "")
		return &wire.RegisterResponse{}, nil, nil
	}

	if existing != nil {
		if !existing.Node.Expired(now) && !req.Reauth {
			if aerr := see(); aerr != nil {
				return nil, nil, aerr
			}
			// Rejoin: same name and addresses, unless the node's hostname
			// changed: then it asks for the name of its new hostname, and
			// keeps its name if that one is taken.
			nameTaken := false
			if req.Hostname != "" && req.Hostname != existing.Node.Hostname {
				if want := SanitizeLabel(req.Hostname); want != "" && want != existing.Node.Name {
					_, err := rg.renameNodeRegLocked(ctx, actorNode(existing.Node.Name), existing.Node.Key.String(), want)
					switch {
					case errors.Is(err, ErrConflict):
						nameTaken = true
					case err != nil:
						s.logger.Warn("rename on a hostname change", "node", req.NodeKey.ShortString(), "to", want, "err", err)
					}
				}
			}
			// Refresh what the node says about itself.
			n, aerr := s.updateSelf(ctx, req.NodeKey, func(n *NodeRecord) {
				if !req.DiscoKey.IsZero() {
					n.Node.DiscoKey = req.DiscoKey
				}
				if req.Hostname != "" {
					n.Node.Hostname = req.Hostname
				}
				if req.OS != "" {
					n.Node.OS = req.OS
				}
			})
			if aerr != nil {
				return nil, nil, aerr
			}
			return &wire.RegisterResponse{Node: n, NameChanged: nameTaken}, nil, nil
		}
		// In dev mode a node on loopback renews without a key, as it
		// joined; anywhere else renewing takes an auth key.
		var ak *AuthKey
		var renewed *NodeRecord // as stored with ak's use (RenewNode)
		switch {
		case req.AuthKey != "":
			var aerr *apiError
			if ak, aerr = rg.lookupAuthKey(ctx, req.AuthKey); aerr != nil {
				return nil, nil, aerr
			}
			if ak.NetworkID != existing.NetworkID {
				return nil, nil, errorf(http.StatusUnauthorized, wire.CodeAuthKeyInvalid, "auth key belongs to another network")
			}
			if ak.User != "" && existing.Node.User != "" && ak.User != existing.Node.User {
				return nil, nil, errorf(http.StatusForbidden, wire.CodeForbidden, "this node belongs to %s; authenticate it again as %s", existing.Node.User, existing.Node.User)
			}
			if aerr := see(); aerr != nil {
				return nil, nil, aerr
			}
			// The key's use and the new expiry are stored in one
			// transaction before the node in memory changes: a
			// registration that fails or runs out of time part way
			// neither spends a one-off key nor renews the node, and the
			// node's retry may use the key again.
			rec := *existing
			rec.Node.KeyExpiry = keyExpiryFor(ak, &rec.Node, now, rg.nodeKeyExpiry)
			rec.AuthKeyID = ak.ID
			if err := s.store.RenewNode(ctx, &rec, now); err != nil {
				switch {
				case errors.Is(err, ErrAuthKeySpent):
					return nil, nil, rg.consumeError(err, ak)
				case errors.Is(err, ErrNotFound):
					return nil, nil, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered")
				}
				s.logger.Error("renew node", "node", req.NodeKey.ShortString(), "err", err)
				return nil, nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
			}
			renewed = &rec
		case rg.devMode && loopback:
			if aerr := see(); aerr != nil {
				return nil, nil, aerr
			}
		default:
			return nil, nil, errorf(http.StatusForbidden, wire.CodeNodeExpired, "node key expired; register again with an auth key")
		}
		n, aerr := s.updateSelf(ctx, req.NodeKey, func(n *NodeRecord) {
			if renewed != nil {
				n.Node.KeyExpiry, n.AuthKeyID = renewed.Node.KeyExpiry, renewed.AuthKeyID
			} else {
				n.Node.KeyExpiry = keyExpiryFor(ak, &n.Node, now, rg.nodeKeyExpiry)
			}
			if !req.DiscoKey.IsZero() {
				n.Node.DiscoKey = req.DiscoKey
			}
		})
		if aerr != nil && renewed != nil {
			// The renewal and the key's use are stored: answer it, or the
			// node's retry would find its one-off key spent. The node's
			// own fields are written again with its next update.
			s.mu.Lock()
			if e := s.nodes[req.NodeKey]; e != nil {
				n, aerr = s.viewLocked(e), nil
			}
			s.mu.Unlock()
		}
		if aerr != nil {
			return nil, nil, aerr
		}
		s.mu.Lock()
		if e := s.nodes[req.NodeKey]; e != nil {
			e.expiryHandled = false
			s.notifyLocked(e.rec.NetworkID, req.NodeKey)
		}
		s.mu.Unlock()
		via := "dev mode"
		if ak != nil {
			via = "auth_key=" + ak.Prefix
		}
		s.logger.Info("node re-authenticated", "node", req.NodeKey.ShortString(), "name", n.Name, "via", via)
		s.audit(ctx, actorNode(n.Name), "node.reauth", n.Name, via)
		return &wire.RegisterResponse{Node: n}, nil, nil
	}

	// A new node.
	var ak *AuthKey
	s.mu.Lock()
	network := s.netNames[DefaultNetwork]
	s.mu.Unlock()
	switch {
	case req.AuthKey != "":
		var aerr *apiError
		if ak, aerr = rg.lookupAuthKey(ctx, req.AuthKey); aerr != nil {
			return nil, nil, aerr
		}
		var err error
		if network, err = s.networkByID(ctx, ak.NetworkID); err != nil {
			s.logger.Error("look up network", "err", err)
			return nil, nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
		}
		if network == nil {
			return nil, nil, errorf(http.StatusUnauthorized, wire.CodeAuthKeyInvalid, "auth key's network is gone")
		}
	case rg.devMode && loopback:
	default:
		return nil, nil, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered; joining needs an auth key")
	}
	if aerr := see(); aerr != nil {
		return nil, nil, aerr
	}

	base := SanitizeLabel(req.Hostname)
	s.mu.Lock()
	name := rg.uniqueNameLocked(network.ID, base)
	v4, err := rg.allocIPv4()
	s.mu.Unlock()
	if err != nil {
		return nil, nil, errorf(http.StatusServiceUnavailable, wire.CodeUnavailable, "%v", err)
	}
	rec := &NodeRecord{
		Node: wire.Node{
			Key:       req.NodeKey,
			DiscoKey:  req.DiscoKey,
			Name:      name,
			DNSName:   name + "." + network.Domain + ".",
			Hostname:  req.Hostname,
			OS:        req.OS,
			Addresses: []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(ipv6For(v4), 128)},
			LastSeen:  now,
		},
		NetworkID: network.ID,
		CreatedAt: now,
		RegStamp:  q.ts,
	}
	if ak != nil {
		rec.AuthKeyID = ak.ID
		rec.Node.User = ak.User
		rec.Node.Tags = slices.Clone(ak.Tags)
		rec.Node.Ephemeral = ak.Ephemeral
		rec.Node.Edge = ak.Edge
	}
	rec.Node.KeyExpiry = keyExpiryFor(ak, &rec.Node, now, rg.nodeKeyExpiry)
	if err := s.store.InsertNode(ctx, rec, now); err != nil {
		if ak != nil && errors.Is(err, ErrAuthKeySpent) {
			return nil, nil, rg.consumeError(err, ak)
		}
		if errors.Is(err, ErrConflict) {
			return nil, rec, errRegisterConflict
		}
		s.logger.Error("insert node", "node", req.NodeKey.ShortString(), "err", err)
		return nil, nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
	}
	s.mu.Lock()
	s.nodes[req.NodeKey] = &nodeEntry{rec: *rec, offlineSince: now}
	rg.useIPv4(rec.Node.Addresses, false)
	s.notifyLocked(network.ID, req.NodeKey)
	view := s.viewLocked(s.nodes[req.NodeKey])
	s.mu.Unlock()
	attrs := []any{"node", req.NodeKey.ShortString(), "name", name, "network", network.Name, "ipv4", v4}
	if ak != nil {
		attrs = append(attrs, "auth_key", ak.Prefix)
	} else {
		attrs = append(attrs, "dev_mode", true)
	}
	s.logger.Info("node registered", attrs...)
	if ak != nil {
		s.audit(ctx, actorNode(name), "node.register", name, "network="+network.Name+" auth_key="+ak.Prefix)
	} else {
		s.audit(ctx, actorNode(name), "node.register", name, "network="+network.Name+" dev_mode")
	}
	return &wire.RegisterResponse{Node: view, NameChanged: name != base}, nil, nil
}

func (rg *registry) consumeError(err error, ak *AuthKey) *apiError {
	s := rg.core
	if errors.Is(err, ErrAuthKeySpent) {
		return errorf(http.StatusUnauthorized, wire.CodeAuthKeyInvalid, "auth key %s was already used or expired", ak.Prefix)
	}
	s.logger.Error("consume auth key", "auth_key", ak.Prefix, "err", err)
	return errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
}

func (rg *registry) handleRegister(w http.ResponseWriter, r *http.Request) {
	s := rg.core
	var req wire.RegisterRequest
	q, aerr := s.openRequest(w, r, &req, func() (key.NodePublic, time.Time) { return req.NodeKey, req.Timestamp })
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	nk := q.nk
	cleanRegisterRequest(&req)
	if rg.interactiveRegister(w, r, q, &req) {
		return
	}
	resp, aerr := s.countRegistration(rg.registerBounded(r, q, &req))
	if aerr != nil {
		if aerr.status >= 500 {
			s.logger.Warn("registration failed", "node", nk.ShortString(), "err", aerr)
		} else {
			rg.refusedLog.log(s.logger, s.now(), "node", nk.ShortString(), "code", aerr.code)
		}
		writeError(w, aerr)
		return
	}
	s.writeSealed(w, nk, resp)
}
