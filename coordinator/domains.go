package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"beam.dev/beam/wire"
)

// ChallengePrefix is the label under a custom domain whose TXT record
// proves control: "_beam-challenge.shop.example.com" = the network's token.
const ChallengePrefix = "_beam-challenge."

// acmeDelegationLabel is the label under the edge domain below which the
// zone holds the DNS-01 challenges of custom domains:
// "_acme-challenge.app.customer.test" is delegated by a CNAME to
// "app.customer.test._acme-challenge.EDGE". The underscore keeps these
// names apart from route names, which are plain labels.
const acmeDelegationLabel = "_acme-challenge"

// ACMEChallengeCNAME returns the name in the edge domain's zone that holds
// the ACME DNS-01 challenge of custom domain host, the target of the CNAME
// "_acme-challenge.HOST" its owner creates once so that a device (or an
// edge) can obtain a certificate for HOST by DNS-01: ACME CAs follow the
// CNAME. It returns "" when the name would be too long for DNS.
func ACMEChallengeCNAME(host, edgeDomain string) string {
	n := host + "." + acmeDelegationLabel + "." + edgeDomain
	if len(n) > 253 {
		return ""
	}
	return n
}

// dnsCheckTimeout bounds the DNS lookups of one proof check.
const dnsCheckTimeout = 5 * time.Second

// VerifyDomain gives network (empty means DefaultNetwork) a token for
// domain if it has none, and checks the proof of control in DNS: a TXT
// record "_beam-challenge.DOMAIN" holding the token, or a CNAME of DOMAIN
// to a name under the edge domain that the network publishes. Once
// verified, nodes of the network may expose the domain.
func (s *Server) VerifyDomain(ctx context.Context, network, domain string) (*wire.DomainStatus, error) {
	return s.edge.verifyDomain(ctx, network, domain)
}

// verifyDomain is Server.VerifyDomain.
func (es *edgeRoutes) verifyDomain(ctx context.Context, network, domain string) (*wire.DomainStatus, error) {
	s := es.core
	if es.cfg.domain == "" || es.domainStore == nil {
		return nil, errEdgeDisabled
	}
	if network == "" {
		network = DefaultNetwork
	}
	d, aerr := es.customHost(domain)
	if aerr != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, aerr.msg)
	}
	s.mu.Lock()
	n := s.netNames[network]
	s.mu.Unlock()
	if n == nil {
		return nil, fmt.Errorf("%w: network %q", ErrNotFound, network)
	}
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	dom, err := es.domainClaimLocked(ctx, n.ID, d)
	if err != nil {
		return nil, err
	}
	st := &wire.DomainStatus{Domain: d, Network: n.Name, TXTName: ChallengePrefix + d, Token: dom.Token}
	setACMEChallenge(st, es.cfg.domain)
	if dom.VerifiedAt.IsZero() {
		st.Problem = es.checkProof(ctx, n.ID, dom)
		if st.Problem == "" {
			v := *dom
			v.VerifiedAt = s.now()
			if err := es.domainStore.PutDomain(ctx, &v); err != nil {
				return nil, fmt.Errorf("coordinator: store domain: %w", err)
			}
			es.mu.Lock()
			es.domains[domainKey{n.ID, d}] = &v
			es.mu.Unlock()
			dom = &v
			s.audit(ctx, actorAdmin, "domain.verify", d, "network "+n.Name)
			s.logger.Info("custom domain verified", "domain", d, "network", n.Name)
		}
	}
	st.Verified, st.VerifiedAt = !dom.VerifiedAt.IsZero(), dom.VerifiedAt
	return st, nil
}

// setACMEChallenge fills in the ACME challenge delegation of st.Domain.
func setACMEChallenge(st *wire.DomainStatus, edgeDomain string) {
	if t := ACMEChallengeCNAME(st.Domain, edgeDomain); t != "" {
		st.ACMEChallenge, st.ACMEChallengeCNAME = "_acme-challenge."+st.Domain, t
	}
}

// domainClaimLocked returns network's claim on domain, creating it with
// a new token. es.changeMu held.
func (es *edgeRoutes) domainClaimLocked(ctx context.Context, networkID int64, domain string) (*Domain, error) {
	k := domainKey{networkID, domain}
	es.mu.Lock()
	dom := es.domains[k]
	es.mu.Unlock()
	if dom != nil {
		return dom, nil
	}
	var tok [16]byte
	rand.Read(tok[:])
	dom = &Domain{NetworkID: networkID, Domain: domain, Token: "beam-verify-" + hex.EncodeToString(tok[:]), CreatedAt: es.core.now()}
	if err := es.domainStore.PutDomain(ctx, dom); err != nil {
		return nil, fmt.Errorf("coordinator: store domain: %w", err)
	}
	es.mu.Lock()
	es.domains[k] = dom
	es.mu.Unlock()
	return dom, nil
}

// checkProof looks for dom's proof in DNS and returns "" if it holds, or
// what is missing.
func (es *edgeRoutes) checkProof(ctx context.Context, networkID int64, dom *Domain) string {
	c := es.cfg
	ctx, cancel := context.WithTimeout(ctx, dnsCheckTimeout)
	defer cancel()
	txts, txtErr := c.lookupTXT(ctx, ChallengePrefix+dom.Domain)
	for _, t := range txts {
		if strings.TrimSpace(t) == dom.Token {
			return ""
		}
	}
	target, cnameErr := c.lookupCNAME(ctx, dom.Domain)
	target = strings.ToLower(strings.TrimSuffix(target, "."))
	if cnameErr == nil && strings.HasSuffix(target, "."+c.domain) {
		es.mu.Lock()
		owned := false
		for _, r := range es.routes {
			if r.Host == target && r.NetworkID == networkID {
				owned = true
				break
			}
		}
		es.mu.Unlock()
		if owned {
			return ""
		}
		return fmt.Sprintf("%s is a CNAME of %s, which this network does not publish; expose that name first or use the TXT record", dom.Domain, target)
	}
	why := "no TXT record found"
	if txtErr == nil {
		why = fmt.Sprintf("found %d TXT records, none with the token", len(txts))
	}
	return fmt.Sprintf("add a TXT record %s%s with value %q, or a CNAME of %s to a name this network exposes under %s (%s)",
		ChallengePrefix, dom.Domain, dom.Token, dom.Domain, c.domain, why)
}

// requireVerified fails unless network proved control of domain; a
// pending claim is checked again first. es.changeMu held.
func (es *edgeRoutes) requireVerified(ctx context.Context, networkID int64, domain string) *apiError {
	s := es.core
	dom, err := es.domainClaimLocked(ctx, networkID, domain)
	if err != nil {
		s.logger.Error("domain claim", "domain", domain, "err", err)
		return errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
	}
	if !dom.VerifiedAt.IsZero() {
		return nil
	}
	problem := es.checkProof(ctx, networkID, dom)
	if problem != "" {
		return errorf(http.StatusForbidden, wire.CodeDomainNotVerified, "custom domain %s is not verified: %s; then run beam admin domains verify %s", domain, problem, domain)
	}
	v := *dom
	v.VerifiedAt = s.now()
	if err := es.domainStore.PutDomain(ctx, &v); err != nil {
		s.logger.Error("store domain", "domain", domain, "err", err)
		return errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
	}
	es.mu.Lock()
	es.domains[domainKey{networkID, domain}] = &v
	es.mu.Unlock()
	s.audit(ctx, actorCoordinator, "domain.verify", domain, "checked on expose")
	return nil
}

// Domains lists every custom domain claim.
func (s *Server) Domains(ctx context.Context) []wire.DomainStatus { return s.edge.listDomains() }

// listDomains is Server.Domains.
func (es *edgeRoutes) listDomains() []wire.DomainStatus {
	s := es.core
	es.mu.Lock()
	ds := slices.Collect(maps.Values(es.domains))
	es.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]wire.DomainStatus, 0, len(ds))
	for _, d := range ds {
		st := wire.DomainStatus{Domain: d.Domain, TXTName: ChallengePrefix + d.Domain, Token: d.Token,
			Verified: !d.VerifiedAt.IsZero(), VerifiedAt: d.VerifiedAt}
		if n := s.networks[d.NetworkID]; n != nil {
			st.Network = n.Name
		}
		setACMEChallenge(&st, es.cfg.domain)
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b wire.DomainStatus) int {
		if c := strings.Compare(a.Domain, b.Domain); c != 0 {
			return c
		}
		return strings.Compare(a.Network, b.Network)
	})
	return out
}

// reloadDomains re-reads the custom domain claims, which another
// coordinator changed.
func (es *edgeRoutes) reloadDomains(ctx context.Context) error {
	if es.domainStore == nil {
		return nil
	}
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	ds, err := es.domainStore.Domains(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: reload domains: %w", err)
	}
	es.setDomains(ds)
	return nil
}

// setDomains replaces the claims in memory by ds. es.changeMu held.
func (es *edgeRoutes) setDomains(ds []*Domain) {
	es.mu.Lock()
	defer es.mu.Unlock()
	clear(es.domains)
	for _, d := range ds {
		es.domains[domainKey{d.NetworkID, d.Domain}] = d
	}
}
