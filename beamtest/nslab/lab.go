package nslab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// NATKind says what sits between a host and the internet.
type NATKind int

const (
	// NATNone puts the host directly on the internet with a public address.
	NATNone NATKind = iota
	// NATEasy is an endpoint-independent mapping NAT: nftables masquerade,
	// which keeps the source port when it is free.
	NATEasy
	// NATHard is an address-and-port-dependent mapping NAT: masquerade
	// random,fully-random picks a new public port for every destination.
	NATHard
	// NATUDPBlocked is NATEasy plus a router that drops all UDP forwarded
	// out to the internet, so only TCP (and ICMP) passes.
	NATUDPBlocked
)

// String returns the kind's name, such as "easy".
func (k NATKind) String() string {
	switch k {
	case NATNone:
		return "none"
	case NATEasy:
		return "easy"
	case NATHard:
		return "hard"
	case NATUDPBlocked:
		return "udp-blocked"
	}
	return "NATKind(" + strconv.Itoa(int(k)) + ")"
}

const (
	nsPrefix   = "nsl-"
	maxLANs    = 64
	firstPub   = 10
	lastPub    = 254
	cmdTimeout = 20 * time.Second
)

var (
	gatewayAddr = netip.MustParseAddr("203.0.113.1")
	// gateway6 is br0's IPv6 address in a lab with IPv6: the router of
	// the internet's 2001:db8::/64 to every LAN's /64.
	gateway6 = netip.MustParseAddr("2001:db8::1")
	// bridgeMAC is the address of br0 and of every router's lan0, which
	// are on different links.
	bridgeMAC = "02:00:00:00:00:01"
	nameRE    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)
)

// Lab is one test's namespace internet. It is created by [New] and torn down
// by t.Cleanup (or earlier by [Lab.Close]). Its methods, and those of its
// hosts and routers, fail the test given to New on error (with t.Fatal), so
// call them from that test's goroutine: not from other goroutines and not
// from its subtests (the testing package crashes the binary when a subtest
// calls FailNow of its parent). Give each test or parallel subtest its own
// Lab; a Lab takes a few tens of milliseconds to build.
type Lab struct {
	t      testing.TB
	prefix string
	inet   *Host // the internet namespace; no address of its own but br0's

	mu       sync.Mutex // guards the following fields
	closed   bool
	names    map[string]bool
	nsList   []string // namespaces created, in order
	procs    []*Proc  // processes started, in order
	nextPub  int      // next host number in 203.0.113.0/24
	nextLAN  int      // next LAN /29 index
	nextPort int      // next bridge port number in the inet namespace
	tcpCC    string   // default TCP congestion control of new namespaces; "" keeps the host's
	runDir   string   // XDG_RUNTIME_DIR of the lab's programs
	v6       bool     // EnableIPv6 was called
}

// New builds an empty internet namespace with its bridge and registers the
// lab's teardown with t.Cleanup. It fails the test if it is not run as root
// or if ip, nft or conntrack are missing.
func New(t testing.TB) *Lab {
	t.Helper()
	for _, tool := range []string{"ip", "nft", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("nslab: %q not found in PATH (%v); install the Debian packages iproute2, nftables and conntrack", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatalf("nslab: network namespace tests need root (euid is %d)", os.Geteuid())
	}
	reapStale(t)

	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatalf("nslab: random prefix: %v", err)
	}
	l := &Lab{
		t:        t,
		prefix:   fmt.Sprintf("%s%s-%d-", nsPrefix, hex.EncodeToString(rnd[:]), os.Getpid()),
		names:    map[string]bool{},
		nextPub:  firstPub,
		nextPort: 1,
		runDir:   t.TempDir(),
	}
	t.Cleanup(l.Close)

	l.inet = l.newNamespace("inet", "inet")
	ns := l.inet.ns
	l.mustSysctl(ns,
		"net.ipv4.ip_forward=0", // the internet ends at br0
		"net.ipv6.conf.all.disable_ipv6=1",
		"net.ipv6.conf.default.disable_ipv6=1",
		// Ports taken off the bridge for link impairment must not answer
		// ARP for br0's address.
		"net.ipv4.conf.all.arp_ignore=1",
		// The bridge only switches; keep netfilter out of it.
		"net.bridge.bridge-nf-call-iptables=0",
	)
	l.mustIP(ns,
		// A bridge without an address of its own takes its ports'
		// lowest, which changes as ports are added: neighbours would
		// keep sending to the old one, which the bridge takes in and its
		// IP stack drops.
		"link add name br0 address "+bridgeMAC+" type bridge",
		"addr add "+gatewayAddr.String()+"/24 dev br0",
		"link set br0 up",
	)
	l.inet.addr = gatewayAddr
	return l
}

// Prefix returns the prefix of every namespace name of this lab.
func (l *Lab) Prefix() string { return l.prefix }

// Close stops every process the lab started and deletes its namespaces. It
// is registered with t.Cleanup by [New]; calling it earlier is allowed, and
// calling it again does nothing.
func (l *Lab) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	procs := l.procs
	nss := l.nsList
	l.mu.Unlock()

	// Stop all at once, so that processes ignoring SIGTERM cost 5 s in
	// total, not each.
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.Stop() })
	}
	wg.Wait()
	if l.t.Failed() {
		for _, p := range procs {
			p.logTail(l.t)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	for i := len(nss) - 1; i >= 0; i-- {
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", nss[i]).CombinedOutput(); err != nil {
			l.t.Errorf("nslab: delete namespace %s: %v: %s", nss[i], err, bytes.TrimSpace(out))
		}
		if err := os.RemoveAll(filepath.Join("/etc/netns", nss[i])); err != nil {
			l.t.Errorf("nslab: remove the resolver of %s: %v", nss[i], err)
		}
	}
}

// AddServer adds a host with a public address directly on the internet, for
// coordinators, relays and STUN servers.
func (l *Lab) AddServer(name string) *Host {
	l.t.Helper()
	return l.addPublic(name)
}

// AddPublicClient adds a host with a public address directly on the
// internet, for clients of public services (such as the edge).
func (l *Lab) AddPublicClient(name string) *Host {
	l.t.Helper()
	return l.addPublic(name)
}

// AddNATHost adds a host of the given kind. For NATNone it is a public host
// like [Lab.AddServer]; otherwise it is a router namespace (WAN on the
// internet, LAN on its own /29) with a host namespace behind it.
func (l *Lab) AddNATHost(name string, kind NATKind) *Host {
	l.t.Helper()
	switch kind {
	case NATNone:
		return l.addPublic(name)
	case NATEasy, NATHard, NATUDPBlocked:
	default:
		l.t.Fatalf("nslab: AddNATHost(%q): unknown NAT kind %v", name, kind)
	}
	l.claimName(name)
	wan := l.allocPublic()
	lan := l.allocLAN()
	gw := lan.Addr().Next()

	r := l.newNamespace(name, "r-"+name)
	r.addr = wan
	v6 := l.ipv6()
	if v6 {
		r.addr6 = publicAddr6(wan)
	}
	port := l.plugIntoBridge(r, "wan0", wan, r.addr6)
	rt := &Router{Host: r, lab: l, kind: kind, lan: lan, lanAddr: gw, port: port, nextHost: gw.Next()}
	sysctls := []string{
		"net.ipv4.ip_forward=1",
		// Hosts on the LAN bridge talk to each other without the router's
		// firewall, as on a home LAN switch.
		"net.bridge.bridge-nf-call-iptables=0",
	}
	if v6 {
		sysctls = append(sysctls, "net.ipv6.conf.all.forwarding=1", "net.bridge.bridge-nf-call-ip6tables=0")
	}
	l.mustSysctl(r.ns, sysctls...)
	l.mustIP(r.ns,
		"link add name lan0 address "+bridgeMAC+" type bridge", // see New
		fmt.Sprintf("addr add %s/%d dev lan0", gw, lan.Bits()),
		"link set lan0 up",
	)
	l.mustNFT(r.ns, routerRuleset(kind))
	if v6 {
		rt.lan6 = lanPrefix6(lan)
		rt.lanAddr6 = lanAddr6(rt.lan6, lan, gw)
		l.mustIP(r.ns, fmt.Sprintf("addr add %s/64 dev lan0 nodad", rt.lanAddr6))
		l.mustNFT(r.ns, routerRuleset6())
		// The internet routes the LAN's /64 to the router: no NAT66.
		l.mustIP(l.inet.ns, fmt.Sprintf("route add %s via %s", rt.lan6, r.addr6))
	}
	return rt.addHost(name)
}

func (l *Lab) addPublic(name string) *Host {
	l.t.Helper()
	l.claimName(name)
	addr := l.allocPublic()
	h := l.newNamespace(name, "h-"+name)
	h.addr = addr
	if l.ipv6() {
		h.addr6 = publicAddr6(addr)
	}
	l.plugIntoBridge(h, "eth0", addr, h.addr6)
	return h
}

// plugIntoBridge connects h to br0 with a veth whose end in h is named
// ifname and has addr/24 (and addr6/64 if valid), and gives h its default
// routes. It returns the name of the bridge port in the inet namespace.
func (l *Lab) plugIntoBridge(h *Host, ifname string, addr, addr6 netip.Addr) string {
	l.t.Helper()
	l.mu.Lock()
	port := "p" + strconv.Itoa(l.nextPort)
	l.nextPort++
	l.mu.Unlock()
	l.mustIP(l.inet.ns,
		"link add name "+port+" type veth peer name "+ifname+" netns "+h.ns,
		"link set "+port+" master br0",
		"link set "+port+" up",
	)
	l.mustIP(h.ns,
		"addr add "+addr.String()+"/24 dev "+ifname,
		"link set "+ifname+" up",
		"route add default via "+gatewayAddr.String(),
	)
	if addr6.IsValid() {
		l.mustIP(h.ns,
			"addr add "+addr6.String()+"/64 dev "+ifname+" nodad",
			"route add ::/0 via "+gateway6.String(),
		)
	}
	return port
}

// EnableIPv6 gives the lab IPv6, which it has none of otherwise; call it
// right after [New], before adding any host. The internet is then also
// 2001:db8::/64: br0 is 2001:db8::1, the router of the internet, and every
// public host and router WAN side gets the address whose last group reads
// as the last byte of its IPv4 address (203.0.113.12 is 2001:db8::12).
// Each router's LAN gets a /64 of its own, 2001:db8:N::/64 with N the LAN
// number plus one, routed to the router's WAN address (no NAT66): the
// router is ::1 of it and its hosts ::2 to ::6, as in their IPv4 /29. So a
// host behind an IPv4 NAT of any kind has a global IPv6 address, behind a
// stateful filter like a home router's: outbound and its replies pass,
// unsolicited inbound packets are dropped (hole punching works, as on an
// easy NAT). [NATUDPBlocked] blocks IPv4 UDP only: IPv6 UDP passes.
// Addresses skip duplicate address detection, so they are usable at once.
func (l *Lab) EnableIPv6() {
	l.t.Helper()
	l.mu.Lock()
	if len(l.names) > 0 {
		l.mu.Unlock()
		l.t.Fatalf("nslab: EnableIPv6 must come before the first host is added")
	}
	already := l.v6
	l.v6 = true
	l.mu.Unlock()
	if already {
		return
	}
	// Only br0 gets IPv6: new bridge ports keep the namespace default
	// (disabled), so a port taken off the bridge by SetNetem answers
	// nothing for br0.
	l.mustSysctl(l.inet.ns,
		"net.ipv6.conf.br0.accept_dad=0",
		"net.ipv6.conf.br0.disable_ipv6=0",
		"net.ipv6.conf.all.forwarding=1",
		"net.bridge.bridge-nf-call-ip6tables=0",
	)
	l.mustIP(l.inet.ns, "addr add "+gateway6.String()+"/64 dev br0 nodad")
	l.inet.addr6 = gateway6
}

// ipv6 reports whether EnableIPv6 was called.
func (l *Lab) ipv6() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v6
}

// publicAddr6 is the IPv6 address of the public host or router WAN side
// with IPv4 address a: 2001:db8:: and a's last byte, in decimal digits.
func publicAddr6(a netip.Addr) netip.Addr {
	return netip.MustParseAddr("2001:db8::" + strconv.Itoa(int(a.As4()[3])))
}

// lanPrefix6 is the IPv6 /64 of the LAN whose IPv4 /29 is lan:
// 2001:db8:N::/64, N being one more than the LAN's number.
func lanPrefix6(lan netip.Prefix) netip.Prefix {
	b := lan.Addr().As4()
	n := int(b[3]) / 8
	if b[0] == 192 { // 192.0.2.0/24 holds LANs 32-63
		n += 32
	}
	return netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/64", n+1))
}

// lanAddr6 is the IPv6 address in lan6 of the LAN address a of the IPv4
// /29 lan: the same offset in the subnet.
func lanAddr6(lan6, lan netip.Prefix, a netip.Addr) netip.Addr {
	off := a.As4()[3] - lan.Addr().As4()[3]
	b := lan6.Addr().As16()
	b[15] = off
	return netip.AddrFrom16(b)
}

// newNamespace creates the namespace prefix+suffix with lo up and returns a
// Host for it with the given display name.
func (l *Lab) newNamespace(name, suffix string) *Host {
	l.t.Helper()
	ns := l.prefix + suffix
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		l.t.Fatalf("nslab: add namespace %s: %v: %s", ns, err, bytes.TrimSpace(out))
	}
	l.mu.Lock()
	l.nsList = append(l.nsList, ns)
	cc, v6 := l.tcpCC, l.v6
	l.mu.Unlock()
	l.isolateResolver(ns)
	l.mustIP(ns, "link set lo up")
	var sysctls []string
	if cc != "" {
		sysctls = append(sysctls, "net.ipv4.tcp_congestion_control="+cc)
	}
	if v6 {
		// No duplicate address detection, for link-local addresses
		// too: without it a new interface's IPv6 is usable at once.
		sysctls = append(sysctls, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	if len(sysctls) > 0 {
		l.mustSysctl(ns, sysctls...)
	}
	return &Host{lab: l, name: name, ns: ns}
}

// labResolvConf is every lab namespace's /etc/resolv.conf until a test
// gives it another: the machine's own resolver is outside the lab, and a
// program in the lab that looks a name up through the system resolver
// (the setup check of beam server, a daemon's upstreams) must neither send
// to it nor wait for it. Nothing answers on the namespace's loopback, so a
// lookup fails at once.
const labResolvConf = "# nslab: the machine's resolver is outside the lab\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"

// isolateResolver writes ns's resolver file, which "ip netns exec" mounts
// over /etc/resolv.conf for the programs it runs.
func (l *Lab) isolateResolver(ns string) {
	l.t.Helper()
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		l.t.Fatalf("nslab: resolver of %s: %v", ns, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(labResolvConf), 0o644); err != nil {
		l.t.Fatalf("nslab: resolver of %s: %v", ns, err)
	}
}

// SetTCPCongestionControl makes the first of names that this host lets a
// network namespace choose the default TCP congestion control of every
// namespace of the lab, those made so far and those to come, in place of
// the one they inherit from the host, and returns it: a test can then run
// on, say, Cubic whatever this machine's default is. A namespace may only
// choose among the host's net.ipv4.tcp_allowed_congestion_control (on some
// machines just "reno bbr"), so a test lists what it can live with, most
// wanted first; Reno is always allowed. It fails the test if none is.
// Sockets opened before keep theirs.
func (l *Lab) SetTCPCongestionControl(names ...string) string {
	l.t.Helper()
	allowed, err := AllowedTCPCongestionControls()
	if err != nil {
		l.t.Fatalf("nslab: %v", err)
	}
	name := ""
	for _, n := range names {
		if slices.Contains(allowed, n) {
			name = n
			break
		}
	}
	if name == "" {
		l.t.Fatalf("nslab: none of the congestion controls %q is allowed in namespaces on this host (allowed: %q)", names, allowed)
	}
	if name != names[0] {
		l.t.Logf("nslab: congestion control %q is not allowed in namespaces on this host (allowed: %q); the lab uses %q", names[0], allowed, name)
	}
	l.mu.Lock()
	l.tcpCC = name
	nss := slices.Clone(l.nsList)
	l.mu.Unlock()
	for _, ns := range nss {
		l.mustSysctl(ns, "net.ipv4.tcp_congestion_control="+name)
	}
	return name
}

// AllowedTCPCongestionControls returns the congestion controls that a
// network namespace may choose on this host, read from the initial
// namespace's net.ipv4.tcp_allowed_congestion_control.
func AllowedTCPCongestionControls() ([]string, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
	if err != nil {
		return nil, fmt.Errorf("read allowed congestion controls: %w", err)
	}
	return strings.Fields(string(b)), nil
}

func (l *Lab) claimName(name string) {
	l.t.Helper()
	if !nameRE.MatchString(name) {
		l.t.Fatalf("nslab: bad host name %q: want 1-16 characters of a-z, 0-9 and '-', starting with a letter", name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.names[name] {
		l.t.Fatalf("nslab: host name %q already used in this lab", name)
	}
	l.names[name] = true
}

func (l *Lab) allocPublic() netip.Addr {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nextPub > lastPub {
		l.t.Fatalf("nslab: out of public addresses in 203.0.113.0/24")
	}
	a := netip.AddrFrom4([4]byte{203, 0, 113, byte(l.nextPub)})
	l.nextPub++
	return a
}

// allocLAN returns the next /29 for a router's LAN.
func (l *Lab) allocLAN() netip.Prefix {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	i := l.nextLAN
	if i >= maxLANs {
		l.t.Fatalf("nslab: out of LAN subnets (%d routers per lab)", maxLANs)
	}
	l.nextLAN++
	base := [4]byte{198, 51, 100, 0}
	if i >= 32 {
		base = [4]byte{192, 0, 2, 0}
		i -= 32
	}
	base[3] = byte(i * 8)
	return netip.PrefixFrom(netip.AddrFrom4(base), 29)
}

// mustIP runs "ip -n ns -batch -" with the given commands.
func (l *Lab) mustIP(ns string, cmds ...string) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("nslab: ip -n %s: %q: %v: %s", ns, cmds, err, bytes.TrimSpace(out))
	}
}

// mustNFT loads an nftables ruleset into namespace ns.
func (l *Lab) mustNFT(ns, ruleset string) {
	l.t.Helper()
	if err := runNFT(ns, ruleset); err != nil {
		l.t.Fatal(err)
	}
}

func runNFT(ns, ruleset string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nslab: nft in %s: %w: %s\nruleset:\n%s", ns, err, bytes.TrimSpace(out), ruleset)
	}
	return nil
}

// mustSysctl sets "key=value" sysctls in namespace ns, through a helper
// process because /proc/sys/net shows the namespace of the process opening
// it (this saves a dependency on the sysctl program).
func (l *Lab) mustSysctl(ns string, settings ...string) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	h := &Host{lab: l, name: ns, ns: ns}
	if _, err := runCmd(h.HelperCommand(ctx, helperSysctl, settings...)); err != nil {
		l.t.Fatalf("nslab: sysctl in %s: %v", ns, err)
	}
}

func (l *Lab) track(p *Proc) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("nslab: lab is closed")
	}
	l.procs = append(l.procs, p)
	return nil
}

// reapStale deletes namespaces left behind by test processes that no longer
// exist (a test binary killed by a timeout never runs its cleanups), after
// killing the processes still running inside them.
func reapStale(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("nslab: ip netns list: %v", err)
	}
	for _, ns := range parseNetnsList(out) {
		pid, ok := ownerPID(ns)
		if !ok {
			continue
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			continue // its lab is still running
		}
		pids, _ := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
		for _, f := range strings.Fields(string(pids)) {
			if p, err := strconv.Atoi(f); err == nil {
				if proc, err := os.FindProcess(p); err == nil {
					proc.Kill()
				}
			}
		}
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Logf("nslab: remove stale namespace %s: %v: %s", ns, err, bytes.TrimSpace(out))
		}
		os.RemoveAll(filepath.Join("/etc/netns", ns))
	}
}

// parseNetnsList returns the names in the output of "ip netns list", whose
// lines look like "name" or "name (id: 3)".
func parseNetnsList(out []byte) []string {
	var names []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// ownerPID returns the test process id recorded in a lab namespace name
// ("nsl-<hex>-<pid>-...").
func ownerPID(ns string) (int, bool) {
	rest, ok := strings.CutPrefix(ns, nsPrefix)
	if !ok {
		return 0, false
	}
	f := strings.SplitN(rest, "-", 3)
	if len(f) < 3 || len(f[0]) != 6 {
		return 0, false
	}
	if _, err := hex.DecodeString(f[0]); err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(f[1])
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}
