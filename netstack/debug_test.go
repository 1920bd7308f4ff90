package netstack

import "testing"

func logStats(t testing.TB, nodes []*node) {
	for i, n := range nodes {
		t.Logf("node %d: %s", i, n.e.stack.DebugStats())
	}
}
