package derpserver

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDeps enforces derpserver's place in the tree: of Beam it imports
// only derp, types/key and internal/tcpcc (never netstack, coordinator or node), and no
// testing code.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "list", "-deps", "beam.dev/beam/derp/derpserver").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowedBeam := map[string]bool{
		"beam.dev/beam/derp/derpserver": true,
		"beam.dev/beam/derp":            true,
		"beam.dev/beam/types/key":       true,
		"beam.dev/beam/internal/tcpcc":  true,
	}
	for dep := range strings.FieldsSeq(string(out)) {
		if strings.HasPrefix(dep, "beam.dev/") && !allowedBeam[dep] {
			t.Errorf("derpserver depends on %s", dep)
		}
		if dep == "testing" || strings.HasPrefix(dep, "testing/") {
			t.Errorf("production code imports %s", dep)
		}
	}
}
