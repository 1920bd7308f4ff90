package coordinator

import (
	"sync"

	"beam.dev/beam/types/key"
)

// maxSharedKeys bounds sharedKeys: at most this many node keys' box keys
// (about 100 bytes each) are kept.
const maxSharedKeys = 1 << 16

// sharedKeys caches the box keys (key.Shared) that the coordinator's
// machine key shares with node keys, so that opening a node's requests
// and sealing its answers and map frames cost no X25519 per message: it
// was 37-41% of the coordinator's CPU with thousands of streams. It keeps
// two generations of at most maxSharedKeys/2 keys each and drops the
// older when the newer fills, so the keys in use stay and the rest age
// out. A key is added only when the coordinator seals to a node it
// answers (a registered or registering node, a stream), never for a box
// that merely opens, so a flood of made-up node keys that seal valid
// requests cannot evict the real nodes' keys.
// The zero value is ready; it is safe for concurrent use.
type sharedKeys struct {
	mu       sync.Mutex // guards the following fields
	cur, old map[key.NodePublic]key.Shared
}

// lookup returns nk's cached key, promoting it to the newer generation.
func (c *sharedKeys) lookup(nk key.NodePublic) (key.Shared, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.cur[nk]; ok {
		return s, true
	}
	s, ok := c.old[nk]
	if ok {
		c.addLocked(nk, s)
	}
	return s, ok
}

func (c *sharedKeys) add(nk key.NodePublic, s key.Shared) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addLocked(nk, s)
}

func (c *sharedKeys) addLocked(nk key.NodePublic, s key.Shared) {
	if len(c.cur) >= maxSharedKeys/2 {
		c.old, c.cur = c.cur, nil
	}
	if c.cur == nil {
		c.cur = make(map[key.NodePublic]key.Shared)
	}
	c.cur[nk] = s
}

// get returns the key priv shares with the node nk, which must be a node
// the coordinator knows (a registered key, an authenticated request).
func (c *sharedKeys) get(priv key.MachinePrivate, nk key.NodePublic) key.Shared {
	if s, ok := c.lookup(nk); ok {
		return s
	}
	s := priv.Shared(nk)
	c.add(nk, s)
	return s
}

// seal seals cleartext from priv to the known node nk.
func (c *sharedKeys) seal(priv key.MachinePrivate, nk key.NodePublic, cleartext []byte) []byte {
	return c.get(priv, nk).Seal(cleartext)
}

// open opens a box that nk sealed to priv. A key not cached yet is
// added only with known (nk is a registered node, which the coordinator
// answers, as get would add it) and if the box opens: anyone can make a
// node key and seal to the coordinator's public key, so only a known
// node's key is kept. Without it, every node's first request after a
// restart cost two X25519, one here and one to seal the answer.
func (c *sharedKeys) open(priv key.MachinePrivate, nk key.NodePublic, sealed []byte, known bool) ([]byte, bool) {
	s, cached := c.lookup(nk)
	if !cached {
		s = priv.Shared(nk)
	}
	clear, ok := s.Open(sealed)
	if ok && !cached && known {
		c.add(nk, s)
	}
	return clear, ok
}
