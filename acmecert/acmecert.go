// Package acmecert obtains and renews TLS certificates from an ACME CA
// for both ends of Beam's published routes: the edge (the wildcard of its
// domain by DNS-01, single custom names on demand by TLS-ALPN-01) and a
// device that terminates TLS itself (the hosts of its tls routes by
// DNS-01 through the coordinator's zone). It wraps certmagic: one cache
// and file storage, one ACME account setup, one DNS-01 solver over a
// func that publishes TXT records.
package acmecert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"beam.dev/beam/internal/zapslog"
)

// Options configures a Manager.
type Options struct {
	// DirectoryURL is the ACME directory. Empty means Let's Encrypt's
	// production directory.
	DirectoryURL string
	// TrustedRoots, if not nil, are the roots trusted for the directory's
	// HTTPS (a test CA); nil means the system roots.
	TrustedRoots *x509.CertPool
	// Email is the ACME account's contact; may be empty.
	Email string
	// StorageDir holds the account key, certificates and locks; managers
	// sharing it share certificates. Required.
	StorageDir string

	// SetTXT publishes the TXT record name (fully qualified, without the
	// trailing dot) with values, replacing its values, or deletes it when
	// values is empty; it must take effect before it returns. It answers
	// DNS-01 challenges. Nil: no DNS-01, and Obtain fails.
	SetTXT func(ctx context.Context, name string, values []string) error

	// OnDemand, if not nil, lets a TLS handshake for a name this manager
	// does not manage obtain a certificate on the spot by TLS-ALPN-01,
	// answered by the TLS listener that calls GetCertificate.
	OnDemand *OnDemand

	// OnEvent, if not nil, receives certmagic's events (cert_obtaining,
	// cert_obtained, cert_failed, ...); it must return quickly.
	OnEvent func(ctx context.Context, event string, data map[string]any) error

	// Logger receives certmagic's logs (as debug records for its info
	// lines); nil discards them.
	Logger *slog.Logger
}

// OnDemand configures certificates obtained during a TLS handshake.
type OnDemand struct {
	// Allow reports whether name may get a certificate. Required.
	Allow func(ctx context.Context, name string) error
	// ListenHost and ListenPort are where the TLS listener that answers
	// TLS-ALPN-01 listens, so certmagic leaves that port to it.
	ListenHost string
	ListenPort int
}

// Manager obtains, caches and renews certificates. Its methods are safe
// for concurrent use.
type Manager struct {
	opts     Options
	cache    *certmagic.Cache
	dns      *certmagic.Config // DNS-01 only: the names given to Obtain
	onDemand *certmagic.Config // TLS-ALPN-01 only; nil without Options.OnDemand

	mu      sync.Mutex // guards managed
	managed map[string]bool
}

// New returns a Manager that obtains nothing until Obtain or an on-demand
// handshake asks; Close stops its renewals.
func New(o Options) (*Manager, error) {
	if o.StorageDir == "" {
		return nil, errors.New("acmecert: StorageDir is required")
	}
	if o.DirectoryURL == "" {
		o.DirectoryURL = certmagic.LetsEncryptProductionCA
	}
	if o.OnDemand != nil && o.OnDemand.Allow == nil {
		return nil, errors.New("acmecert: OnDemand.Allow is required")
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{opts: o, managed: map[string]bool{}}
	zl := zapslog.New(logger)
	storage := &certmagic.FileStorage{Path: o.StorageDir}
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
			if m.onDemand == nil || slices.ContainsFunc(c.Names, m.isManaged) {
				return m.dns, nil
			}
			return m.onDemand, nil
		},
		Logger: zl,
	})
	newConfig := func(od *certmagic.OnDemandConfig, issuer certmagic.ACMEIssuer) *certmagic.Config {
		cfg := certmagic.New(m.cache, certmagic.Config{
			Storage:  storage,
			OnDemand: od,
			OCSP:     certmagic.OCSPConfig{DisableStapling: true},
			Logger:   zl,
			OnEvent:  o.OnEvent,
		})
		issuer.CA = o.DirectoryURL
		issuer.Email = o.Email
		issuer.Agreed = true
		issuer.TrustedRoots = o.TrustedRoots
		issuer.DisableHTTPChallenge = true
		issuer.Logger = zl
		cfg.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cfg, issuer)}
		return cfg
	}
	dns := certmagic.ACMEIssuer{DisableTLSALPNChallenge: true}
	if o.SetTXT != nil {
		dns.DNS01Solver = &txtSolver{set: o.SetTXT, values: map[string][]string{}}
	}
	m.dns = newConfig(nil, dns)
	if od := o.OnDemand; od != nil {
		m.onDemand = newConfig(&certmagic.OnDemandConfig{DecisionFunc: od.Allow}, certmagic.ACMEIssuer{
			ListenHost:     od.ListenHost,
			AltTLSALPNPort: od.ListenPort,
		})
	}
	return m, nil
}

func (m *Manager) isManaged(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.managed[name]
}

// Obtain obtains the certificate of names by DNS-01 (or finds it in
// storage), retrying with backoff until ctx ends, and keeps it renewed
// until Forget or Close. It never prompts.
func (m *Manager) Obtain(ctx context.Context, names ...string) error {
	if m.opts.SetTXT == nil {
		return errors.New("acmecert: no SetTXT to answer DNS-01 challenges")
	}
	m.mu.Lock()
	for _, n := range names {
		m.managed[n] = true
	}
	m.mu.Unlock()
	for _, n := range names {
		// Non-interactive: retries with backoff until ctx ends; a
		// no-op when storage already holds the certificate.
		if err := m.dns.ObtainCertAsync(ctx, n); err != nil {
			return fmt.Errorf("acmecert: obtain %s: %w", n, err)
		}
	}
	// Load it from storage into the cache, which renews it. (ManageSync
	// would prompt on stdin if it had to obtain, but storage has it now.)
	if err := m.dns.ManageSync(ctx, names); err != nil {
		return fmt.Errorf("acmecert: manage %v: %w", names, err)
	}
	return nil
}

// Forget stops renewing the certificates of names and drops them from
// the cache (storage keeps them).
func (m *Manager) Forget(names ...string) {
	var subjects []certmagic.SubjectIssuer
	m.mu.Lock()
	for _, n := range names {
		delete(m.managed, n)
		subjects = append(subjects, certmagic.SubjectIssuer{Subject: n})
	}
	m.mu.Unlock()
	m.cache.RemoveManaged(subjects)
}

// GetCertificate returns the certificate for a ClientHello from the
// cache: one Obtain loaded, or with OnDemand one obtained on the spot
// (and the TLS-ALPN-01 challenge certificate while the CA validates).
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if m.onDemand != nil {
		return m.onDemand.GetCertificate(hello)
	}
	return m.dns.GetCertificate(hello)
}

// CacheUnmanaged puts a certificate obtained elsewhere into the cache,
// where GetCertificate finds it; it is not renewed.
func (m *Manager) CacheUnmanaged(ctx context.Context, cert tls.Certificate) error {
	_, err := m.dns.CacheUnmanagedTLSCertificate(ctx, cert, nil)
	return err
}

// Close stops renewals.
func (m *Manager) Close() { m.cache.Stop() }

// txtSolver answers DNS-01 challenges through SetTXT. Values of one name
// accumulate while several challenges are under way (the wildcard and
// the bare domain share one record name).
type txtSolver struct {
	set func(ctx context.Context, name string, values []string) error

	mu     sync.Mutex // guards values and serializes updates
	values map[string][]string
}

// Present publishes the challenge's key authorization.
func (s *txtSolver) Present(ctx context.Context, ch acme.Challenge) error {
	name := strings.TrimSuffix(ch.DNS01TXTRecordName(), ".")
	s.mu.Lock()
	defer s.mu.Unlock()
	v := append(slices.Clone(s.values[name]), ch.DNS01KeyAuthorization())
	if err := s.set(ctx, name, slices.Clone(v)); err != nil {
		return fmt.Errorf("acmecert: DNS-01 record %s: %w", name, err)
	}
	s.values[name] = v
	return nil
}

// CleanUp withdraws the challenge's key authorization.
func (s *txtSolver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	name := strings.TrimSuffix(ch.DNS01TXTRecordName(), ".")
	s.mu.Lock()
	defer s.mu.Unlock()
	v := slices.DeleteFunc(slices.Clone(s.values[name]), func(x string) bool { return x == ch.DNS01KeyAuthorization() })
	if len(v) == 0 {
		delete(s.values, name)
		v = nil
	} else {
		s.values[name] = v
	}
	if err := s.set(ctx, name, slices.Clone(v)); err != nil {
		return fmt.Errorf("acmecert: DNS-01 record %s: %w", name, err)
	}
	return nil
}
