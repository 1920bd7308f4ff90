package coordinator

import (
	"context"
	"errors"
	"time"

	"beam.dev/beam/wire"
)

// Errors a Store returns. Implementations wrap them with %w so the
// coordinator can test them with errors.Is.
var (
	// ErrNotFound means the requested row does not exist.
	ErrNotFound = errors.New("coordinator: not found")
	// ErrConflict means a unique field (node key, name, address) is taken.
	ErrConflict = errors.New("coordinator: conflict")
	// ErrInvalid means a caller-supplied value is not acceptable.
	ErrInvalid = errors.New("coordinator: invalid argument")
	// ErrAuthKeySpent means a one-off auth key was already used, or the
	// key expired or was deleted, when the store tried to consume it.
	ErrAuthKeySpent = errors.New("coordinator: auth key already used or expired")
)

// Network is a set of nodes that see each other, with its own DNS domain.
type Network struct {
	ID   int64
	Name string
	// Domain is the network's DNS domain without trailing dot
	// ("default.beam.internal").
	Domain    string
	CreatedAt time.Time
}

// AuthKey is a stored pre-auth key. Only the SHA-256 of the secret key is
// kept; Prefix is a short, non-secret handle shown in listings.
type AuthKey struct {
	ID        int64
	NetworkID int64
	Prefix    string
	Hash      []byte
	Reusable  bool
	Ephemeral bool
	// Expiry is when the key stops working; zero means never.
	Expiry time.Time
	Tags   []string
	User   string
	// NodeKeyExpiry is how long the node key of a node registered with
	// the key stays valid: zero means the default (DefaultNodeKeyExpiry
	// for nodes owned by a user, none for tagged or ownerless nodes),
	// negative means never.
	NodeKeyExpiry time.Duration
	// Edge keys register public edge nodes (wire.Node.Edge).
	Edge bool
	// UseCount is how many registrations used the key.
	UseCount  int
	CreatedAt time.Time
}

// NodeRecord is a node as the store keeps it: the wire view (Online is not
// stored) plus what only the coordinator needs.
type NodeRecord struct {
	// Node holds the node's fields; Node.ID is the store's row ID.
	Node      wire.Node
	NetworkID int64
	// AuthKeyID is the key the node registered with, 0 for none.
	AuthKeyID int64
	CreatedAt time.Time
	// RegStamp is the timestamp (the node's clock) of the sealed request
	// that registered the node; zero if unknown. The key's requests
	// stamped before it are refused as replays (replayCache.raiseFloor).
	RegStamp time.Time
}

// Store is everything the coordinator keeps across restarts. It is the
// union of the small interfaces below, each named for its use.
// beam.dev/beam/coordinator/sqlstore implements it.
type Store interface {
	NetworkStore
	AuthKeyStore
	NodeStore
	SettingStore
	UserStore
	AuditStore
}

// NetworkStore keeps networks.
type NetworkStore interface {
	// EnsureNetwork returns the network called name, creating it with
	// domain if it does not exist.
	EnsureNetwork(ctx context.Context, name, domain string) (*Network, error)
	// Networks lists all networks.
	Networks(ctx context.Context) ([]*Network, error)
}

// AuthKeyStore keeps pre-auth keys.
type AuthKeyStore interface {
	// CreateAuthKey inserts k and sets k.ID.
	CreateAuthKey(ctx context.Context, k *AuthKey) error
	// AuthKeyByHash returns the key whose hash is hash, or ErrNotFound.
	AuthKeyByHash(ctx context.Context, hash []byte) (*AuthKey, error)
	// AuthKeys lists all keys.
	AuthKeys(ctx context.Context) ([]*AuthKey, error)
	// DeleteAuthKey deletes the key with the given prefix, or returns ErrNotFound.
	DeleteAuthKey(ctx context.Context, prefix string) error
	// ConsumeAuthKey records one use of the key with the given ID, in one
	// atomic step: a one-off key already used, or any key expired at now,
	// fails with ErrAuthKeySpent.
	ConsumeAuthKey(ctx context.Context, id int64, now time.Time) error
}

// NodeStore keeps nodes.
type NodeStore interface {
	// InsertNode inserts n and sets n.Node.ID. If n.AuthKeyID is not 0 it
	// consumes that key in the same transaction: a one-off key that was
	// already used, or any key expired at now, fails with ErrAuthKeySpent
	// and nothing is inserted. A taken node key, name or address fails
	// with ErrConflict.
	InsertNode(ctx context.Context, n *NodeRecord, now time.Time) error
	// UpdateNode rewrites the fields the node itself reports, of the
	// node with n.Node.ID: disco key, hostname, OS, endpoints, home
	// relay, peer relay port and last seen. It returns ErrNotFound if the
	// node is gone. It never writes the key expiry or auth key: another
	// coordinator may have just changed those, and a node's endpoint
	// update must not put back the value this one still holds.
	UpdateNode(ctx context.Context, n *NodeRecord) error
	// UpdateNodeExpiry writes the key expiry and auth key of the node
	// with n.Node.ID (an auth key that no longer exists is stored as
	// none), or returns ErrNotFound.
	UpdateNodeExpiry(ctx context.Context, n *NodeRecord) error
	// RenewNode writes the key expiry and auth key of the node with
	// n.Node.ID as UpdateNodeExpiry does, and consumes that auth key
	// (n.AuthKeyID, not 0) in the same transaction: a one-off key that
	// was already used, or any key expired at now, fails with
	// ErrAuthKeySpent and nothing is written; a node that is gone fails
	// with ErrNotFound and spends nothing.
	RenewNode(ctx context.Context, n *NodeRecord, now time.Time) error
	// DeleteNode deletes the node with the given ID, or returns ErrNotFound.
	DeleteNode(ctx context.Context, id wire.NodeID) error
	// Nodes lists all nodes of all networks.
	Nodes(ctx context.Context) ([]*NodeRecord, error)
}

// SettingStore keeps small named values, such as the admin token's hash.
type SettingStore interface {
	// Setting returns the value stored under name, or ErrNotFound.
	Setting(ctx context.Context, name string) ([]byte, error)
	// SetSetting stores value under name, replacing any earlier value.
	SetSetting(ctx context.Context, name string, value []byte) error
	// SetSettings stores each value under its name in one transaction:
	// either all are replaced or, on error, none.
	SetSettings(ctx context.Context, values map[string][]byte) error
}
