package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"beam.dev/beam/wire"
)

// benchNetwork returns a policy with rules acls rules over 50 users in 10
// groups and 20 tags, and n nodes: 70% user devices, 30% tagged servers.
func benchNetwork(tb testing.TB, n, rules int) (*Policy, []*wire.Node) {
	tb.Helper()
	const users, groups, tags = 50, 10, 20
	var b strings.Builder
	b.WriteString("{\n\"groups\": {\n")
	for g := range groups {
		fmt.Fprintf(&b, "  \"group:g%d\": [", g)
		for u := g; u < users; u += groups {
			fmt.Fprintf(&b, "\"user%d\", ", u)
		}
		b.WriteString("],\n")
	}
	b.WriteString("},\n\"tagOwners\": {")
	for tg := range tags {
		fmt.Fprintf(&b, "\"tag:t%d\": [\"group:g%d\"], ", tg, tg%groups)
	}
	b.WriteString("},\n\"hosts\": {\"lab\": \"100.64.2.0/24\"},\n\"acls\": [\n")
	for r := range rules {
		var src, dst string
		switch r % 5 {
		case 0:
			src, dst = fmt.Sprintf("group:g%d", r%groups), fmt.Sprintf("tag:t%d:%d", r%tags, 1000+r)
		case 1:
			src, dst = fmt.Sprintf("user%d", r%users), fmt.Sprintf("tag:t%d:80,443,8000-8999", (r+3)%tags)
		case 2:
			src, dst = fmt.Sprintf("tag:t%d", r%tags), fmt.Sprintf("tag:t%d:%d", (r+1)%tags, 5000+r)
		case 3:
			src, dst = fmt.Sprintf("group:g%d", r%groups), "autogroup:self:*"
		case 4:
			src, dst = fmt.Sprintf("user%d", r%users), fmt.Sprintf("lab:%d", r)
		}
		fmt.Fprintf(&b, "  {\"action\": \"accept\", \"src\": [%q], \"dst\": [%q]},\n", src, dst)
	}
	b.WriteString("]}\n")
	p, err := Parse([]byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	nodes := make([]*wire.Node, n)
	for i := range nodes {
		a4 := netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		a6 := netip.AddrFrom16([16]byte{0xfd, 0x7a, 0xbe, 0xa0, 0xb0, 0xde, 14: byte(i >> 8), 15: byte(i)})
		node := &wire.Node{ID: wire.NodeID(i + 1), Key: testKey(i + 1), Addresses: []netip.Prefix{
			netip.PrefixFrom(a4, 32), netip.PrefixFrom(a6, 128),
		}}
		if i%10 < 7 {
			node.User = fmt.Sprintf("user%d", i%users)
		} else {
			node.Tags = []string{fmt.Sprintf("tag:t%d", i%tags)}
		}
		nodes[i] = node
	}
	return p, nodes
}

// BenchmarkCompile compiles a 200-rule policy for 1,000 nodes and then
// builds every node's filter and visibility, as a full netmap rebuild does.
// ns/node is the cost per node.
func BenchmarkCompile(b *testing.B) {
	const nodes = 1000
	p, ns := benchNetwork(b, nodes, 200)
	b.Run("compile", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p.Compile(ns)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/nodes, "ns/node")
	})
	b.Run("compile+for-all", func(b *testing.B) {
		b.ReportAllocs()
		var rules int
		for b.Loop() {
			c := p.Compile(ns)
			rules = 0
			for _, n := range ns {
				f, _ := c.For(n.Key)
				rules += len(f)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/nodes, "ns/node")
		b.ReportMetric(float64(rules)/nodes, "rules/node")
	})
}

// TestBenchNetworkConsistent checks that the benchmark's network is one
// where filters and Allows agree, so the benchmark measures real work.
func TestBenchNetworkConsistent(t *testing.T) {
	p, nodes := benchNetwork(t, 60, 40)
	c := p.Compile(nodes)
	total := 0
	for _, n := range nodes {
		f, _ := c.For(n.Key)
		total += len(f)
	}
	if total == 0 {
		t.Fatal("the benchmark network compiles to no rules")
	}
	checkConsistent(t, p, c, nodes, []uint16{22, 80, 1000, 1005, 5002, 8500}, []uint8{protoTCP, protoUDP})
}
