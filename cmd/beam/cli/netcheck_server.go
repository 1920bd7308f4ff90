package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/wire"
)

// netcheckServerOptions are the flags of beam netcheck --server.
type netcheckServerOptions struct {
	Resolver string
	CertRoot string
	Timeout  time.Duration
}

// runNetcheckServer runs beam server check's probes from this device
// against the public server it is joined to: the device asks its
// coordinator for the server's setup (GET /server/setup) and probes what
// it names from outside.
func runNetcheckServer(ctx context.Context, f *Factory, in *instanceFlags, o *netcheckServerOptions) error {
	st, err := in.client(f).Status(ctx)
	if err != nil {
		return err
	}
	if st.Coordinator == "" {
		return errors.New("this device has not joined a server: run beam up --coordinator URL first")
	}
	// With several coordinators (replicas), the one streaming answers.
	coordURL, _, _ := strings.Cut(st.Coordinator, ",")
	if st.CoordinatorStream != "" {
		coordURL, _, _ = strings.Cut(st.CoordinatorStream, " ")
	}
	setup, err := coordclient.ServerSetup(ctx, coordURL, "", &http.Client{Timeout: o.Timeout})
	if ce, ok := errors.AsType[*coordclient.Error](err); ok && ce.Status == http.StatusNotFound {
		return fmt.Errorf("the coordinator at %s has no public setup to check: beam netcheck --server checks a public server (beam server --domain, not --dev)", st.Coordinator)
	}
	if err != nil {
		return fmt.Errorf("ask %s for its setup: %w", st.Coordinator, err)
	}
	c := serverCheckFromSetup(setup, o.Resolver, o.Timeout)
	c.Setup = func(ctx context.Context) (*wire.ServerSetup, error) { return setup, nil }
	if o.CertRoot != "" {
		pem, err := os.ReadFile(o.CertRoot)
		if err != nil {
			return fmt.Errorf("read --cert-root: %w", err)
		}
		c.Roots = x509.NewCertPool()
		if !c.Roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--cert-root %s holds no PEM certificate", o.CertRoot)
		}
	}
	fmt.Fprintf(f.Out, "Server %s, coordinator %s, checked from this device:\n", setup.Domain, st.Coordinator)
	if n := printCheck(f.Out, c.run(ctx)); n > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d check(s) of the server failed", n)}
	}
	return nil
}

// serverCheckFromSetup returns the check of the server that reported
// setup.
func serverCheckFromSetup(setup *wire.ServerSetup, resolver string, timeout time.Duration) *serverCheck {
	return &serverCheck{
		Domain: setup.Domain, PublicIPs: setup.PublicIPs, Resolver: resolver,
		DNSPort: int(setup.DNSPort), HTTPPort: int(setup.HTTPPort), HTTPSPort: int(setup.HTTPSPort),
		CoordPort: int(setup.CoordinatorPort), STUNPort: int(setup.STUNPort), STUNAltPort: int(setup.STUNAltPort), Timeout: timeout,
	}
}
