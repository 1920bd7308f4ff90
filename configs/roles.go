package configs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"beam.dev/beam/types/key"
)

// The settings of each role as its flags give them, checked before the
// role starts: a bad domain, address, port range, URL or prefix is an
// error that names the flag, never a failure (or a panic) deep inside a
// component. Validate returns every problem found, joined.

// Server is beam server's settings.
type Server struct {
	Domain, Addr, PublicURL string
	HTTPAddr, HTTPSAddr     string
	TCPPorts, UDPPorts      string
	STUNAddr, DNSAddr       string
	PublicIPs               []string
	ACMECA                  string
	LogLevel                string
}

// Validate checks s.
func (s *Server) Validate() error {
	var c checker
	c.domain("--domain", s.Domain, true)
	c.listen("--addr", s.Addr, true)
	c.url("--public-url", s.PublicURL, false)
	c.listen("--http-addr", s.HTTPAddr, false)
	c.listen("--https-addr", s.HTTPSAddr, false)
	c.portRange("--tcp-ports", s.TCPPorts)
	c.portRange("--udp-ports", s.UDPPorts)
	c.listen("--stun-addr", s.STUNAddr, false)
	c.listen("--dns-addr", s.DNSAddr, false)
	for _, ip := range s.PublicIPs {
		c.ip("--public-ip", ip)
	}
	c.url("--acme-ca", s.ACMECA, false)
	c.logLevel(s.LogLevel)
	return c.err()
}

// Coordinator is beam coordinator's settings.
type Coordinator struct {
	Addr, BaseDomain           string
	DERPURLs, STUN             []string
	EdgeDomain, EdgeHost       string
	EdgeTCPPorts, EdgeUDPPorts string
	EdgeHTTPURL                string
	LogLevel                   string
}

// Validate checks c.
func (co *Coordinator) Validate() error {
	var c checker
	c.listen("--addr", co.Addr, true)
	c.domain("--base-domain", co.BaseDomain, true)
	for _, u := range co.DERPURLs {
		c.url("--derp", u, true)
	}
	for _, a := range co.STUN {
		c.hostPort("--stun", a)
	}
	c.domain("--edge-domain", co.EdgeDomain, false)
	if co.EdgeHost != "" {
		if _, err := netip.ParseAddr(co.EdgeHost); err != nil {
			c.domain("--edge-host", co.EdgeHost, true)
		}
	}
	c.portRange("--edge-tcp-ports", co.EdgeTCPPorts)
	c.portRange("--edge-udp-ports", co.EdgeUDPPorts)
	if co.EdgeHTTPURL != "" {
		c.url("--edge-http-url", strings.ReplaceAll(co.EdgeHTTPURL, "{host}", "host.example"), true)
	}
	c.logLevel(co.LogLevel)
	return c.err()
}

// Edge is beam edge's settings.
type Edge struct {
	Coordinator, Domain string
	HTTPAddr, HTTPSAddr string
	BindHost            string
	ACMECA              string
	LogLevel            string
}

// Validate checks e.
func (e *Edge) Validate() error {
	var c checker
	c.url("--coordinator", e.Coordinator, false)
	c.domain("--domain", e.Domain, true)
	c.listen("--http-addr", e.HTTPAddr, false)
	c.listen("--https-addr", e.HTTPSAddr, false)
	if e.BindHost != "" {
		c.ip("--bind-host", e.BindHost)
	}
	c.url("--acme-ca", e.ACMECA, false)
	c.logLevel(e.LogLevel)
	return c.err()
}

// DERP is beam derp's settings.
type DERP struct {
	Addr, STUNAddr string
	MeshWith       []string
	VerifyClients  string
	LogLevel       string
}

// Validate checks d.
func (d *DERP) Validate() error {
	var c checker
	c.listen("--addr", d.Addr, true)
	c.listen("--stun-addr", d.STUNAddr, false)
	for _, m := range d.MeshWith {
		u, _, err := ParseMeshPeer(m)
		if err != nil {
			c.add("--mesh-with", m, err.Error())
			continue
		}
		c.url("--mesh-with", u, true)
	}
	c.url("--verify-clients", d.VerifyClients, false)
	c.logLevel(d.LogLevel)
	return c.err()
}

// ParseMeshPeer splits a --mesh-with entry, "URL" or "URL#KEY", into the
// relay's URL and its pinned machine key (KEY is the "mkey:..." text the
// relay logs as machine_key at start). The key is zero when none is given.
func ParseMeshPeer(s string) (u string, k key.MachinePublic, err error) {
	u, frag, pinned := strings.Cut(s, "#")
	if !pinned {
		return u, k, nil
	}
	if k, err = key.ParseMachinePublic(frag); err != nil {
		return "", key.MachinePublic{}, fmt.Errorf("the part after # must be the relay's key (mkey:<64 hex>, the machine_key it logs at start): %w", err)
	}
	return u, k, nil
}

// Node is the settings of beam daemon and beam up.
type Node struct {
	Coordinator                  string
	SOCKS5, HTTPProxy, DNSListen string
	DNSUpstreams                 []string
	ACMECA                       string
	LogLevel                     string
}

// Validate checks n. The proxy and DNS listeners must be on loopback:
// anywhere else they would open the mesh to the host's network.
func (n *Node) Validate() error {
	var c checker
	c.url("--coordinator", n.Coordinator, false)
	for _, l := range []struct{ flag, v string }{{"--socks5", n.SOCKS5}, {"--http-proxy", n.HTTPProxy}, {"--dns-listen", n.DNSListen}} {
		if l.v == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(l.v)
		switch {
		case err != nil:
			c.add(l.flag, l.v, "want a loopback IP:PORT, e.g. 127.0.0.1:1080")
		case !ap.Addr().IsLoopback():
			c.add(l.flag, l.v, "only loopback addresses are allowed")
		}
	}
	for _, u := range n.DNSUpstreams {
		if _, err := netip.ParseAddrPort(u); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(u); err != nil {
			c.add("--dns-upstream", u, "want IP or IP:PORT")
		}
	}
	c.url("--acme-ca", n.ACMECA, false)
	c.logLevel(n.LogLevel)
	return c.err()
}

// checker collects problems.
type checker struct{ errs []error }

func (c *checker) add(flag, v, problem string) {
	c.errs = append(c.errs, fmt.Errorf("bad %s %q: %s", flag, v, problem))
}

func (c *checker) err() error { return errors.Join(c.errs...) }

// domain checks a DNS name (required: it may not be empty).
func (c *checker) domain(flag, v string, required bool) {
	if v == "" && !required {
		return
	}
	if err := CheckDomain(v); err != nil {
		c.add(flag, v, err.Error())
	}
}

// listen checks a listen address, host:port ("" disables it unless
// required).
func (c *checker) listen(flag, v string, required bool) {
	if v == "" && !required {
		return
	}
	if err := checkAddr(v, true); err != nil {
		c.add(flag, v, err.Error())
	}
}

// hostPort checks a host:port to reach (port 1-65535).
func (c *checker) hostPort(flag, v string) {
	if err := checkAddr(v, false); err != nil {
		c.add(flag, v, err.Error())
	}
}

func (c *checker) url(flag, v string, required bool) {
	if v == "" && !required {
		return
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.add(flag, v, "want http(s)://host[:port]")
		return
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			c.add(flag, v, "the port must be 1-65535")
		}
	}
}

func (c *checker) ip(flag, v string) {
	if _, err := netip.ParseAddr(v); err != nil {
		c.add(flag, v, "want an IP address")
	}
}

func (c *checker) portRange(flag, v string) {
	if v == "" {
		return
	}
	if _, _, err := ParsePortRange(v); err != nil {
		c.add(flag, v, err.Error())
	}
}

func (c *checker) logLevel(v string) {
	switch strings.ToLower(v) {
	case "", "debug", "info", "warn", "error":
	default:
		c.add("--log-level", v, "want debug, info, warn or error")
	}
}

// CheckDomain reports what is wrong with a DNS name: it must be labels of
// lower-case letters, digits and hyphens (not first or last), each 1-63
// bytes, at most 253 bytes in all, without a trailing dot.
func CheckDomain(s string) error {
	switch {
	case s == "":
		return errors.New("empty domain")
	case len(s) > 253:
		return errors.New("longer than 253 bytes")
	case strings.HasSuffix(s, "."):
		return errors.New("drop the trailing dot")
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return errors.New("empty label (two dots in a row, or a leading dot)")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q is longer than 63 bytes", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
		for i := 0; i < len(label); i++ {
			switch b := label[i]; {
			case b >= 'a' && b <= 'z', b >= '0' && b <= '9', b == '-':
			case b >= 'A' && b <= 'Z':
				return errors.New("use lower case")
			default:
				return fmt.Errorf("label %q has %q: only letters, digits and hyphens", label, b)
			}
		}
	}
	return nil
}

// ParsePortRange parses "FIRST-LAST" (or one port) with 1 <= FIRST <=
// LAST <= 65535.
func ParsePortRange(s string) (first, last uint16, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	f, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	l, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || f == 0 || l < f {
		return 0, 0, errors.New("want FIRST-LAST, ports 1-65535, FIRST no more than LAST")
	}
	return uint16(f), uint16(l), nil
}

// checkAddr checks host:port: the host empty (only to listen), an IP or a
// DNS name; the port a number, 0 only to listen.
func checkAddr(s string, listen bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want HOST:PORT, e.g. 127.0.0.1:8080 or :8080")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 && !listen {
		if listen {
			return errors.New("the port must be a number 0-65535")
		}
		return errors.New("the port must be a number 1-65535")
	}
	if host == "" {
		if !listen {
			return errors.New("a host is needed")
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := CheckDomain(strings.ToLower(host)); err != nil {
		return fmt.Errorf("host %q: %v", host, err)
	}
	return nil
}
