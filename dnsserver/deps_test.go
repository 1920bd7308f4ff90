package dnsserver

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDeps enforces the package's place in the tree: stdlib, miekg/dns (and what
// it needs) and x/time/rate; no Beam package, and no testing code in production.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "beam.dev/beam/dnsserver").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := []string{"beam.dev/beam/dnsserver", "github.com/miekg/dns", "golang.org/x/time/rate", "golang.org/x/net/", "golang.org/x/sys/"}
	for dep := range strings.FieldsSeq(string(out)) {
		ok := false
		for _, a := range allowed {
			if dep == a || strings.HasSuffix(a, "/") && strings.HasPrefix(dep, a) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("dnsserver depends on %s", dep)
		}
	}
	std, err := exec.CommandContext(ctx, goBin, "list", "-deps", "beam.dev/beam/dnsserver").Output()
	if err != nil {
		t.Fatal(err)
	}
	for dep := range strings.FieldsSeq(string(std)) {
		if dep == "testing" || strings.HasPrefix(dep, "testing/") {
			t.Errorf("production code imports %s", dep)
		}
	}
}
