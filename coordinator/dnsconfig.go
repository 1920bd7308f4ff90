package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// dnsSetting is the SettingStore name of the DNS settings (JSON).
const dnsSetting = "dns_config"

// ParseDNSSettings decodes b strictly (unknown fields are errors) and
// validates the result.
func ParseDNSSettings(b []byte) (*wire.DNSSettings, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var d wire.DNSSettings
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: DNS settings: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: DNS settings: trailing data after the JSON object", ErrInvalid)
	}
	if err := validateDNSSettings(&d); err != nil {
		return nil, err
	}
	normalizeDNSSettings(&d)
	return &d, nil
}

// validateDNSSettings reports every problem of d, joined; each wraps
// ErrInvalid.
func validateDNSSettings(d *wire.DNSSettings) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: DNS settings: %s", ErrInvalid, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(where string, ap netip.AddrPort) {
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() {
			bad("%s: resolver %q needs an address and a port", where, ap)
		}
	}
	for _, ns := range d.Nameservers {
		checkAddr("nameservers", ns)
	}
	for suffix, rs := range d.Routes {
		if !isDomainName(strings.ToLower(strings.TrimSuffix(suffix, "."))) {
			bad("routes: %q is not a domain name", suffix)
		}
		if len(rs) == 0 {
			bad("routes: %q has no resolvers", suffix)
		}
		for _, r := range rs {
			checkAddr("routes: "+suffix, r)
		}
	}
	for i, r := range d.ExtraRecords {
		name := strings.ToLower(strings.TrimSuffix(r.Name, "."))
		if !isDomainName(name) {
			bad("extra_records[%d]: name %q is not a domain name", i, r.Name)
		}
		switch strings.ToUpper(r.Type) {
		case "", "A", "AAAA":
			a, err := netip.ParseAddr(r.Value)
			switch t := strings.ToUpper(r.Type); {
			case err != nil || a.Zone() != "":
				bad("extra_records[%d]: value %q is not an IP address", i, r.Value)
			case t == "A" && !a.Is4():
				bad("extra_records[%d]: A record value %q is not IPv4", i, r.Value)
			case t == "AAAA" && !a.Is6():
				bad("extra_records[%d]: AAAA record value %q is not IPv6", i, r.Value)
			}
		case "TXT":
			if len(r.Value) > 255 {
				bad("extra_records[%d]: TXT value longer than 255 bytes", i)
			}
		default:
			bad("extra_records[%d]: type %q: want A, AAAA or TXT", i, r.Type)
		}
	}
	return errors.Join(errs...)
}

// normalizeDNSSettings lower-cases d's names and drops trailing dots.
func normalizeDNSSettings(d *wire.DNSSettings) {
	if len(d.Routes) > 0 {
		rs := make(map[string][]netip.AddrPort, len(d.Routes))
		for k, v := range d.Routes {
			k = strings.ToLower(strings.TrimSuffix(k, "."))
			rs[k] = append(rs[k], v...)
		}
		d.Routes = rs
	}
	for i := range d.ExtraRecords {
		r := &d.ExtraRecords[i]
		r.Name = strings.ToLower(strings.TrimSuffix(r.Name, "."))
		r.Type = strings.ToUpper(r.Type)
	}
}

// cloneDNSSettings returns a deep copy of d.
func cloneDNSSettings(d *wire.DNSSettings) *wire.DNSSettings {
	c := &wire.DNSSettings{
		Nameservers:  slices.Clone(d.Nameservers),
		ExtraRecords: slices.Clone(d.ExtraRecords),
	}
	if d.Routes != nil {
		c.Routes = make(map[string][]netip.AddrPort, len(d.Routes))
		for k, v := range d.Routes {
			c.Routes[k] = slices.Clone(v)
		}
	}
	return c
}

// DNSSettings returns the current DNS settings.
func (s *Server) DNSSettings() *wire.DNSSettings { return cloneDNSSettings(s.edge.dns.Load()) }

// SetDNSSettings validates d, stores it and sends it to every node.
func (s *Server) SetDNSSettings(ctx context.Context, d *wire.DNSSettings) error {
	return s.edge.setDNSSettings(ctx, d)
}

// setDNSSettings is Server.SetDNSSettings.
func (es *edgeRoutes) setDNSSettings(ctx context.Context, d *wire.DNSSettings) error {
	s := es.core
	if d == nil {
		d = &wire.DNSSettings{}
	}
	if err := validateDNSSettings(d); err != nil {
		return err
	}
	d = cloneDNSSettings(d)
	normalizeDNSSettings(d)
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	if err := es.storeDNSSettings(ctx, d); err != nil {
		return err
	}
	es.applyDNSLocked(d)
	s.audit(ctx, actorAdmin, "dns.set", "dns", fmt.Sprintf("%d nameservers, %d routes, %d extra records", len(d.Nameservers), len(d.Routes), len(d.ExtraRecords)))
	s.logger.Info("DNS settings changed", "nameservers", len(d.Nameservers), "routes", len(d.Routes), "extra_records", len(d.ExtraRecords))
	return nil
}

// applyDNSLocked puts d in force and wakes every stream to send it.
// es.changeMu held.
func (es *edgeRoutes) applyDNSLocked(d *wire.DNSSettings) {
	s := es.core
	es.dns.Store(d)
	es.mu.Lock()
	es.dnsGen++
	es.mu.Unlock()
	s.mu.Lock()
	for _, ss := range s.sessions {
		ss.poke()
	}
	s.mu.Unlock()
}

// reloadDNS puts in force the DNS settings as the store holds them, when
// another coordinator changed them; nothing happens if they are the ones
// in force.
func (es *edgeRoutes) reloadDNS(ctx context.Context) error {
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	d := &wire.DNSSettings{}
	b, err := es.core.store.Setting(ctx, dnsSetting)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return fmt.Errorf("coordinator: load DNS settings: %w", err)
	default:
		if d, err = ParseDNSSettings(b); err != nil {
			return fmt.Errorf("coordinator: stored DNS settings: %w", err)
		}
	}
	if dnsSettingsEqual(d, es.dns.Load()) {
		return nil
	}
	es.applyDNSLocked(d)
	es.core.logger.Info("DNS settings changed on another coordinator", "nameservers", len(d.Nameservers), "routes", len(d.Routes), "extra_records", len(d.ExtraRecords))
	return nil
}

// dnsSettingsEqual reports whether a and b say the same, an empty list
// being the same as none.
func dnsSettingsEqual(a, b *wire.DNSSettings) bool {
	return slices.Equal(a.Nameservers, b.Nameservers) && slices.Equal(a.ExtraRecords, b.ExtraRecords) &&
		maps.EqualFunc(a.Routes, b.Routes, slices.Equal)
}

func (es *edgeRoutes) storeDNSSettings(ctx context.Context, d *wire.DNSSettings) error {
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("coordinator: encode DNS settings: %w", err)
	}
	if err := es.core.store.SetSetting(ctx, dnsSetting, b); err != nil {
		return fmt.Errorf("coordinator: store DNS settings: %w", err)
	}
	return nil
}

// withDNSSettings adds the operator's DNS settings to a network's config.
func (es *edgeRoutes) withDNSSettings(c *wire.DNSConfig) *wire.DNSConfig {
	d := es.dns.Load()
	c.Nameservers = slices.Clone(d.Nameservers)
	c.ExtraRecords = slices.Clone(d.ExtraRecords)
	if len(d.Routes) > 0 {
		c.Routes = maps.Clone(d.Routes)
	}
	return c
}

const (
	maxTXTValues   = 8
	maxTXTValueLen = 255
)

func checkTXTValues(values []string) *apiError {
	if len(values) > maxTXTValues {
		return errorf(http.StatusBadRequest, wire.CodeBadRequest, "at most %d TXT values", maxTXTValues)
	}
	for _, v := range values {
		if len(v) > maxTXTValueLen {
			return errorf(http.StatusBadRequest, wire.CodeBadRequest, "TXT value longer than %d bytes", maxTXTValueLen)
		}
	}
	return nil
}

// SetTXT sets (or, with no values, deletes) the TXT records of name in the
// public zone. It fails if the Server has no Zone.
func (s *Server) SetTXT(ctx context.Context, name string, values []string) error {
	return s.edge.setTXT(ctx, actorAdmin, name, values)
}

func (es *edgeRoutes) setTXT(ctx context.Context, actor, name string, values []string) error {
	s := es.core
	z := es.cfg.zone
	if z == nil {
		return errorf(http.StatusNotImplemented, wire.CodeNoZone, "no public DNS zone is configured")
	}
	if aerr := checkTXTValues(values); aerr != nil {
		return aerr
	}
	name = es.zoneTXTName(strings.ToLower(strings.TrimSuffix(name, ".")))
	var err error
	if len(values) == 0 {
		err = z.DeleteTXT(name)
	} else {
		err = z.SetTXT(name, values)
	}
	if err != nil {
		return errorf(http.StatusBadRequest, wire.CodeBadRequest, "%s: %v", name, err)
	}
	action := "dns.txt.set"
	if len(values) == 0 {
		action = "dns.txt.delete"
	}
	s.audit(ctx, actor, action, name, "")
	s.logger.Info("zone TXT record changed", "name", name, "values", len(values))
	return nil
}

// zoneTXTName returns the zone name that holds TXT name: name itself,
// except that the challenge name "_acme-challenge.HOST" of a host outside
// the edge domain (a custom domain, which the zone cannot serve) is stored
// at ACMEChallengeCNAME(HOST), where the custom domain's owner points it
// by a CNAME. Callers have checked that the actor may set name.
func (es *edgeRoutes) zoneTXTName(name string) string {
	d := es.cfg.domain
	host, ok := strings.CutPrefix(name, "_acme-challenge.")
	if !ok || d == "" || host == d || strings.HasSuffix(host, "."+d) {
		return name
	}
	if t := ACMEChallengeCNAME(host, d); t != "" {
		return t
	}
	return name
}

// txtNameAllowedLocked reports whether an edge may set TXT name: an
// _acme-challenge name of the edge domain, a name under it, or a
// verified custom domain.
func (es *edgeRoutes) txtNameAllowed(name string) bool {
	rest, ok := strings.CutPrefix(name, "_acme-challenge.")
	if !ok {
		return false
	}
	d := es.cfg.domain
	if d != "" && (rest == d || strings.HasSuffix(rest, "."+d)) {
		label := strings.TrimSuffix(strings.TrimSuffix(rest, d), ".")
		return label == "" || isLabel(label)
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	for _, dom := range es.domains {
		if dom.Domain == rest && !dom.VerifiedAt.IsZero() {
			return true
		}
	}
	return false
}

func (es *edgeRoutes) handleTXT(w http.ResponseWriter, r *http.Request) {
	s := es.core
	var req wire.TXTRequest
	nk, aerr := s.readRequest(w, r, &req, func() (key.NodePublic, time.Time) { return req.NodeKey, req.Timestamp })
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	name := strings.ToLower(strings.TrimSuffix(req.Name, "."))
	now := s.now()
	s.mu.Lock()
	e := s.nodes[nk]
	var isEdge, expired bool
	var nodeName string
	if e != nil {
		isEdge, expired, nodeName = e.rec.Node.Edge, e.rec.Node.Expired(now), e.rec.Node.Name
	}
	s.mu.Unlock()
	var allowed bool
	if e != nil {
		if isEdge {
			allowed = es.txtNameAllowed(name)
		} else {
			allowed = es.nodeTXTAllowed(nk, name)
		}
	}
	switch {
	case e == nil:
		aerr = errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered")
	case expired:
		aerr = errorf(http.StatusForbidden, wire.CodeNodeExpired, "node key expired")
	case !isEdge && !allowed:
		aerr = errorf(http.StatusForbidden, wire.CodeForbidden, "only edge nodes may set TXT records; other nodes only _acme-challenge.HOST of their own tls routes, not %q", name)
	case !allowed:
		aerr = errorf(http.StatusForbidden, wire.CodeForbidden, "edges may set only _acme-challenge names of the edge domain or a verified custom domain, not %q", name)
	case !isEdge:
		aerr = checkNodeTXTValues(req.Values)
	}
	if aerr == nil {
		if err := es.setTXT(r.Context(), actorNode(nodeName), name, req.Values); err != nil {
			aerr = asAPIError(err)
		}
	}
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	s.writeSealed(w, nk, &wire.TXTResponse{})
}

// asAPIError returns err as an *apiError, or a 500.
func asAPIError(err error) *apiError {
	var aerr *apiError
	if errors.As(err, &aerr) {
		return aerr
	}
	return errorf(http.StatusInternalServerError, wire.CodeInternal, "internal error")
}
