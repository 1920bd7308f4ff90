package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/cobra"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/derp"
	"beam.dev/beam/wire"
)

// serverCheck is what beam server check looks at: the domain's
// delegation as a resolver sees it, and the server's listeners at its
// public addresses.
type serverCheck struct {
	Domain    string
	PublicIPs []netip.Addr
	// Resolver is the recursive resolver (host:port) the delegation is
	// looked up through; "" means the first nameserver of
	// /etc/resolv.conf.
	Resolver string
	// Ports of the listeners to probe at each public address; 0 skips.
	DNSPort, HTTPPort, HTTPSPort, CoordPort, STUNPort int
	// STUNAltPort is the second STUN port; 0 for none.
	STUNAltPort int
	// Roots verify the edge's certificate; nil means the system's.
	Roots   *x509.CertPool
	Timeout time.Duration
	// Setup, if not nil, asks the server for its setup, whose certificate
	// status explains an edge that has no certificate.
	Setup func(ctx context.Context) (*wire.ServerSetup, error)
}

// checkResult is one finding: what was checked, whether it is fine, and
// if not, what to do.
type checkResult struct {
	What string
	OK   bool
	Said string
	Fix  string
}

func (r checkResult) String() string {
	mark := "ok  "
	if !r.OK {
		mark = "FAIL"
	}
	s := fmt.Sprintf("%s %s: %s", mark, r.What, r.Said)
	if !r.OK && r.Fix != "" {
		s += "\n     fix: " + r.Fix
	}
	return s
}

// run performs every check, each bounded by c.Timeout.
func (c *serverCheck) run(ctx context.Context) []checkResult {
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	out := []checkResult{c.delegation(ctx)}
	if len(c.PublicIPs) == 0 {
		out = append(out, checkResult{What: "public address", Said: "no --public-ip given, so there is nothing to probe and the zone gives routes no address",
			Fix: "start beam server with --public-ip and this host's public address"})
		return out
	}
	for _, ip := range c.PublicIPs {
		if c.DNSPort != 0 {
			out = append(out, c.dnsListener(ctx, ip))
		}
		for _, l := range []struct {
			what string
			port int
		}{{"edge HTTP", c.HTTPPort}, {"coordinator", c.CoordPort}} {
			if l.port != 0 {
				out = append(out, c.tcpListener(ctx, l.what, ip, l.port))
			}
		}
		if c.HTTPSPort != 0 {
			out = append(out, c.certificate(ctx, ip))
		}
		for _, p := range []int{c.STUNPort, c.STUNAltPort} {
			if p != 0 {
				out = append(out, c.stun(ctx, ip, p))
			}
		}
	}
	return out
}

// resolver returns the resolver address to use.
func (c *serverCheck) resolver() (string, error) {
	if c.Resolver != "" {
		return c.Resolver, nil
	}
	cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(cfg.Servers) == 0 {
		return "", fmt.Errorf("no resolver in /etc/resolv.conf: %v", err)
	}
	return net.JoinHostPort(cfg.Servers[0], cfg.Port), nil
}

func (c *serverCheck) query(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	cl := &dns.Client{Timeout: c.Timeout}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	r, _, err := cl.ExchangeContext(ctx, m, server)
	return r, err
}

// delegation asks the resolver for the domain's NS records and the
// address of this zone's name server: they must be ns1.DOMAIN and the
// public addresses.
func (c *serverCheck) delegation(ctx context.Context) checkResult {
	res := checkResult{What: "delegation of " + c.Domain}
	ns := "ns1." + c.Domain + "."
	records := fmt.Sprintf("%s. NS %s at the registrar of %s, with the glue record %s A %s", c.Domain, ns, c.Domain, ns, c.ipList())
	server, err := c.resolver()
	if err != nil {
		res.Said, res.Fix = err.Error(), "pass --resolver HOST:PORT"
		return res
	}
	r, err := c.query(ctx, server, c.Domain, dns.TypeNS)
	if err != nil {
		res.Said = fmt.Sprintf("the resolver %s did not answer: %v", server, err)
		res.Fix = "check this host's network, or pass --resolver HOST:PORT"
		return res
	}
	var got []string
	for _, rr := range append(r.Answer, r.Ns...) {
		if n, ok := rr.(*dns.NS); ok && strings.EqualFold(n.Hdr.Name, c.Domain+".") {
			got = append(got, strings.ToLower(n.Ns))
		}
	}
	switch {
	case r.Rcode == dns.RcodeNameError:
		res.Said = fmt.Sprintf("%s does not exist for the resolver %s", c.Domain, server)
		res.Fix = "register the domain (or use a name under one you own) and create " + records
		return res
	case r.Rcode != dns.RcodeSuccess:
		res.Said = fmt.Sprintf("the resolver %s answered %s for %s NS: the delegation is broken or this server's DNS (port 53) does not answer it", server, dns.RcodeToString[r.Rcode], c.Domain)
		res.Fix = "create " + records + ", and open port 53 (UDP and TCP) to this host"
		return res
	case len(got) == 0:
		res.Said = fmt.Sprintf("%s has no NS records", c.Domain)
		res.Fix = "create " + records
		return res
	case !slices.Contains(got, ns):
		res.Said = fmt.Sprintf("%s is delegated to %s, not to this server (%s)", c.Domain, strings.Join(got, ", "), ns)
		res.Fix = "replace those NS records with " + records + "; changes can take up to the old records' TTL to be seen"
		return res
	}
	if len(c.PublicIPs) > 0 {
		a, err := c.query(ctx, server, ns, dns.TypeA)
		var addrs []string
		if err == nil {
			for _, rr := range a.Answer {
				if x, ok := rr.(*dns.A); ok {
					addrs = append(addrs, x.A.String())
				}
			}
		}
		if !c.anyPublic(addrs) {
			res.Said = fmt.Sprintf("%s is delegated to %s, but %s resolves to %s, not this server (%s)", c.Domain, ns, ns, orNothing(addrs), c.ipList())
			res.Fix = fmt.Sprintf("set the glue record %s A %s at the registrar", ns, c.ipList())
			return res
		}
	}
	res.OK, res.Said = true, fmt.Sprintf("delegated to %s", ns)
	return res
}

func (c *serverCheck) anyPublic(addrs []string) bool {
	for _, s := range addrs {
		if a, err := netip.ParseAddr(s); err == nil && slices.Contains(c.PublicIPs, a.Unmap()) {
			return true
		}
	}
	return false
}

func (c *serverCheck) ipList() string {
	if len(c.PublicIPs) == 0 {
		return "PUBLIC-IP"
	}
	s := make([]string, len(c.PublicIPs))
	for i, a := range c.PublicIPs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func orNothing(s []string) string {
	if len(s) == 0 {
		return "nothing"
	}
	return strings.Join(s, ", ")
}

// closedFix is what to do about a listener that does not answer.
func closedFix(proto string, port int) string {
	return fmt.Sprintf("check that beam server listens on %s port %d on all addresses and that firewalls and the cloud provider's security group let %s %d in", proto, port, proto, port)
}

func (c *serverCheck) dnsListener(ctx context.Context, ip netip.Addr) checkResult {
	addr := netip.AddrPortFrom(ip, uint16(c.DNSPort)).String()
	res := checkResult{What: "DNS at " + addr}
	r, err := c.query(ctx, addr, c.Domain, dns.TypeSOA)
	switch {
	case err != nil:
		res.Said, res.Fix = fmt.Sprintf("no answer: %v", err), closedFix("udp", c.DNSPort)
	case !r.Authoritative || r.Rcode != dns.RcodeSuccess:
		res.Said = fmt.Sprintf("answered %s for %s SOA, not as its authority", dns.RcodeToString[r.Rcode], c.Domain)
		res.Fix = "another DNS server holds the port: stop it (systemd-resolved's stub listens on 127.0.0.53 only, which is fine)"
	default:
		res.OK, res.Said = true, "answers for "+c.Domain
	}
	return res
}

func (c *serverCheck) tcpListener(ctx context.Context, what string, ip netip.Addr, port int) checkResult {
	addr := netip.AddrPortFrom(ip, uint16(port)).String()
	res := checkResult{What: what + " at " + addr}
	d := net.Dialer{Timeout: c.Timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		res.Said, res.Fix = fmt.Sprintf("closed: %v", err), closedFix("tcp", port)
		return res
	}
	conn.Close()
	res.OK, res.Said = true, "answers"
	return res
}

// certificate connects to the HTTPS listener as a browser would for a
// name under the domain and checks the certificate it is given.
func (c *serverCheck) certificate(ctx context.Context, ip netip.Addr) checkResult {
	addr := netip.AddrPortFrom(ip, uint16(c.HTTPSPort)).String()
	name := "beam-check." + c.Domain
	res := checkResult{What: "certificate at " + addr}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: c.Timeout}, Config: &tls.Config{ServerName: name, RootCAs: c.Roots, InsecureSkipVerify: true}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			res.Said, res.Fix = fmt.Sprintf("closed: %v", err), closedFix("tcp", c.HTTPSPort)
			return res
		}
		res.Said, res.Fix = c.noCertificate(ctx, name, err)
		return res
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	leaf := certs[0]
	inter := x509.NewCertPool()
	for _, x := range certs[1:] {
		inter.AddCert(x)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: c.Roots, Intermediates: inter}); err != nil {
		res.Said = fmt.Sprintf("the certificate (%s, issued by %s) does not verify: %v", strings.Join(leaf.DNSNames, ", "), leaf.Issuer.CommonName, err)
		res.Fix = "certificates from --acme-staging or a private CA are not trusted by browsers: use the default (production) directory once the setup works"
		return res
	}
	res.OK, res.Said = true, fmt.Sprintf("%s, issued by %s, valid until %s", strings.Join(leaf.DNSNames, ", "), leaf.Issuer.CommonName, leaf.NotAfter.UTC().Format(time.DateOnly))
	return res
}

// noCertificate explains a handshake for name that got no certificate
// (err), from the server's status of its ACME order when it tells it.
func (c *serverCheck) noCertificate(ctx context.Context, name string, herr error) (said, fix string) {
	said = fmt.Sprintf("no certificate for %s yet: %v", name, herr)
	fix = "the ACME order has not succeeded: read beam server's log lines of component acme; the usual cause is a delegation the CA cannot follow (see above), or the CA's rate limit (try --acme-staging)"
	if c.Setup == nil {
		return said, fix
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	setup, err := c.Setup(ctx)
	if err != nil {
		return said + fmt.Sprintf(" (and the server did not say how its ACME order stands: %v)", err), fix
	}
	cs := setup.Certificate
	if cs == nil {
		return fmt.Sprintf("no certificate for %s: the server gets none by ACME", name),
			"start beam server with an HTTPS listener (--https-addr, default :443) and an ACME directory (the default Let's Encrypt, --acme-staging or --acme-ca URL)"
	}
	switch {
	case cs.State == wire.CertFailed && cs.CA == "":
		// The public view: why it failed is the admin's to read.
		return fmt.Sprintf("no certificate for %s: the server's ACME order for %s failed", name, cs.Name),
			"the server tells why only to its admin: run beam server check on the server with the server's --data (as a user that may read the admin token there), or read beam server's log lines of component acme"
	case cs.State == wire.CertFailed:
		what := cs.Error
		if cs.Problem != "" {
			what = cs.Problem + ": " + cs.Error
		}
		return fmt.Sprintf("no certificate for %s: the ACME order for %s at %s failed (%d order(s), the last %s ago): %s", name, cs.Name, cs.CA, cs.Orders, time.Since(cs.Changed).Round(time.Second), what),
			c.orderFix(cs)
	case cs.State == wire.CertPending:
		at := ""
		if cs.CA != "" {
			at = " at " + cs.CA
		}
		return fmt.Sprintf("no certificate for %s yet: the ACME order for %s%s is under way", name, cs.Name, at),
			"wait a minute and check again: orders take seconds to a minute; if it stays pending, read beam server's log lines of component acme"
	}
	return said + fmt.Sprintf(" (the server says %s is %s)", cs.Name, cs.State), "restart beam server; if that does not help, read its log lines of component acme and edge"
}

// orderFix is what to do about a failed ACME order, by the CA's problem.
func (c *serverCheck) orderFix(cs *wire.CertStatus) string {
	ns := "ns1." + c.Domain + "."
	again := "; the server orders again on its own with backoff (1, 2, 2, 5, 10 minutes, ...), or restart it to order at once"
	switch cs.Problem {
	case "unauthorized", "dns", "incorrectResponse", "connection":
		return fmt.Sprintf("the CA could not read the DNS-01 record _acme-challenge.%s from this server's zone: create %s. NS %s at the registrar of %s with the glue record %s A %s, and open port 53 (UDP and TCP) to this host (see the delegation and DNS checks)%s",
			c.Domain, c.Domain, ns, c.Domain, ns, c.ipList(), again)
	case "rateLimited":
		return fmt.Sprintf("the CA's rate limit for %s: wait for the time its error names; try setups against --acme-staging, whose limits are generous, and switch to the production directory once they pass", c.Domain)
	case "caa":
		return fmt.Sprintf("a CAA record of %s (or a parent) forbids this CA: remove it or add one naming the CA%s", c.Domain, again)
	case "invalidContact", "unsupportedContact":
		return "the CA refuses the contact address: give beam server a working --acme-email" + again
	case "rejectedIdentifier", "unsupportedIdentifier":
		return fmt.Sprintf("the CA will not issue certificates for %s: use a domain under a public suffix the CA accepts", c.Domain)
	case "":
		return fmt.Sprintf("beam server could not talk to the ACME directory %s: check that the server reaches it over HTTPS (outbound TCP 443 and DNS), the --acme-ca URL, and --acme-ca-root for a private CA%s", cs.CA, again)
	}
	return "read the CA's error above, and beam server's log lines of component acme" + again
}

func (c *serverCheck) stun(ctx context.Context, ip netip.Addr, port int) checkResult {
	addr := netip.AddrPortFrom(ip, uint16(port)).String()
	res := checkResult{What: "STUN at " + addr, Fix: closedFix("udp", port)}
	conn, err := net.Dial("udp", addr)
	if err != nil {
		res.Said = err.Error()
		return res
	}
	defer conn.Close()
	txID, req := derp.STUNBindingRequest()
	deadline := time.Now().Add(c.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	buf := make([]byte, 1500)
	// Send again every second: UDP may drop the first.
	for time.Now().Before(deadline) {
		if _, err := conn.Write(req); err != nil {
			res.Said = err.Error()
			return res
		}
		rd := time.Now().Add(time.Second)
		if rd.After(deadline) {
			rd = deadline
		}
		conn.SetReadDeadline(rd)
		n, err := conn.Read(buf)
		if err != nil {
			continue
		}
		if id, _, err := derp.ParseSTUNResponse(buf[:n]); err == nil && id == txID {
			res.OK, res.Said, res.Fix = true, "answers", ""
			return res
		}
	}
	res.Said = "no answer"
	return res
}

// print writes the results and returns how many failed.
func printCheck(w io.Writer, rs []checkResult) int {
	failed := 0
	for _, r := range rs {
		fmt.Fprintln(w, r)
		if !r.OK {
			failed++
		}
	}
	return failed
}

// portOf is the port of listen address hostport, 0 if none.
func portOf(hostport string) int {
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// newServerCheck returns the check of a server started with o.
func newServerCheck(o *ServerOptions, resolver string) (*serverCheck, error) {
	c := &serverCheck{Domain: o.Domain, Resolver: resolver,
		DNSPort: portOf(o.DNSAddr), HTTPPort: portOf(o.HTTPAddr), CoordPort: portOf(o.Addr), STUNPort: portOf(o.STUNAddr)}
	c.STUNAltPort, _ = strconv.Atoi(stunAltPort(o.STUNAddr, o.STUNAltAddr))
	// The coordinator at the first public address tells how the
	// certificate's order stands.
	if c.CoordPort != 0 && len(o.PublicIPs) > 0 {
		url := "http://" + net.JoinHostPort(o.PublicIPs[0], strconv.Itoa(c.CoordPort))
		c.Setup = func(ctx context.Context) (*wire.ServerSetup, error) {
			// With the admin token (when this user may read it), the
			// coordinator tells how the certificate's order went.
			tok, _ := readToken(filepath.Join(o.DataDir, "admin.token"), "admin token")
			return coordclient.ServerSetup(ctx, url, tok, nil)
		}
	}
	if o.ACMECA != "" {
		c.HTTPSPort = portOf(o.HTTPSAddr)
	}
	for _, s := range o.PublicIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("bad --public-ip %q", s)
		}
		c.PublicIPs = append(c.PublicIPs, a)
	}
	if o.ACMECARoot != "" {
		pem, err := os.ReadFile(o.ACMECARoot)
		if err != nil {
			return nil, fmt.Errorf("read --cert-root: %w", err)
		}
		c.Roots = x509.NewCertPool()
		c.Roots.AppendCertsFromPEM(pem)
	}
	return c, nil
}

// newCmdServerCheck returns beam server check: the server's flags, and
// what the world sees of a server started with them.
func newCmdServerCheck(f *Factory) *cobra.Command {
	o := &ServerOptions{}
	var resolver string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a public server's setup: delegation, listeners at its public addresses, certificate",
		Long: `Check what the world sees of a beam server started with the same flags:
whether the domain's NS delegation points at this server's zone, whether its
listeners answer at its public addresses, and whether the edge has a certificate;
if not, the server's coordinator says how its ACME order stands and why it failed.
Each failure says what to fix (from a device, beam netcheck --server runs the same
checks against the server it joined). Probing from the server itself does not prove the
ports are open from outside (a firewall may let the host reach itself).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Domain == "" {
				return errors.New("--domain is required")
			}
			if err := o.config().Validate(); err != nil {
				return err
			}
			if err := o.settleACME(); err != nil {
				return err
			}
			c, err := newServerCheck(o, resolver)
			if err != nil {
				return err
			}
			c.Timeout = timeout
			if n := printCheck(f.Out, c.run(cmd.Context())); n > 0 {
				return fmt.Errorf("%d check(s) failed", n)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Domain, "domain", "", "the server's --domain")
	fl.StringSliceVar(&o.PublicIPs, "public-ip", nil, "the server's --public-ip")
	fl.StringVar(&o.Addr, "addr", ":8080", "the server's --addr")
	fl.StringVar(&o.HTTPAddr, "http-addr", ":80", "the server's --http-addr")
	fl.StringVar(&o.HTTPSAddr, "https-addr", ":443", "the server's --https-addr")
	fl.StringVar(&o.STUNAddr, "stun-addr", ":3478", "the server's --stun-addr")
	fl.StringVar(&o.STUNAltAddr, "stun-alt-addr", "", "the server's --stun-alt-addr (\"\": --stun-addr's port + 1; \"off\": none)")
	fl.StringVar(&o.DNSAddr, "dns-addr", ":53", "the server's --dns-addr")
	fl.StringVar(&o.DataDir, "data", configs.DefaultServer().DataDir, "the server's --data: its admin token gets why a certificate order failed (without it, the coordinator tells only that it did)")
	fl.StringVar(&o.ACMECA, "acme-ca", "", "the server's --acme-ca")
	fl.BoolVar(&o.ACMEStaging, "acme-staging", false, "the server's --acme-staging")
	fl.StringVar(&o.ACMECARoot, "cert-root", "", "PEM root the edge's certificate must chain to (default: the system's roots)")
	fl.StringVar(&resolver, "resolver", "", "recursive resolver HOST:PORT to look the delegation up through (default: the system's)")
	fl.DurationVar(&timeout, "timeout", 5*time.Second, "how long each probe waits")
	return cmd
}

// startupCheck runs beam server check's delegation and listener checks
// once the server serves, logging a warning with the fix for each
// failure. The certificate is left to beam server check: it takes the CA
// a while.
func startupCheck(ctx context.Context, o *ServerOptions, logger *slog.Logger) {
	c, err := newServerCheck(&ServerOptions{Server: configs.Server{Domain: o.Domain, Zone: o.Zone, Addr: o.Addr, HTTPAddr: o.HTTPAddr,
		// The second STUN port is left out: beam server skips a derived
		// one that is taken, with a warning of its own.
		STUNAddr: o.STUNAddr, STUNAltAddr: configs.STUNAltOff}}, "")
	if err != nil {
		logger.Warn("setup check", "err", err)
		return
	}
	for _, r := range c.run(ctx) {
		if r.OK {
			logger.Info("setup check", "what", r.What, "result", r.Said)
		} else {
			logger.Warn("setup check failed", "what", r.What, "result", r.Said, "fix", r.Fix)
		}
	}
}
