package cli

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
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
