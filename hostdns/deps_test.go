package hostdns

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDeps enforces the package's place in the tree: the standard library
// only (it is host plumbing, below every Beam package that uses it), and
// no testing code in production.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "beam.dev/beam/hostdns").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		if dep != "beam.dev/beam/hostdns" {
			t.Errorf("hostdns depends on %s", dep)
		}
	}
	std, err := exec.CommandContext(ctx, goBin, "list", "-deps", "beam.dev/beam/hostdns").Output()
	if err != nil {
		t.Fatal(err)
	}
	for dep := range strings.FieldsSeq(string(std)) {
		if dep == "testing" || strings.HasPrefix(dep, "testing/") {
			t.Errorf("production code imports %s", dep)
		}
	}
}
