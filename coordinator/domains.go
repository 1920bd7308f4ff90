package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"beam.dev/beam/types/key"
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

// verifyDomain is Server.VerifyDomain. The DNS lookups run without
// es.changeMu, which every route change needs: the claim is created under
// it, looked up without it, and checked again under it.
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
	dom, err := es.domainClaimLocked(ctx, n.ID, d)
	es.changeMu.Unlock()
	if err != nil {
		return nil, err
	}
	var ans proofAnswers
	if dom.VerifiedAt.IsZero() {
		ans = es.lookupProof(ctx, d, true)
	}

	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	es.mu.Lock()
	cur := es.domains[domainKey{n.ID, d}]
	es.mu.Unlock()
	if cur == nil {
		return nil, fmt.Errorf("%w: the claim of network %q on %s was removed during the check", ErrNotFound, network, d)
	}
	dom = cur
	st := &wire.DomainStatus{Domain: d, Network: n.Name, TXTName: ChallengePrefix + d, Token: dom.Token}
	setACMEChallenge(st, es.cfg.domain)
	if dom.VerifiedAt.IsZero() {
		st.Problem = es.judgeProof(n.ID, dom.Domain, dom.Token, ans)
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
// a new token. Only an admin creates claims (verifyDomain): a node's
// expose never stores one that is not proved. es.changeMu held.
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

// proofAnswers is what DNS said about a domain's proof of control.
type proofAnswers struct {
	txts   []string
	txtErr error
	// target is the CNAME target, lower case without trailing dot.
	target   string
	cnameErr error
}

// lookupProof asks DNS for domain's proof records, within
// dnsCheckTimeout: the TXT record (if withTXT; there is no token to
// look for without a claim) and the CNAME. It takes no lock; callers
// must not hold es.changeMu.
func (es *edgeRoutes) lookupProof(ctx context.Context, domain string, withTXT bool) proofAnswers {
	c := es.cfg
	ctx, cancel := context.WithTimeout(ctx, dnsCheckTimeout)
	defer cancel()
	var a proofAnswers
	a.txtErr = errNoTXTLookup
	if withTXT {
		a.txts, a.txtErr = c.lookupTXT(ctx, ChallengePrefix+domain)
	}
	a.target, a.cnameErr = c.lookupCNAME(ctx, domain)
	a.target = strings.ToLower(strings.TrimSuffix(a.target, "."))
	return a
}

// errNoTXTLookup stands for a TXT record that was not looked up.
var errNoTXTLookup = errors.New("no claim, so no token to look for")

// judgeProof returns "" if a proves networkID's control of domain (a TXT
// record holding token, or a CNAME to a name the network publishes), or
// what is missing. It does no I/O.
func (es *edgeRoutes) judgeProof(networkID int64, domain, token string, a proofAnswers) string {
	c := es.cfg
	if token != "" {
		for _, t := range a.txts {
			if strings.TrimSpace(t) == token {
				return ""
			}
		}
	}
	if a.cnameErr == nil && strings.HasSuffix(a.target, "."+c.domain) {
		es.mu.Lock()
		owned := false
		for _, r := range es.routes {
			if r.Host == a.target && r.NetworkID == networkID {
				owned = true
				break
			}
		}
		es.mu.Unlock()
		if owned {
			return ""
		}
		return fmt.Sprintf("%s is a CNAME of %s, which this network does not publish; expose that name first or use the TXT record", domain, a.target)
	}
	if token == "" {
		return fmt.Sprintf("the network has not claimed it: an admin runs beam admin domains verify %s, which prints the TXT record %s%s to publish (or CNAME %s to a name this network exposes under %s)",
			domain, ChallengePrefix, domain, domain, c.domain)
	}
	why := "no TXT record found"
	if a.txtErr == nil {
		why = fmt.Sprintf("found %d TXT records, none with the token", len(a.txts))
	}
	return fmt.Sprintf("add a TXT record %s%s with value %q, or a CNAME of %s to a name this network exposes under %s (%s)",
		ChallengePrefix, domain, token, domain, c.domain, why)
}

// proofCheck is a node's pending proof of a custom domain, between
// checkDomain (DNS, no lock) and requireVerifiedLocked (under
// es.changeMu).
type proofCheck struct {
	networkID int64
	domain    string
	ans       proofAnswers
	// verified means the claim was verified before the check; ans is
	// empty then.
	verified bool
}

// checkDomain looks for the proof of networkID's control of domain for
// node nk's expose, without es.changeMu: a resolver that never answers
// holds up only this request. A failed check is remembered for nk and
// domain (proofFailTTL), so a node retrying cannot make the coordinator
// look again at once. The result is checked again, and recorded, by
// requireVerifiedLocked.
func (es *edgeRoutes) checkDomain(ctx context.Context, nk key.NodePublic, networkID int64, domain string) (*proofCheck, *apiError) {
	s := es.core
	pc := &proofCheck{networkID: networkID, domain: domain}
	es.mu.Lock()
	dom := es.domains[domainKey{networkID, domain}]
	es.mu.Unlock()
	if dom != nil && !dom.VerifiedAt.IsZero() {
		pc.verified = true
		return pc, nil
	}
	token := ""
	if dom != nil {
		token = dom.Token
	}
	now := s.now()
	if problem, ok := es.proofFails.failed(nk, domain, now); ok {
		return nil, notVerified(domain, problem)
	}
	if !es.proofFails.start(nk) {
		return nil, errorf(http.StatusTooManyRequests, wire.CodeRateLimited, "this node has %d custom domain checks in progress; try again when they finish", maxProofChecksPerNode)
	}
	pc.ans = es.lookupProof(ctx, domain, token != "")
	es.proofFails.done(nk)
	if problem := es.judgeProof(networkID, domain, token, pc.ans); problem != "" {
		es.proofFails.fail(nk, domain, problem, s.now())
		return nil, notVerified(domain, problem)
	}
	return pc, nil
}

// notVerified is the error of an expose of domain without proof.
func notVerified(domain, problem string) *apiError {
	return errorf(http.StatusForbidden, wire.CodeDomainNotVerified, "custom domain %s is not verified: %s; then run beam admin domains verify %s", domain, problem, domain)
}

// requireVerifiedLocked fails unless pc, checked again against the
// claims and routes as they are now, proves control; a proof found on
// expose is stored as a verified claim (only a proved one: a node's
// failed expose leaves nothing behind). es.changeMu held.
func (es *edgeRoutes) requireVerifiedLocked(ctx context.Context, pc *proofCheck) *apiError {
	s := es.core
	k := domainKey{pc.networkID, pc.domain}
	es.mu.Lock()
	dom := es.domains[k]
	es.mu.Unlock()
	switch {
	case dom != nil && !dom.VerifiedAt.IsZero():
		return nil
	case pc.verified:
		// The claim was removed since.
		return notVerified(pc.domain, "its claim was removed")
	}
	v := Domain{NetworkID: pc.networkID, Domain: pc.domain, CreatedAt: s.now()}
	if dom != nil {
		v = *dom
	}
	if problem := es.judgeProof(pc.networkID, pc.domain, v.Token, pc.ans); problem != "" {
		return notVerified(pc.domain, problem)
	}
	if v.Token == "" {
		var tok [16]byte
		rand.Read(tok[:])
		v.Token = "beam-verify-" + hex.EncodeToString(tok[:])
	}
	v.VerifiedAt = s.now()
	if err := es.domainStore.PutDomain(ctx, &v); err != nil {
		s.logger.Error("store domain", "domain", pc.domain, "err", err)
		return errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
	}
	es.mu.Lock()
	es.domains[k] = &v
	es.mu.Unlock()
	s.audit(ctx, actorCoordinator, "domain.verify", pc.domain, "checked on expose")
	return nil
}

// proofFailTTL is how long a failed proof check of a node's expose is
// remembered; within it, the node's exposes of that domain get the same
// answer without DNS lookups. An admin's beam admin domains verify always
// looks.
const proofFailTTL = 30 * time.Second

// maxProofFails bounds the failed checks remembered; past it the oldest
// are forgotten.
const maxProofFails = 4096

// maxProofChecksPerNode bounds the proof checks of one node in flight.
const maxProofChecksPerNode = 4

// proofFails remembers failed proof checks per node and domain, and
// counts each node's checks in flight.
type proofFails struct {
	mu       sync.Mutex // guards the following fields
	fails    map[proofFailKey]proofFail
	inFlight map[key.NodePublic]int
}

type proofFailKey struct {
	node   key.NodePublic
	domain string
}

type proofFail struct {
	problem string
	at      time.Time
}

// failed returns the problem of nk's failed check of domain, if one
// was remembered less than proofFailTTL before now.
func (pf *proofFails) failed(nk key.NodePublic, domain string, now time.Time) (string, bool) {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	f, ok := pf.fails[proofFailKey{nk, domain}]
	if !ok || now.Sub(f.at) >= proofFailTTL {
		return "", false
	}
	return f.problem, true
}

// fail remembers nk's failed check of domain.
func (pf *proofFails) fail(nk key.NodePublic, domain, problem string, now time.Time) {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	if pf.fails == nil {
		pf.fails = make(map[proofFailKey]proofFail)
	}
	if len(pf.fails) >= maxProofFails {
		var oldest proofFailKey
		var oldestAt time.Time
		for k, f := range pf.fails {
			if now.Sub(f.at) >= proofFailTTL {
				delete(pf.fails, k)
			} else if oldestAt.IsZero() || f.at.Before(oldestAt) {
				oldest, oldestAt = k, f.at
			}
		}
		if len(pf.fails) >= maxProofFails {
			delete(pf.fails, oldest)
		}
	}
	pf.fails[proofFailKey{nk, domain}] = proofFail{problem, now}
}

// start counts a check of nk in flight, unless it has
// maxProofChecksPerNode already; done ends it.
func (pf *proofFails) start(nk key.NodePublic) bool {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	if pf.inFlight[nk] >= maxProofChecksPerNode {
		return false
	}
	if pf.inFlight == nil {
		pf.inFlight = make(map[key.NodePublic]int)
	}
	pf.inFlight[nk]++
	return true
}

// done ends a check that start counted.
func (pf *proofFails) done(nk key.NodePublic) {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	if pf.inFlight[nk]--; pf.inFlight[nk] <= 0 {
		delete(pf.inFlight, nk)
	}
}

// RemoveDomain deletes the custom domain claims on domain: network's, or
// every network's if network is empty. The routes those networks publish
// on the domain are withdrawn with them. It returns an error wrapping
// ErrNotFound if there is none.
func (s *Server) RemoveDomain(ctx context.Context, network, domain string) error {
	return s.edge.removeDomain(ctx, network, domain)
}

// removeDomain is Server.RemoveDomain.
func (es *edgeRoutes) removeDomain(ctx context.Context, network, domain string) error {
	s := es.core
	if es.cfg.domain == "" || es.domainStore == nil {
		return errEdgeDisabled
	}
	d := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	var netID int64
	if network != "" {
		s.mu.Lock()
		n := s.netNames[network]
		s.mu.Unlock()
		if n == nil {
			return fmt.Errorf("%w: network %q", ErrNotFound, network)
		}
		netID = n.ID
	}
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	es.mu.Lock()
	var gone []*Domain
	for k, dom := range es.domains {
		if k.domain == d && (network == "" || k.network == netID) {
			gone = append(gone, dom)
		}
	}
	var routes []*memRoute
	for _, r := range es.routes {
		if r.Host == d && r.CustomDomain && slices.ContainsFunc(gone, func(dom *Domain) bool { return dom.NetworkID == r.NetworkID }) {
			routes = append(routes, r)
		}
	}
	es.mu.Unlock()
	if len(gone) == 0 {
		return fmt.Errorf("%w: no claim on %s", ErrNotFound, d)
	}
	if len(routes) > 0 {
		if aerr := es.deleteRoutesLocked(ctx, routes); aerr != nil {
			return aerr
		}
	}
	s.mu.Lock()
	names := make(map[int64]string)
	for _, dom := range gone {
		if n := s.networks[dom.NetworkID]; n != nil {
			names[dom.NetworkID] = n.Name
		}
	}
	s.mu.Unlock()
	for _, dom := range gone {
		if err := es.domainStore.DeleteDomain(ctx, dom.NetworkID, d); err != nil {
			return fmt.Errorf("coordinator: delete domain: %w", err)
		}
		es.mu.Lock()
		delete(es.domains, domainKey{dom.NetworkID, d})
		es.mu.Unlock()
		s.audit(ctx, actorAdmin, "domain.remove", d, fmt.Sprintf("network %s, %d routes", names[dom.NetworkID], len(routes)))
		s.logger.Info("custom domain claim removed", "domain", d, "network", names[dom.NetworkID], "routes", len(routes))
	}
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
