package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

// ACME directories used when --acme-ca is not given.
const (
	letsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"
	letsEncryptStaging    = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// settleACME picks the ACME directory of a public server and refuses
// settings that leave it no way to get certificates. A public server
// (not --dev) with an HTTPS listener uses Let's Encrypt's production
// directory unless --acme-ca or --acme-staging names another.
func (o *ServerOptions) settleACME() error {
	if o.ACMEStaging {
		if o.ACMECA != "" {
			return errors.New("--acme-staging and --acme-ca both name an ACME directory: give one")
		}
		o.ACMECA = letsEncryptStaging
	}
	if o.Dev || o.HTTPSAddr == "" {
		return nil
	}
	if o.ACMECA == "" {
		o.ACMECA = letsEncryptProduction
	}
	if o.DNSAddr == "" {
		return fmt.Errorf("--dns-addr \"\" leaves no way to get certificates for %s: the wildcard certificate is issued by DNS-01 through the built-in zone. Keep --dns-addr (default :53), or give --https-addr \"\" to serve plain HTTP only", o.Domain)
	}
	return nil
}

// setupWarnings returns what a public server's settings get wrong
// without being refused: plain HTTP only, listeners a device elsewhere
// cannot reach. Nothing for --dev.
func (o *ServerOptions) setupWarnings() []string {
	if o.Dev {
		return nil
	}
	var out []string
	if o.HTTPSAddr == "" {
		out = append(out, fmt.Sprintf("--https-addr \"\": no HTTPS; routes are plain http://NAME.%s and nothing is encrypted between browsers and this server", o.Domain))
	}
	for _, l := range []struct{ flag, addr string }{
		{"--addr", o.Addr}, {"--http-addr", o.HTTPAddr}, {"--https-addr", o.HTTPSAddr},
		{"--dns-addr", o.DNSAddr}, {"--stun-addr", o.STUNAddr},
	} {
		if loopbackAddr(l.addr) {
			out = append(out, fmt.Sprintf("%s %s listens on loopback only: devices and resolvers elsewhere cannot reach it under %s; listen on all addresses (%s) or the public one, or use --dev for a local server", l.flag, l.addr, o.Domain, anyAddr(l.addr)))
		}
	}
	if o.DNSAddr != "" && len(o.PublicIPs) == 0 {
		out = append(out, fmt.Sprintf("no --public-ip: the zone gives NAME.%s no address, so browsers find nothing; pass this server's public address", o.Domain))
	}
	for _, s := range o.PublicIPs {
		if a, err := netip.ParseAddr(s); err == nil && (a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast()) {
			out = append(out, fmt.Sprintf("--public-ip %s is not a public address: the zone sends browsers there", s))
		}
	}
	return out
}

// loopbackAddr reports whether listen address hostport names a loopback
// host.
func loopbackAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// anyAddr is hostport with its host dropped (":PORT").
func anyAddr(hostport string) string {
	_, port, _ := net.SplitHostPort(hostport)
	return ":" + port
}

// routeURL is the URL a published port of device NAME gets, as the
// coordinator will hand it out (see serverEdgeOptions).
func (o *ServerOptions) routeURL() string {
	if o.HTTPSAddr != "" && o.ACMECA != "" {
		if _, port, err := net.SplitHostPort(o.HTTPSAddr); err == nil && port != "443" {
			return "https://NAME." + o.Domain + ":" + port
		}
		return "https://NAME." + o.Domain
	}
	if _, port, err := net.SplitHostPort(o.HTTPAddr); err == nil && port != "80" {
		return "http://NAME." + o.Domain + ":" + port
	}
	return "http://NAME." + o.Domain
}

// printPublicSetup tells the operator of a public server what the world
// must see for it to work: the URLs, the DNS records to create at the
// registrar (the zone's delegation and its glue), and the ports to open.
func printPublicSetup(w io.Writer, o *ServerOptions, publicURL string) {
	fmt.Fprintf(w, "\nPublic setup for %s:\n", o.Domain)
	fmt.Fprintf(w, "  devices join at:       %s\n", publicURL)
	fmt.Fprintf(w, "  beam expose gives:     %s\n", o.routeURL())
	if o.HTTPSAddr != "" && o.ACMECA != "" {
		fmt.Fprintf(w, "  certificate:           *.%s from %s, by DNS-01 through this server's zone\n", o.Domain, o.ACMECA)
	}
	if o.DNSAddr != "" {
		ns := "ns1." + o.Domain
		fmt.Fprintf(w, "  create these records where %s is registered (at the registrar, or in the parent zone):\n", o.Domain)
		fmt.Fprintf(w, "    %s. NS %s.          (delegation: this server answers for %s)\n", o.Domain, ns, o.Domain)
		ips := o.PublicIPs
		if len(ips) == 0 {
			ips = []string{"PUBLIC-IP"}
		}
		for _, ip := range ips {
			typ := "A"
			if a, err := netip.ParseAddr(ip); err == nil && a.Is6() {
				typ = "AAAA"
			}
			fmt.Fprintf(w, "    %s. %s %s          (glue: this server's public address)\n", ns, typ, ip)
		}
		if len(o.PublicIPs) == 0 {
			fmt.Fprintf(w, "    and restart with --public-ip PUBLIC-IP: without it the zone sends browsers nowhere\n")
		}
	}
	fmt.Fprintf(w, "  for a custom domain of a route (app.customer.com), where that domain's DNS is hosted:\n")
	fmt.Fprintf(w, "    app.customer.com. CNAME NAME.%s.          (traffic: to this server's edge)\n", o.Domain)
	fmt.Fprintf(w, "    the TXT record beam admin domains verify app.customer.com prints          (proof of control, once)\n")
	var ports []string
	for _, l := range []struct{ proto, addr string }{
		{"tcp+udp", o.DNSAddr}, {"tcp", o.HTTPAddr}, {"tcp", o.HTTPSAddr}, {"tcp", o.Addr}, {"udp", o.STUNAddr},
	} {
		if _, port, err := net.SplitHostPort(l.addr); err == nil {
			ports = append(ports, l.proto+" "+port)
		}
	}
	if p := stunAltPort(o.STUNAddr, o.STUNAltAddr); p != "" {
		ports = append(ports, "udp "+p+" (second STUN port)")
	}
	if o.TCPPorts != "" {
		ports = append(ports, "tcp "+o.TCPPorts+" (for --tcp routes)")
	}
	if o.UDPPorts != "" {
		ports = append(ports, "udp "+o.UDPPorts+" (for --udp routes)")
	}
	fmt.Fprintf(w, "  open these ports to this host: %s\n", strings.Join(ports, ", "))
}

// publicSetup is what a public server answers to GET
// wire.PathServerSetup. runServer fills in the ports as its listeners
// start, before the coordinator serves; the edge's ports and the
// certificate's status come last, through setEdge.
type publicSetup struct {
	wire.ServerSetup

	mu         sync.Mutex // guards the following fields
	httpPort   uint16
	httpsPort  uint16
	certStatus func() edge.CertStatus // nil: no ACME
}

// setEdge records the edge's listeners (nil: none) and the certificate
// status source (nil: not ACME).
func (p *publicSetup) setEdge(http, https net.Addr, status func() edge.CertStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.httpPort, p.httpsPort, p.certStatus = addrPort(http), addrPort(https), status
}

// get returns the setup of the moment.
func (p *publicSetup) get() *wire.ServerSetup {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.ServerSetup
	s.PublicIPs = slices.Clone(s.PublicIPs)
	s.HTTPPort, s.HTTPSPort = p.httpPort, p.httpsPort
	if p.certStatus != nil {
		s.Certificate = wireCertStatus(p.certStatus())
	}
	return &s
}

// wireCertStatus is st as the setup check reads it.
func wireCertStatus(st edge.CertStatus) *wire.CertStatus {
	return &wire.CertStatus{Name: st.Name, CA: st.CA, State: string(st.State), Orders: st.Orders,
		Problem: st.Problem, Error: st.Error, Changed: st.Changed}
}

// logCertStatus logs the certificate's status changes for the operator:
// an issued certificate, and a failed order with what to do about it, as
// beam server check would say it.
func logCertStatus(o *ServerOptions, logger *slog.Logger) func(edge.CertStatus) {
	c := &serverCheck{Domain: o.Domain}
	for _, s := range o.PublicIPs {
		if a, err := netip.ParseAddr(s); err == nil {
			c.PublicIPs = append(c.PublicIPs, a)
		}
	}
	return func(st edge.CertStatus) {
		switch st.State {
		case edge.CertIssued:
			if st.Error == "" {
				logger.Info("certificate issued", "name", st.Name, "ca", st.CA)
			}
		case edge.CertFailed:
			logger.Warn("certificate order failed", "name", st.Name, "ca", st.CA, "orders", st.Orders, "problem", st.Problem, "err", st.Error,
				"fix", c.orderFix(wireCertStatus(st)))
		}
	}
}

// addrPort is the port of a TCP listener's address, 0 for nil.
func addrPort(a net.Addr) uint16 {
	if ta, ok := a.(*net.TCPAddr); ok {
		return uint16(ta.Port)
	}
	return 0
}
