package beamnet

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDeps enforces the package's place in the tree: beamnet embeds a
// node (package node and what it needs), never the CLI, the servers'
// roles or a test harness, and no testing code in production.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "list", "-deps", "beam.dev/beam/beamnet").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "beam.dev/beam/node") {
		t.Error("beamnet does not import beam.dev/beam/node; it must embed the daemon's state machine, not re-implement it")
	}
	// A dependency is refused if it is one of these or under one of them,
	// unless it is allowed.
	forbidden := []string{
		"beam.dev/beam/cmd",
		"beam.dev/beam/configs",
		"beam.dev/beam/coordinator",
		"beam.dev/beam/derp/derpserver",
		"beam.dev/beam/edge",
		"beam.dev/beam/edgenode",
		"beam.dev/beam/localapi",
		"beam.dev/beam/localclient",
		"beam.dev/beam/beamtest",
		"testing",
	}
	allowed := []string{"beam.dev/beam/localapi/apitype"} // node's status and request types
	for _, d := range deps {
		if slices.Contains(allowed, d) {
			continue
		}
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("beamnet depends on %s", d)
			}
		}
	}
}
