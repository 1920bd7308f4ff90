package coordinator

import (
	"strings"

	"beam.dev/beam/types/key"
)

// nodeTXTAllowedLocked reports whether the non-edge node nk may set (or
// delete) the TXT record name: only "_acme-challenge.HOST" where HOST is
// the host of one of the node's own live routes of proto "tls". A device
// that terminates TLS for its passthrough route proves control of HOST to
// an ACME CA by DNS-01 this way; it can touch no other name, not even the
// challenge names of its own http routes (the edge holds those
// certificates). name is lower case without the trailing dot.
func (es *edgeRoutes) nodeTXTAllowed(nk key.NodePublic, name string) bool {
	host, ok := strings.CutPrefix(name, "_acme-challenge.")
	if !ok || host == "" {
		return false
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	for _, r := range es.byNode[nk] {
		if r.Proto == "tls" && r.Host == host {
			return true
		}
	}
	return false
}
