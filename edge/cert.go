package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"beam.dev/beam/acmecert"
)

// TXTSetter publishes TXT records in the edge domain's authoritative zone,
// for ACME DNS-01 challenges. The zone (dnsserver) implements it. Names
// are fully qualified without the trailing dot
// ("_acme-challenge.example.test"). SetTXT replaces every TXT value of the
// name; DeleteTXT removes them all. Both must take effect before they
// return.
type TXTSetter interface {
	SetTXT(name string, values []string)
	DeleteTXT(name string)
}

// CertOptions configures a CertManager.
type CertOptions struct {
	// Domain is the edge domain; the manager obtains a certificate for
	// "*.Domain" through DNS-01 (routes are one label under Domain).
	// Required.
	Domain string

	// TXT publishes the DNS-01 challenge records. Required.
	TXT TXTSetter

	// DirectoryURL is the ACME directory. If empty, Let's Encrypt's
	// production directory.
	DirectoryURL string

	// TrustedRoots, if not nil, are the roots trusted for the ACME server's
	// HTTPS (a test CA); nil means the system roots.
	TrustedRoots *x509.CertPool

	// Email is the ACME account contact; may be empty.
	Email string

	// StorageDir holds account keys, certificates and locks; edges sharing
	// it share certificates. Required.
	StorageDir string

	// OnDemand, if not nil, reports whether a TLS handshake for name (a
	// name outside the wildcard, e.g. a verified custom domain) may obtain a
	// certificate on the spot, through TLS-ALPN-01 answered by the edge's
	// TLS listener. Pass Edge.HasHTTPRoute. Nil disables on-demand
	// certificates.
	OnDemand func(name string) bool

	// TLSListenAddr is where the edge's ServeTLSListener listens, so the
	// TLS-ALPN-01 solver leaves that port to it. If empty, ":443".
	TLSListenAddr string

	// OnStatus, if not nil, is called with the wildcard certificate's
	// status after each change (see CertManager.Status): an order started,
	// failed or succeeded. Calls may overlap; it must return quickly.
	OnStatus func(CertStatus)

	// Logger receives the manager's logs. If nil, logs are discarded.
	Logger *slog.Logger
}

// CertManager obtains and renews the edge's certificates from an ACME CA:
// the wildcard of the edge domain through DNS-01 and, on demand, single
// names of registered routes through TLS-ALPN-01. Use GetCertificate with
// ServeTLSListener.
type CertManager struct {
	opts  CertOptions
	log   *slog.Logger
	acme  *acmecert.Manager
	names []string // "*.Domain"

	orders certOrders // metrics.go

	mu     sync.Mutex // guards status
	status CertStatus
}

// CertState is where the wildcard certificate stands.
type CertState string

// The states of the wildcard certificate: pending until the first order
// ends (or storage is found to hold the certificate), then issued or
// failed. A failed order is retried with backoff, and a later success
// makes the state issued.
const (
	CertPending CertState = "pending"
	CertIssued  CertState = "issued"
	CertFailed  CertState = "failed"
)

// CertStatus is the state of the wildcard certificate's ACME orders, for
// a setup check to explain.
type CertStatus struct {
	// Name is the certificate's name, "*.Domain".
	Name string
	// CA is the ACME directory URL.
	CA    string
	State CertState
	// Orders counts the orders started since the manager was created
	// (none when storage already held the certificate).
	Orders int
	// Problem is the ACME problem type of the last failure without its
	// "urn:ietf:params:acme:error:" prefix ("unauthorized", "dns",
	// "rateLimited", ...), empty when the failure was not the CA's answer
	// (the directory could not be reached) or nothing failed.
	Problem string
	// Error is the last failure, empty when nothing failed since the
	// certificate was last issued. A failed renewal sets it while the
	// state stays issued.
	Error string
	// Changed is when the status last changed.
	Changed time.Time
}

// Status returns the wildcard certificate's status.
func (m *CertManager) Status() CertStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// onEvent follows certmagic's events about the wildcard certificate into
// the status.
func (m *CertManager) onEvent(_ context.Context, event string, data map[string]any) error {
	m.countOrder(event, data)
	if id, _ := data["identifier"].(string); id != m.names[0] {
		return nil
	}
	switch event {
	case "cert_obtaining":
		m.update(func(st *CertStatus) { st.Orders++ })
	case "cert_obtained":
		m.update(func(st *CertStatus) { st.State, st.Problem, st.Error = CertIssued, "", "" })
	case "cert_failed":
		err, _ := data["error"].(error)
		if err == nil {
			err = errors.New("unknown error")
		}
		problem, detail := "", err.Error()
		var p acme.Problem
		if errors.As(err, &p) {
			problem, detail = strings.TrimPrefix(p.Type, acme.ProblemTypeNamespace), p.Detail
			if detail == "" {
				detail = p.Error()
			}
		}
		m.update(func(st *CertStatus) {
			st.Problem, st.Error = problem, detail
			if st.State != CertIssued {
				st.State = CertFailed
			}
		})
	}
	return nil
}

// update changes the status with f and tells CertOptions.OnStatus.
func (m *CertManager) update(f func(st *CertStatus)) {
	m.mu.Lock()
	f(&m.status)
	m.status.Changed = time.Now()
	st := m.status
	m.mu.Unlock()
	if m.opts.OnStatus != nil {
		m.opts.OnStatus(st)
	}
}

// NewCertManager returns a CertManager. It obtains nothing until
// ManageWildcard or a handshake asks for a certificate; call Close to stop
// its renewal loop.
func NewCertManager(opts CertOptions) (*CertManager, error) {
	if d, ok := normalizeHost(opts.Domain); !ok || d != opts.Domain {
		return nil, fmt.Errorf("edge: invalid CertOptions.Domain %q", opts.Domain)
	}
	if opts.TXT == nil {
		return nil, errors.New("edge: CertOptions.TXT is required")
	}
	if opts.StorageDir == "" {
		return nil, errors.New("edge: CertOptions.StorageDir is required")
	}
	if opts.DirectoryURL == "" {
		opts.DirectoryURL = certmagic.LetsEncryptProductionCA
	}
	if opts.TLSListenAddr == "" {
		opts.TLSListenAddr = ":443"
	}
	host, portStr, err := net.SplitHostPort(opts.TLSListenAddr)
	if err != nil {
		return nil, fmt.Errorf("edge: CertOptions.TLSListenAddr: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("edge: CertOptions.TLSListenAddr port: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &CertManager{
		opts:  opts,
		log:   log.With("component", "edge-certs"),
		names: []string{"*." + opts.Domain},
	}
	m.status = CertStatus{Name: m.names[0], CA: opts.DirectoryURL, State: CertPending, Changed: time.Now()}
	var od *acmecert.OnDemand
	if opts.OnDemand != nil {
		od = &acmecert.OnDemand{Allow: m.decide, ListenHost: host, ListenPort: port}
	}
	txt := &zoneTXT{txt: opts.TXT, name: "_acme-challenge." + opts.Domain}
	m.acme, err = acmecert.New(acmecert.Options{
		DirectoryURL: opts.DirectoryURL,
		TrustedRoots: opts.TrustedRoots,
		Email:        opts.Email,
		StorageDir:   opts.StorageDir,
		SetTXT:       txt.set,
		OnDemand:     od,
		OnEvent:      m.onEvent,
		Logger:       m.log, // certmagic: ACME orders, renewals, failures
	})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	return m, nil
}

// decide is the on-demand decision: only registered names outside the
// wildcard get a certificate of their own.
func (m *CertManager) decide(_ context.Context, name string) error {
	h, ok := normalizeHost(name)
	if !ok || h == m.opts.Domain || strings.HasSuffix(h, "."+m.opts.Domain) {
		return fmt.Errorf("edge: no on-demand certificate for %q", name)
	}
	if !m.opts.OnDemand(h) {
		return fmt.Errorf("edge: %q is not a registered route", name)
	}
	return nil
}

// ManageWildcard obtains the wildcard certificate of the edge domain (or
// finds it in storage) before it returns, retrying until ctx ends, and
// keeps it renewed until Close. It never prompts.
func (m *CertManager) ManageWildcard(ctx context.Context) error {
	if err := m.acme.Obtain(ctx, m.names...); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	if m.Status().State != CertIssued { // found in storage: no event
		m.update(func(st *CertStatus) { st.State, st.Problem, st.Error = CertIssued, "", "" })
	}
	return nil
}

// GetCertificate returns the certificate for a ClientHello: the wildcard
// for one-label names under the domain, an on-demand certificate for
// registered custom names, and the TLS-ALPN-01 challenge certificate when
// the CA validates. Pass it to ServeTLSListener.
func (m *CertManager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.acme.GetCertificate(hello)
}

// Close stops renewals.
func (m *CertManager) Close() error {
	m.acme.Close()
	return nil
}

// zoneTXT publishes the edge domain's DNS-01 record through a TXTSetter,
// and refuses records outside the edge zone.
type zoneTXT struct {
	txt  TXTSetter
	name string // _acme-challenge.DOMAIN
}

func (z *zoneTXT) set(_ context.Context, name string, values []string) error {
	if name != z.name {
		return fmt.Errorf("edge: DNS-01 for %q is outside the edge zone", name)
	}
	if len(values) == 0 {
		z.txt.DeleteTXT(name)
		return nil
	}
	z.txt.SetTXT(name, values)
	return nil
}

// HasHTTPRoute reports whether host (any spelling) is the name of an http
// route; it is the natural CertOptions.OnDemand.
func (e *Edge) HasHTTPRoute(host string) bool {
	h, ok := normalizeHost(host)
	if !ok {
		return false
	}
	rt := e.routes.Load().hosts[h]
	return rt != nil && rt.Proto == ProtoHTTP
}
