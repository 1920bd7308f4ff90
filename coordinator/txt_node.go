package coordinator

import (
	"net/http"
	"strings"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
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

// maxNodeTXTValues is the most values a non-edge node may set on its
// challenge name: a device's order for HOST has one DNS-01 challenge,
// and a renewal may start before the last one's record is cleaned up.
const maxNodeTXTValues = 2

// keyAuthDigestLen is the length of a DNS-01 TXT value: the unpadded
// base64url SHA-256 of the key authorization (RFC 8555, section 8.4).
const keyAuthDigestLen = 43

// checkNodeTXTValues refuses the values a non-edge node asks for unless
// they are what its DNS-01 challenges publish: at most maxNodeTXTValues,
// each a key authorization digest. The zone answers anyone, from any
// claimed source address: eight values of 255 bytes, which the general
// limits allow, made a 65-byte query return over 1100 bytes.
func checkNodeTXTValues(values []string) *apiError {
	if len(values) > maxNodeTXTValues {
		return errorf(http.StatusBadRequest, wire.CodeBadRequest,
			"a device may set at most %d TXT values on its challenge name, got %d", maxNodeTXTValues, len(values))
	}
	for _, v := range values {
		if !isKeyAuthDigest(v) {
			return errorf(http.StatusBadRequest, wire.CodeBadRequest,
				"a device's TXT value must be an ACME DNS-01 key authorization digest (%d characters of A-Z, a-z, 0-9, '-' and '_'), got %d bytes", keyAuthDigestLen, len(v))
		}
	}
	return nil
}

// isKeyAuthDigest reports whether v matches ^[A-Za-z0-9_-]{43}$.
func isKeyAuthDigest(v string) bool {
	if len(v) != keyAuthDigestLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// challengesGoneLocked returns the zone names of the DNS-01 challenges
// that go with the routes in gone, just dropped from memory: for each tls
// route whose host no live tls route serves any more, the name its
// devices set (zoneTXTName of "_acme-challenge.HOST"). Once the route is
// gone nobody may touch that record (nodeTXTAllowed), so it would be
// served on and pass to the host's next owner; deleteChallenges deletes
// it. es.mu held.
func (es *edgeRoutes) challengesGoneLocked(gone []*memRoute) []string {
	var hosts map[string]bool
	for _, r := range gone {
		if r.Proto == "tls" {
			if hosts == nil {
				hosts = map[string]bool{}
			}
			hosts[r.Host] = true
		}
	}
	if hosts == nil || es.cfg.zone == nil {
		return nil
	}
	for _, r := range es.routes {
		if r.Proto == "tls" {
			delete(hosts, r.Host)
		}
	}
	names := make([]string, 0, len(hosts))
	for h := range hosts {
		names = append(names, es.zoneTXTName("_acme-challenge."+h))
	}
	return names
}

// deleteChallenges deletes the zone's TXT records of names
// (challengesGoneLocked). es.mu not held.
func (es *edgeRoutes) deleteChallenges(names []string) {
	for _, name := range names {
		if err := es.cfg.zone.DeleteTXT(name); err != nil {
			es.core.logger.Warn("delete the challenge record of a withdrawn route", "name", name, "err", err)
			continue
		}
		es.core.logger.Debug("challenge record deleted with its route", "name", name)
	}
}
