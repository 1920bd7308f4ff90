package nslab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
)

// Router is the NAT router namespace in front of a host added by
// [Lab.AddNATHost]. Its embedded [Host] runs commands in the router's
// namespace; its Addr is the WAN (public) address. Like [Lab], its methods
// fail the test on error.
//
// The router's nftables table "ip nslab" holds: postrouting masquerade out
// of wan0; an input chain dropping unsolicited packets arriving on wan0; a
// forward chain (policy drop) letting LAN to WAN and established or related
// traffic through, with named counters (see [Router.Counters]); and an empty
// chain "block" that [Router.BlockUDP] fills. With [Lab.EnableIPv6] a table
// "ip6 nslab6" does the same for IPv6, without NAT: it forwards between the
// LAN's /64 and the internet, letting outbound traffic and its replies
// through and dropping unsolicited inbound packets.
type Router struct {
	*Host
	lab     *Lab
	kind    NATKind
	lan     netip.Prefix
	lanAddr netip.Addr
	port    string // the router's bridge port in the inet namespace
	// lan6 and lanAddr6 are the LAN's IPv6 /64 and the router's address
	// in it; invalid without Lab.EnableIPv6.
	lan6     netip.Prefix
	lanAddr6 netip.Addr

	mu       sync.Mutex // guards the following fields
	nextHost netip.Addr // next free host address on the LAN
	nHosts   int
	link     *Proc // the link emulator, once SetNetem has been called
	// linkSeq counts commands sent to link.
	linkSeq int
	// impaired says whether port is off the bridge and link forwards it.
	impaired bool
}

// Kind returns the router's NAT kind.
func (r *Router) Kind() NATKind { return r.kind }

// LANAddr returns the router's address on its LAN (the host's gateway).
func (r *Router) LANAddr() netip.Addr { return r.lanAddr }

// AddHost adds another host behind the router, on the same LAN as the
// first; a LAN has room for 5 hosts. Hosts on one LAN reach each other
// directly through the router's LAN bridge. The router does not hairpin:
// a host sending to its own router's WAN address gets no answer.
func (r *Router) AddHost(name string) *Host {
	r.lab.t.Helper()
	r.lab.claimName(name)
	return r.addHost(name)
}

// addHost adds a host named name (already claimed) to the router's LAN.
func (r *Router) addHost(name string) *Host {
	r.lab.t.Helper()
	r.mu.Lock()
	addr := r.nextHost
	if !r.lan.Contains(addr.Next()) { // keep the broadcast address free
		r.mu.Unlock()
		r.lab.t.Fatalf("nslab: router %s: LAN %v is full", r.name, r.lan)
	}
	r.nextHost = addr.Next()
	r.nHosts++
	port := "l" + strconv.Itoa(r.nHosts)
	r.mu.Unlock()

	h := r.lab.newNamespace(name, "h-"+name)
	h.addr = addr
	h.router = r
	r.lab.mustIP(r.ns,
		"link add name "+port+" type veth peer name eth0 netns "+h.ns,
		"link set "+port+" master lan0",
		"link set "+port+" up",
	)
	r.lab.mustIP(h.ns,
		fmt.Sprintf("addr add %s/%d dev eth0", addr, r.lan.Bits()),
		"link set eth0 up",
		"route add default via "+r.lanAddr.String(),
	)
	if r.lan6.IsValid() {
		h.addr6 = lanAddr6(r.lan6, r.lan, addr)
		r.lab.mustIP(h.ns,
			"addr add "+h.addr6.String()+"/64 dev eth0 nodad",
			"route add ::/0 via "+r.lanAddr6.String(),
		)
	}
	return h
}

func routerRuleset(kind NATKind) string {
	masq := "masquerade"
	if kind == NATHard {
		masq = "masquerade random,fully-random"
	}
	udpBlock := ""
	if kind == NATUDPBlocked {
		udpBlock = `iifname "lan0" oifname "wan0" meta l4proto udp drop`
	}
	return fmt.Sprintf(`table ip nslab {
	counter udp_out {}
	counter udp_in {}
	counter tcp_out {}
	counter tcp_in {}
	counter dropped_in {}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" %s
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" ct state established,related accept
		iifname "wan0" counter name "dropped_in" drop
	}
	chain block {
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		%s
		jump block
		iifname "lan0" oifname "wan0" meta l4proto udp counter name "udp_out" accept
		iifname "lan0" oifname "wan0" meta l4proto tcp counter name "tcp_out" accept
		iifname "lan0" oifname "wan0" accept
		iifname "wan0" ct state established,related meta l4proto udp counter name "udp_in" accept
		iifname "wan0" ct state established,related meta l4proto tcp counter name "tcp_in" accept
		ct state established,related accept
		iifname "wan0" counter name "dropped_in" drop
	}
}
`, masq, udpBlock)
}

// routerRuleset6 is the IPv6 filter of every router in a lab with IPv6:
// stateful like a home router's, whatever the IPv4 NAT kind. Neighbour
// discovery must reach the router itself from the WAN side.
func routerRuleset6() string {
	return `table ip6 nslab6 {
	counter udp6_out {}
	counter udp6_in {}
	counter dropped6_in {}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
		iifname "wan0" ct state established,related accept
		iifname "wan0" counter name "dropped6_in" drop
	}
	chain block {
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		jump block
		iifname "lan0" oifname "wan0" meta l4proto udp counter name "udp6_out" accept
		iifname "lan0" oifname "wan0" accept
		iifname "wan0" ct state established,related meta l4proto udp counter name "udp6_in" accept
		ct state established,related accept
		iifname "wan0" counter name "dropped6_in" drop
	}
}
`
}

// FlushConntrack deletes every conntrack entry of the router (conntrack -F),
// like a NAT reboot: existing mappings are forgotten, inbound packets for
// them are dropped as unsolicited, and the next outbound packet of each flow
// gets a new mapping.
func (r *Router) FlushConntrack() {
	r.lab.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := r.Run(ctx, "conntrack", "-F"); err != nil {
		r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
	}
}

// BlockUDP starts (true) or stops (false) dropping all UDP the router
// forwards, in both directions and over IPv4 and IPv6, to cut a direct path
// in the middle of a test. Packets of TCP and other protocols are
// unaffected.
func (r *Router) BlockUDP(block bool) {
	r.lab.t.Helper()
	rules := "flush chain ip nslab block\n"
	if block {
		rules += "add rule ip nslab block meta l4proto udp drop\n"
	}
	if r.lan6.IsValid() {
		rules += "flush chain ip6 nslab6 block\n"
		if block {
			rules += "add rule ip6 nslab6 block meta l4proto udp drop\n"
		}
	}
	r.lab.mustNFT(r.ns, rules)
}

// Counters are packet counts of a router's forward and input chains since
// it was created. The plain fields count IPv4; those ending in 6 count IPv6
// and stay zero without [Lab.EnableIPv6].
type Counters struct {
	UDPOut, TCPOut uint64 // forwarded from the LAN to the internet
	UDPIn, TCPIn   uint64 // forwarded from the internet to the LAN (replies)
	// DroppedIn counts unsolicited packets from the internet that the
	// router dropped, addressed to itself or to be forwarded.
	DroppedIn uint64

	UDPOut6, UDPIn6, DroppedIn6 uint64
}

// Counters returns the router's packet counters. A test can tell whether
// traffic took a direct UDP path (UDPOut grows) or a relay over TCP.
func (r *Router) Counters() Counters {
	r.lab.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := r.Run(ctx, "nft", "-j", "list", "counters", "table", "ip", "nslab")
	if err != nil {
		r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
	}
	c, err := parseCounters(out)
	if err != nil {
		r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
	}
	if r.lan6.IsValid() {
		out, err := r.Run(ctx, "nft", "-j", "list", "counters", "table", "ip6", "nslab6")
		if err != nil {
			r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
		}
		m, err := counterMap(out)
		if err != nil || len(m) != 3 {
			r.lab.t.Fatalf("nslab: router %s: IPv6 counters %v (%v), want 3", r.name, m, err)
		}
		c.UDPOut6, c.UDPIn6, c.DroppedIn6 = m["udp6_out"], m["udp6_in"], m["dropped6_in"]
	}
	return c
}

// counterMap reads the named counters in the output of "nft -j list
// counters".
func counterMap(out []byte) (map[string]uint64, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("decode nft counters: %w", err)
	}
	m := make(map[string]uint64)
	for _, o := range doc.Nftables {
		if o.Counter != nil {
			m[o.Counter.Name] = o.Counter.Packets
		}
	}
	return m, nil
}

// parseCounters reads the output of "nft -j list counters" for the
// table "ip nslab".
func parseCounters(out []byte) (Counters, error) {
	m, err := counterMap(out)
	if err != nil {
		return Counters{}, err
	}
	var c Counters
	for name, v := range map[string]*uint64{"udp_out": &c.UDPOut, "udp_in": &c.UDPIn,
		"tcp_out": &c.TCPOut, "tcp_in": &c.TCPIn, "dropped_in": &c.DroppedIn} {
		n, ok := m[name]
		if !ok {
			return Counters{}, fmt.Errorf("nft counters: no %q in %s", name, bytes.TrimSpace(out))
		}
		*v = n
	}
	return c, nil
}

// SetNetem impairs the router's WAN link in both directions, replacing any
// earlier impairment. spec uses tc-netem words: "delay TIME [JITTER]" and
// "loss PERCENT%", for example "loss 5% delay 50ms" (a round trip through
// the link then takes 100 ms more). Packets keep their order. See the
// package documentation for how it works without the kernel's netem.
func (r *Router) SetNetem(spec string) {
	r.lab.t.Helper()
	if _, err := parseNetem(spec); err != nil {
		r.lab.t.Fatalf("nslab: router %s: SetNetem: %v", r.name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.link == nil {
		r.startLinkLocked()
	}
	if !r.impaired {
		r.lab.mustIP(r.lab.inet.ns, "link set "+r.port+" nomaster")
		r.impaired = true
	}
	r.linkCommandLocked("spec " + spec)
}

// ClearNetem removes the impairment of [Router.SetNetem] and puts the WAN
// link straight on the bridge again.
func (r *Router) ClearNetem() {
	r.lab.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.impaired {
		return
	}
	r.linkCommandLocked("off")
	r.lab.mustIP(r.lab.inet.ns, "link set "+r.port+" master br0")
	r.impaired = false
}

// startLinkLocked creates the spare bridge port (port+"x" on the emulator's
// side, port+"y" on br0) and starts the link emulator between port and it.
func (r *Router) startLinkLocked() {
	r.lab.t.Helper()
	x, y := r.port+"x", r.port+"y"
	r.lab.mustIP(r.lab.inet.ns,
		"link add name "+x+" type veth peer name "+y,
		"link set "+y+" master br0",
		"link set "+y+" up",
		"link set "+x+" up",
	)
	cmd := r.lab.inet.HelperCommand(context.Background(), helperLink, r.port, x)
	w, err := cmd.StdinPipe()
	if err != nil {
		r.lab.t.Fatalf("nslab: router %s: link emulator stdin: %v", r.name, err)
	}
	p := r.lab.inet.StartCmd(cmd)
	p.stdin = w
	r.link = p
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := p.WaitOutput(ctx, "ready"); err != nil {
		r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
	}
}

// linkCommandLocked sends one command line to the link emulator and waits
// for its acknowledgement.
func (r *Router) linkCommandLocked(line string) {
	r.lab.t.Helper()
	r.linkSeq++
	if _, err := fmt.Fprintf(r.link.stdin, "%s\n", line); err != nil {
		r.lab.t.Fatalf("nslab: router %s: link emulator: %v", r.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	ack := fmt.Sprintf("ack %d ", r.linkSeq)
	got, err := r.link.WaitOutput(ctx, ack)
	if err != nil {
		r.lab.t.Fatalf("nslab: router %s: %v", r.name, err)
	}
	if got != ack+"ok" {
		r.lab.t.Fatalf("nslab: router %s: link emulator answered %q to %q", r.name, got, line)
	}
}
