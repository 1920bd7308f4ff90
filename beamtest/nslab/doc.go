// Package nslab builds a small internet of Linux network namespaces, with
// real nftables NAT routers, for integration tests that run real processes
// (the beam binary, or helper processes re-executed from the test binary).
//
// It needs root, a Linux kernel with veth, bridge, nf_tables NAT and packet
// sockets (4.20 or later; sch_netem is not needed), and the iproute2 (ip),
// nftables (nft) and conntrack-tools (conntrack) programs; on Debian the
// packages are iproute2, nftables and conntrack. When they are missing,
// [New] fails the test with a message saying what to install: these tests
// never skip.
//
// # Topology
//
// Each [Lab] belongs to one test. Every namespace it creates is named
// "nsl-<random>-<pid>-..." ([Lab.Prefix]), so parallel labs never collide and
// leftovers of a killed test binary are recognized (their pid is gone) and
// removed by the next [New]. Everything is torn down by t.Cleanup, also when
// the test fails: processes the lab started are stopped by PID, then the
// namespaces are deleted.
//
//	                     "internet" namespace (inet)
//	+-------------------------------------------------------------------+
//	|  br0 203.0.113.1/24: the ISP gateway, which forwards nothing      |
//	+---+------------+-------------+-----------------------+------------+
//	    |p1          |p2           |p3                     |p4
//	+---+-----+ +----+-----+ +-----+--------------+ +------+------------+
//	| server  | | client   | | r-alice (easy)     | | r-bob (hard)      |
//	| eth0    | | eth0     | | wan0 203.0.113.12  | | wan0 203.0.113.13 |
//	| .10     | | .11      | | nft NAT + filter   | | nft NAT + filter  |
//	+---------+ +----------+ | lan0 198.51.100.1  | | lan0 198.51.100.9 |
//	 AddServer  AddPublic-   +--+--------------+--+ +------+------------+
//	            Client          |l1            |l2         |l1
//	                   +--------+-----+ +------+-------+ +-+------------+
//	                   | h-alice      | | h-carol      | | h-bob        |
//	                   | eth0 .2      | | eth0 .3      | | eth0 .10     |
//	                   +--------------+ +--------------+ +--------------+
//	                    AddNATHost       Router.AddHost   AddNATHost
//
// Host and router namespaces are "h-NAME" and "r-NAME" after the prefix;
// lan0 is a bridge, so hosts added with [Router.AddHost] share the LAN.
//
// # Address plan
//
// Only documentation ranges are used:
//
//   - 203.0.113.0/24 is the internet: .1 is br0 in the inet namespace (every
//     public host and router has its default route there), .10 to .254 go in
//     order to servers, public clients, [NATNone] hosts and routers' WAN sides.
//   - Each router's LAN is a /29: first 198.51.100.0/24 (LANs 0-31), then
//     192.0.2.0/24 (LANs 32-63). The router is .1 of its /29, its hosts
//     .2 to .6.
//   - By default no IPv6 addresses are assigned; hosts have IPv6 link-local
//     addresses only, and IPv6 is disabled inside the inet namespace.
//     [Lab.EnableIPv6] adds 2001:db8::/64 to the internet (br0 is
//     2001:db8::1 and routes) and a routed /64 to every LAN,
//     2001:db8:N::/64, with no NAT66 but a stateful filter on each router:
//     hosts behind IPv4 NATs then have global IPv6, as many homes and
//     phones do.
//
// # NAT kinds
//
// Every router forwards LAN to WAN, masquerades out of wan0 and drops
// unsolicited inbound packets before conntrack confirms them (the home-router
// filter; without it simultaneous open breaks). [NATEasy] keeps the source
// port (endpoint-independent mapping); [NATHard] uses "masquerade
// random,fully-random" (a new public port per destination); [NATUDPBlocked]
// is an easy NAT that drops all UDP forwarded out. [NATNone] puts the host on
// the internet with no router at all. Routers do not hairpin (a host cannot
// reach a LAN neighbour through the router's WAN address).
//
// # Running code in a namespace
//
// Go cannot move a goroutine tree into another network namespace safely, so
// everything inside the lab is a real process: [Host.Command], [Host.Start]
// and [Host.Run] run programs through "ip netns exec". [BuildBinary] builds a
// main package once per test process (for example beam.dev/beam/cmd/beam).
//
// To run Go code of the test itself in a namespace, register a helper and
// start it with [Host.StartHelper], which re-executes the test binary with
// -test.run=^TestNSLabHelperProcess$ and the helper's name in the
// environment. A test package using its own helpers declares:
//
//	func init() {
//		nslab.RegisterHelper("myserver", func(ctx context.Context, args []string) error {
//			// Runs inside the namespace; ctx ends on SIGTERM.
//			return nil
//		})
//	}
//
//	func TestNSLabHelperProcess(t *testing.T) { nslab.RunHelperProcess(t) }
//
// In the normal test run TestNSLabHelperProcess does nothing. The built-in
// helpers ([HelperUDPEcho], [HelperTCPEcho], [HelperUDPProbe],
// [HelperTCPProbe], [HelperPunch]) are dispatched before any test code runs,
// so they work in any test binary that imports nslab, with or without
// TestNSLabHelperProcess.
//
// # Link impairment
//
// The kernel of some CI and development machines lacks sch_netem, so
// [Router.SetNetem] emulates delay, jitter and loss in user space: it takes
// the router's bridge port off br0 and a forwarder process in the inet
// namespace copies frames between that port and a spare port on br0, applying
// the impairment in both directions. [Router.ClearNetem] puts the port back
// on the bridge, so unimpaired links cost nothing.
package nslab
