// Package coordclient is the node side of the coordinator protocol:
// register a node key, then stream netmap updates (a full map followed by
// deltas) and report the node's endpoints. It also holds Admin, the client
// of the coordinator's admin API.
//
// The protocol (documented in full in beam.dev/beam/coordinator, which
// this package does not import): every request is a JSON envelope
// {"node_key", "sealed"} where sealed is the JSON request sealed with the
// node's private key to the coordinator's machine key (fetched from
// GET /key); responses are sealed back to the node key. A map stream is a
// sequence of frames: a 4-byte big-endian length, then that many bytes of
// sealed JSON wire.MapResponse.
package coordclient

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// maxResponseSize bounds a non-stream response body.
const maxResponseSize = 4 << 20

// Options configures a Client.
type Options struct {
	// ServerURL is the coordinator's base URL ("http://127.0.0.1:8080"),
	// or the URLs of several coordinators sharing one database, separated
	// by commas ("https://c1.example,https://c2.example"). Required. A
	// host name that resolves to several addresses counts as one
	// coordinator per address (see RunResponses).
	ServerURL string
	// PrivateKey is the node key. Required.
	PrivateKey key.NodePrivate
	// DiscoKey is the node's disco public key, reported to peers; zero for none.
	DiscoKey key.DiscoPublic
	// HTTPClient makes the requests; nil means a new http.Client. It must
	// not set a Timeout, which would cut map streams.
	HTTPClient *http.Client
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// OnConnState, if non-nil, is called by Run with true when a map
	// stream delivers its first (full) map and with false when a stream
	// ends. It must not block.
	OnConnState func(connected bool)
	// PeerRelay is the UDP port of the node's peer relay server, reported
	// in every MapRequest; 0 for none.
	PeerRelay uint16
	// LookupNetIP resolves the host names of ServerURL (network "ip");
	// nil means net.DefaultResolver.LookupNetIP.
	LookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// ServerKey is the coordinator's machine key the node registered
	// with, pinned: the client uses it without asking GET /key, and
	// refuses (ErrServerKeyChanged) a coordinator that answers with
	// another. Replicas of one network share their machine key. Zero
	// means the client fetches the key on first use and trusts it
	// (OnServerKey tells which).
	ServerKey key.MachinePublic
	// OnServerKey, if non-nil, is called with the coordinator's machine
	// key when the client fetched it without one pinned, so the caller
	// can pin it. It must not block.
	OnServerKey func(key.MachinePublic)
	// OnKeyRefused, if non-nil, is called by Run each time a map stream
	// ends because the coordinator answered with a machine key other
	// than the pinned one (ServerKey): Run goes on retrying, and the
	// caller can tell its user. It must not block.
	OnKeyRefused func(*KeyChangedError)
	// ServerBinds says the coordinator is known to bind its replies to
	// requests (Client.Binds of an earlier client): then, as from a
	// coordinator that bound a reply to this client, a terminal error
	// (node removed, expired, not registered) is taken only sealed.
	ServerBinds bool
	// BlockCache, if set, keeps the blocks of blocked map frames
	// (wire.BlockedMapFrame) this client checked and opened, for every
	// client that shares it: a program that runs many clients of one
	// coordinator in one process (a load generator) then checks and opens
	// each block once. Nil: each client checks and opens every block.
	BlockCache *BlockCache
}

// Client talks to a coordinator (one of several, when ServerURL names
// more) as one node. Its methods are safe for concurrent use; Run must
// not be called twice at once.
type Client struct {
	blocks  *BlockCache // Options.BlockCache
	bases   []*url.URL  // the URLs of Options.ServerURL, in order
	lookup  func(ctx context.Context, network, host string) ([]netip.Addr, error)
	priv    key.NodePrivate
	pub     key.NodePublic
	disco   key.DiscoPublic
	relay   uint16 // Options.PeerRelay
	hc      *http.Client
	logger  *slog.Logger
	epsWake chan struct{} // cap 1: endpoints changed
	now     func() time.Time
	onConn  func(bool)
	// pinned is Options.ServerKey; onKey is Options.OnServerKey.
	pinned key.MachinePublic
	onKey  func(key.MachinePublic)
	binds  bool                   // Options.ServerBinds
	onRef  func(*KeyChangedError) // Options.OnKeyRefused

	mu sync.Mutex // guards the following fields
	// serverKey is the coordinator's machine key in use; zero until
	// fetched (or pinned).
	serverKey key.MachinePublic
	// serverBox is the box key shared with the coordinator's machine
	// key; zero until fetched.
	serverBox key.Shared
	hostname  string
	endpoints []netip.AddrPort
	homeDERP  int
	epsGen    uint64 // bumped by SetEndpoints
	// targets are the coordinators to talk to (targets.go): one per URL,
	// or per address of a URL's host name once resolved; cur indexes the
	// one in use.
	targets []*target
	cur     int
	// streaming is the target the map stream is on; nil while none is.
	streaming *target
	// binding holds the targets (by String) that bound a reply to its
	// request (bind.go): unbound replies from them are refused.
	binding map[string]bool
	// warnedUnbound holds the targets logged as not binding replies.
	warnedUnbound map[string]bool

	// baseTransport is the transport of Options.HTTPClient when it can be
	// cloned, for the per-target clients; nil if it cannot.
	baseTransport *http.Transport
	hcMu          sync.Mutex              // guards hcs
	hcs           map[string]*http.Client // per-target clients by host and address
}

// New returns a Client for opts. It does no I/O.
func New(opts Options) (*Client, error) {
	if opts.ServerURL == "" {
		return nil, errors.New("coordclient: Options.ServerURL is required")
	}
	urls, err := SplitServerURLs(opts.ServerURL)
	if err != nil {
		return nil, err
	}
	if opts.PrivateKey.IsZero() {
		return nil, errors.New("coordclient: Options.PrivateKey is required")
	}
	c := &Client{
		lookup:  opts.LookupNetIP,
		priv:    opts.PrivateKey,
		pub:     opts.PrivateKey.Public(),
		disco:   opts.DiscoKey,
		relay:   opts.PeerRelay,
		hc:      opts.HTTPClient,
		logger:  opts.Logger,
		epsWake: make(chan struct{}, 1),
		now:     time.Now,
		onConn:  opts.OnConnState,
		pinned:  opts.ServerKey,
		binds:   opts.ServerBinds,
		onKey:   opts.OnServerKey,
		onRef:   opts.OnKeyRefused,
		blocks:  opts.BlockCache,
	}
	if !c.pinned.IsZero() {
		c.serverKey = c.pinned
		c.serverBox = c.priv.Shared(c.pinned)
	}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	for _, s := range urls {
		u, _ := url.Parse(s) // checked by SplitServerURLs
		c.bases = append(c.bases, u)
	}
	if c.lookup == nil {
		c.lookup = net.DefaultResolver.LookupNetIP
	}
	switch tr := c.hc.Transport.(type) {
	case nil:
		c.baseTransport, _ = http.DefaultTransport.(*http.Transport)
	case *http.Transport:
		c.baseTransport = tr
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	c.logger = c.logger.With("component", "coordclient")
	return c, nil
}

// NodeKey returns the client's node public key.
func (c *Client) NodeKey() key.NodePublic { return c.pub }

// ServerKey returns the coordinator's machine key the client uses: the
// pinned one (Options.ServerKey), else the one it fetched; zero before
// the first request.
func (c *Client) ServerKey() key.MachinePublic {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.serverKey
}

// machineKey returns the box key the node shares with the coordinator's
// machine key, and t's boot epoch (nil from a coordinator older than
// wire.BootEpochVersion). It asks t (GET wire.PathKey) for both the
// first time and after forgetKey: the key is the pinned one
// (Options.ServerKey; t answering another is a *KeyChangedError), else
// the one t gives. One X25519 per coordinator key, not per message or
// target: replicas of one coordinator share their machine key, each
// with an epoch of its own.
func (c *Client) machineKey(ctx context.Context, t *target) (key.Shared, []byte, error) {
	c.mu.Lock()
	box, epoch, ok := c.serverBox, t.epoch, t.keyed
	c.mu.Unlock()
	if ok && !box.IsZero() {
		return box, epoch, nil
	}
	k, epoch, err := c.fetchKey(ctx, t)
	if err != nil {
		return key.Shared{}, nil, err
	}
	if !c.pinned.IsZero() && k != c.pinned {
		return key.Shared{}, nil, &KeyChangedError{Server: t.String(), Pinned: c.pinned, Got: k}
	}
	c.mu.Lock()
	box = c.serverBox
	fresh := c.serverKey != k || box.IsZero()
	c.mu.Unlock()
	if fresh {
		box = c.priv.Shared(k)
	}
	c.mu.Lock()
	c.serverBox, c.serverKey = box, k
	t.epoch, t.keyed = epoch, true
	c.mu.Unlock()
	if fresh && c.onKey != nil {
		c.onKey(k)
	}
	return box, epoch, nil
}

// forgetKey makes the next request to t ask for its key and epoch again.
func (c *Client) forgetKey(t *target) {
	c.mu.Lock()
	t.keyed = false
	c.mu.Unlock()
}

// fetchKey asks t for the coordinator's machine key (GET /key), which
// nothing authenticates: trust on first use, and https:// protects it;
// and for its boot epoch (wire.HeaderBootEpoch; nil if it has none).
func (c *Client) fetchKey(ctx context.Context, t *target) (key.MachinePublic, []byte, error) {
	var k key.MachinePublic
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url(wire.PathKey), nil)
	if err != nil {
		return k, nil, fmt.Errorf("coordclient: fetch server key: %w", err)
	}
	resp, err := t.hc.Do(req)
	if err != nil {
		return k, nil, fmt.Errorf("%w: fetch server key: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return k, nil, fmt.Errorf("%w: fetch server key: %w", ErrUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return k, nil, fmt.Errorf("coordclient: fetch server key: %w", errorFromBody(resp.StatusCode, body))
	}
	k, err = key.ParseMachinePublic(strings.TrimSpace(string(body)))
	if err != nil {
		return k, nil, fmt.Errorf("coordclient: server key: %w", err)
	}
	var epoch []byte
	if v := resp.Header.Get(wire.HeaderBootEpoch); v != "" {
		epoch, err = hex.DecodeString(v)
		if err != nil || len(epoch) != wire.BootEpochLen {
			return k, nil, fmt.Errorf("%w: boot epoch %q: want %d bytes in hex", ErrBadResponse, v, wire.BootEpochLen)
		}
	}
	return k, epoch, nil
}

// keyChanged handles a bad_seal answer from t: the coordinator could not
// open a request sealed to the key in use. Without a pinned key it
// forgets the key, to fetch it again, and reports true (try again).
// With one, it asks t for its key to say what happened: another key is
// ErrServerKeyChanged, the same one is bad_seal's error e.
func (c *Client) keyChanged(ctx context.Context, t *target, e *Error) (retry bool, err error) {
	if c.pinned.IsZero() {
		c.mu.Lock()
		c.serverBox, c.serverKey = key.Shared{}, key.MachinePublic{}
		t.keyed = false
		c.mu.Unlock()
		return true, nil
	}
	k, _, err := c.fetchKey(ctx, t)
	if err != nil || k == c.pinned {
		return false, e
	}
	return false, &KeyChangedError{Server: t.String(), Pinned: c.pinned, Got: k}
}

// stamp is what a sealed request carries to be fresh and bound: the
// time it is sealed, its reply nonce (wire.RegisterRequest.Nonce) and
// the boot epoch of the coordinator it is sealed for
// (wire.RegisterRequest.Epoch; nil for a coordinator without one).
type stamp struct {
	now   time.Time
	nonce []byte
	epoch []byte
}

// buildFunc builds a sealed request stamped with st.
type buildFunc func(st stamp) any

// post seals the request that build returns and POSTs it to path on the
// current target; when that cannot be reached, the client moves to the
// next target and tries there, until each was tried once. See postTo.
func (c *Client) post(ctx context.Context, path string, build buildFunc) (*reply, error) {
	rp, _, err := c.postAny(ctx, path, build)
	return rp, err
}

// postAny is post, also returning the target that answered (or the last
// one tried).
func (c *Client) postAny(ctx context.Context, path string, build buildFunc) (*reply, *target, error) {
	for tried := 1; ; tried++ {
		t := c.current()
		rp, err := c.postTo(ctx, t, path, build)
		if err == nil || !errors.Is(err, ErrUnreachable) || ctx.Err() != nil {
			return rp, t, err
		}
		if n := c.advance(t); tried >= n {
			return nil, t, err
		}
		c.logger.Debug("coordinator unreachable; trying the next", "server", t.String(), "err", err)
	}
}

// postTo seals the request that build returns and POSTs it to path on t.
// On a bad_seal answer (the coordinator's key changed) it refetches the
// key and tries once more, unless the key is pinned (keyChanged); on a
// stale_epoch one (it restarted, or t is another replica than the one
// whose epoch the client had) it asks t for its epoch again and tries
// once more. A non-200 answer becomes an *Error. The
// reply returned opens the answer, which the caller must read or close
// (reply.resp.Body).
func (c *Client) postTo(ctx context.Context, t *target, path string, build buildFunc) (*reply, error) {
	refetched := false
	for attempt := 0; ; attempt++ {
		box, epoch, err := c.machineKey(ctx, t)
		if err != nil {
			return nil, err
		}
		nonce := newNonce()
		clear, err := json.Marshal(build(stamp{now: c.now(), nonce: nonce, epoch: epoch}))
		if err != nil {
			return nil, fmt.Errorf("coordclient: encode request: %w", err)
		}
		body, _ := json.Marshal(wire.Envelope{NodeKey: c.pub, Sealed: box.Seal(clear)})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url(path), bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("coordclient: %s: %w", path, err)
		}
		req.Header.Set("Content-Type", "application/json")
		// Resending is safe: the coordinator's replay cache refuses a sealed
		// request it already took. So let the transport send it again on a
		// fresh connection when a pooled one turns out dead before any
		// answer (the coordinator restarted since it was last used).
		req.Header["Idempotency-Key"] = nil
		resp, err := t.hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, path, err)
		}
		if resp.StatusCode == http.StatusOK {
			return &reply{c: c, t: t, resp: resp, plain: box, bound: box.Bind(nonce)}, nil
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		e := errorFromBody(resp.StatusCode, b)
		c.verifyError(t, e, b, box.Bind(nonce))
		if e.Code == wire.CodeBadSeal && !refetched {
			refetched = true
			retry, err := c.keyChanged(ctx, t, e)
			if !retry {
				return nil, err
			}
			continue
		}
		if e.Code == wire.CodeStaleEpoch && !refetched {
			refetched = true
			c.forgetKey(t)
			continue
		}
		ra := resp.Header.Get("Retry-After")
		if ra != "" {
			e.RetryAfter = retryAfterHeader(ra)
		}
		if (e.Code == wire.CodeRateLimited && attempt < maxRateLimitedRetries) ||
			(e.Status == http.StatusServiceUnavailable && ra != "" && attempt < maxUnavailableRetries) {
			// Too many requests from this address (many nodes behind one
			// NAT coming back at once), or the coordinator cannot serve
			// the request now (its database did not answer in time): wait
			// as asked, then send it again with a fresh timestamp.
			e.RetryAfter = retryAfterHeader(ra)
			t := time.NewTimer(e.RetryAfter)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, e
			case <-t.C:
			}
			continue
		}
		return nil, e
	}
}

// readSealed reads the sealed JSON reply rp into v. A reply not bound
// to its request is refused (ErrUnboundReply) unless its coordinator
// may send it so (bind.go).
func (c *Client) readSealed(rp *reply, v any) error {
	defer rp.resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(rp.resp.Body, maxResponseSize))
	if err != nil {
		return fmt.Errorf("%w: read response: %w", ErrUnreachable, err)
	}
	clear, err := rp.open(b)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(clear, v); err != nil {
		return fmt.Errorf("%w: decode response: %w", ErrBadResponse, err)
	}
	return nil
}

// RegisterParams are the arguments of Register.
type RegisterParams struct {
	// wire.AuthKeyInfo is a pre-auth key; empty rejoins an already registered node
	// key (or joins a dev-mode coordinator from loopback).
	AuthKey string
	// Hostname is the node's host name; the coordinator derives its DNS
	// label from it.
	Hostname string
	// OS is the node's operating system, for display.
	OS string
	// Logout deregisters the node instead.
	Logout bool
	// Reauth authenticates an already registered node key again: with
	// wire.AuthKeyInfo, or interactively (OnAuthURL) without.
	Reauth bool
	// OnAuthURL, if set, makes a registration without an auth key
	// interactive: when the coordinator answers with an approval code,
	// Register calls OnAuthURL once with the URL a person should open and
	// the code, then waits until the node is approved or ctx ends. Nil
	// makes such a registration fail with ErrNodeNotRegistered.
	OnAuthURL func(url, code string)
}

// Register registers the client's node key (or logs it out). Errors match
// ErrAuthKeyInvalid, ErrNodeNotRegistered, ErrNodeExpired or
// ErrUnreachable with errors.Is, and carry the coordinator's message.
func (c *Client) Register(ctx context.Context, p RegisterParams) (*wire.RegisterResponse, error) {
	rp, err := c.post(ctx, wire.PathRegister, func(st stamp) any {
		return &wire.RegisterRequest{
			Version:   wire.CapabilityVersion,
			NodeKey:   c.pub,
			DiscoKey:  c.disco,
			AuthKey:   p.AuthKey,
			Hostname:  p.Hostname,
			OS:        p.OS,
			Logout:    p.Logout,
			Reauth:    p.Reauth,
			Nonce:     st.nonce,
			Epoch:     st.epoch,
			Timestamp: st.now,
		}
	})
	if err != nil {
		return nil, fmt.Errorf("coordclient: register: %w", err)
	}
	var rr wire.RegisterResponse
	if err := c.readSealed(rp, &rr); err != nil {
		return nil, fmt.Errorf("coordclient: register: %w", err)
	}
	if rr.Error != "" {
		return nil, fmt.Errorf("coordclient: register: %w", &Error{Status: http.StatusOK, Message: rr.Error})
	}
	if rr.Node == nil && rr.AuthCode != "" && !p.Logout {
		return c.awaitApproval(ctx, p, &rr)
	}
	if p.Hostname != "" {
		c.mu.Lock()
		c.hostname = p.Hostname
		c.mu.Unlock()
	}
	return &rr, nil
}

// SetEndpoints records the node's current endpoints and home relay region
// and returns at once; the client reports them to the coordinator soon
// after (while Run is running), coalescing bursts into one update.
func (c *Client) SetEndpoints(eps []netip.AddrPort, homeDERP int) {
	c.mu.Lock()
	c.endpoints = slices.Clone(eps)
	c.homeDERP = homeDERP
	c.epsGen++
	c.mu.Unlock()
	select {
	case c.epsWake <- struct{}{}:
	default:
	}
}

// streamOpened is told that a map stream request carrying the endpoints
// of generation gen (SetEndpoints) was answered, and so applied. If the
// endpoints changed since, an update of the newer ones may have been
// applied before it and so undone: it asks endpointLoop to send them
// again.
func (c *Client) streamOpened(gen uint64) {
	c.mu.Lock()
	stale := gen < c.epsGen
	if stale {
		c.epsGen++
	}
	c.mu.Unlock()
	if stale {
		select {
		case c.epsWake <- struct{}{}:
		default:
		}
	}
}

// mapRequest builds a MapRequest from the client's current state.
func (c *Client) mapRequest(st stamp, stream bool) (*wire.MapRequest, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &wire.MapRequest{
		Version:   wire.CapabilityVersion,
		NodeKey:   c.pub,
		DiscoKey:  c.disco,
		Endpoints: slices.Clone(c.endpoints),
		HomeDERP:  c.homeDERP,
		PeerRelay: c.relay,
		Hostname:  c.hostname,
		Stream:    stream,
		Nonce:     st.nonce,
		Epoch:     st.epoch,
		Timestamp: st.now,
	}, c.epsGen
}

// sendUpdate sends one non-stream MapRequest with the current endpoints
// and returns the endpoint generation it carried.
func (c *Client) sendUpdate(ctx context.Context) (uint64, error) {
	var gen uint64
	rp, err := c.post(ctx, wire.PathMap, func(st stamp) any {
		var req *wire.MapRequest
		req, gen = c.mapRequest(st, false)
		return req
	})
	if err != nil {
		return 0, fmt.Errorf("coordclient: update endpoints: %w", err)
	}
	var mr wire.MapResponse
	if err := c.readSealed(rp, &mr); err != nil {
		return 0, fmt.Errorf("coordclient: update endpoints: %w", err)
	}
	return gen, nil
}
