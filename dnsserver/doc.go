// Package dnsserver implements Beam's two DNS servers:
//
//   - Resolver, MagicDNS: the resolver every node runs at 100.100.100.100:53 inside
//     the overlay (and on a host loopback listener). It answers the network's names
//     from an immutable Records snapshot (A, AAAA, PTR, TXT, short names through the
//     search domains), and forwards everything else to upstream resolvers, with split
//     DNS by longest suffix, a small TTL-honouring cache, EDNS0 clamping and TCP retry.
//   - Zone, the authoritative public zone of the edge domain: SOA and NS at the apex,
//     A/AAAA of the apex and of every one-label name under it pointing at the edge,
//     and TXT records set at run time (ACME DNS-01, custom-domain ownership checks).
//
// Both serve on whatever net.PacketConn or net.Listener they are given (a host socket,
// or a gVisor-backed conn inside the overlay); neither opens sockets of its own except
// the Resolver's outbound queries, which go through an injected dial function.
//
// Both apply the same abuse rules: an optional per-source allow function, a per-source
// rate limit, UDP replies never larger than the client's advertised EDNS0 size (512
// bytes without EDNS0; the TC bit is set instead), minimal RFC 8482 answers to ANY, and
// FORMERR or silence for malformed queries.
//
// The package keeps github.com/miekg/dns behind its API: the only miekg type in an
// exported identifier is the dns.Handler method ServeDNS.
package dnsserver
