package nslab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// MiniUPnPd is the path of Debian's miniupnpd (package miniupnpd), which
// [Router.StartMiniUPnPd] runs.
const MiniUPnPd = "/usr/sbin/miniupnpd"

// miniUPnPdRuleset is what miniupnpd's nftables backend needs: table
// "inet filter" with the chains it fills (miniupnpd: a forward accept per
// mapping; prerouting_miniupnpd: the DNAT of each mapping;
// postrouting_miniupnpd), each jumped to from a base chain.
const miniUPnPdRuleset = `table inet filter {
	chain miniupnpd {
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		jump miniupnpd
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump postrouting_miniupnpd
	}
}
`

var blockJumpRE = regexp.MustCompile(`jump block # handle (\d+)`)

// MiniUPnPdOptions configures [Router.StartMiniUPnPd].
type MiniUPnPdOptions struct {
	// STUN is a STUN server in the internet namespace (required):
	// miniupnpd refuses a WAN address from the documentation ranges as
	// its public address unless STUN confirms it.
	STUN netip.AddrPort
	// UPnPOnly turns NAT-PMP and PCP off.
	UPnPOnly bool
}

// StartMiniUPnPd runs miniupnpd on the router, offering UPnP IGD, NAT-PMP
// and PCP (or UPnP only) to its LAN (listening on lan0, in secure mode: a
// host may map ports only to itself), with mappings of 2 to 60 minutes.
// It asks opts.STUN for its public address at start (from the router's own address, which the
// router then leaves unmasqueraded). The router's forward chain lets in
// what a mapping forwards (ct status dnat); miniupnpd's rules go to the
// table "inet filter" (see [Router.PortMappings]). The lab stops the
// daemon at cleanup; stop it earlier with [Proc.Stop].
func (r *Router) StartMiniUPnPd(opts MiniUPnPdOptions) *Proc {
	r.lab.t.Helper()
	if _, err := os.Stat(MiniUPnPd); err != nil {
		r.lab.t.Fatalf("nslab: %v: install the Debian package miniupnpd", err)
	}
	r.lab.mustNFT(r.ns, miniUPnPdRuleset)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := r.Run(ctx, "nft", "-a", "list", "chain", "ip", "nslab", "forward")
	if err != nil {
		r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
	}
	m := blockJumpRE.FindSubmatch(out)
	if m == nil {
		r.lab.t.Fatalf("nslab: router %s: no jump to block in the forward chain:\n%s", r.name, out)
	}
	r.lab.mustNFT(r.ns, fmt.Sprintf(
		"add rule ip nslab forward position %s iifname \"wan0\" ct status dnat accept\n"+
			"insert rule ip nslab postrouting ip saddr %s return\n", m[1], r.Addr()))

	dir, err := os.MkdirTemp("", "nslab-upnp-")
	if err != nil {
		r.lab.t.Fatal(err)
	}
	r.lab.t.Cleanup(func() { os.RemoveAll(dir) })
	conf := strings.Join([]string{
		"ext_ifname=wan0",
		"listening_ip=lan0",
		"port=0",
		"enable_upnp=yes",
		"enable_natpmp=" + map[bool]string{false: "yes", true: "no"}[opts.UPnPOnly],
		"secure_mode=yes",
		"system_uptime=yes",
		"ext_perform_stun=yes",
		"ext_stun_host=" + opts.STUN.Addr().String(),
		fmt.Sprintf("ext_stun_port=%d", opts.STUN.Port()),
		"min_lifetime=120",
		"max_lifetime=3600",
		"lease_file=" + filepath.Join(dir, "leases"),
		"uuid=6a1b5a3e-0000-4000-8000-000000000001",
		fmt.Sprintf("allow 1024-65535 %s 1024-65535", r.lan.Masked()),
		"deny 0-65535 0.0.0.0/0 0-65535",
		"",
	}, "\n")
	path := filepath.Join(dir, "miniupnpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		r.lab.t.Fatal(err)
	}
	// -d: stay in the foreground and log to stderr; -P: a pid file of its
	// own (one daemon per router, none in /run).
	p := r.Start(context.Background(), MiniUPnPd, "-d", "-f", path, "-P", filepath.Join(dir, "pid"))
	wctx, wcancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer wcancel()
	if _, err := p.WaitOutput(wctx, "Port forwarding is now enabled"); err != nil {
		p.Stop()
		r.lab.t.Fatalf("nslab: router %s: miniupnpd did not enable port forwarding: %v\n%s", r.name, err, p.Stderr())
	}
	ready := "Listening for NAT-PMP/PCP traffic"
	if opts.UPnPOnly {
		ready = "HTTP listening on port"
	}
	if _, err := p.WaitOutput(wctx, ready); err != nil {
		p.Stop()
		r.lab.t.Fatalf("nslab: router %s: miniupnpd: %v\n%s", r.name, err, p.Stderr())
	}
	return p
}

// PortMappings returns the DNAT rules miniupnpd holds on the router, one
// per port mapping ("udp dport 41641 dnat to 203.0.113.2:41641" and the
// like, as nft lists them).
func (r *Router) PortMappings() []string {
	r.lab.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := r.Run(ctx, "nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd")
	if err != nil {
		r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
	}
	var rules []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); strings.Contains(l, "dnat") {
			rules = append(rules, l)
		}
	}
	return rules
}
