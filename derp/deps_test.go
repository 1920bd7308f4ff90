package derp

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// goList runs go list for pkg with the given format.
func goList(t *testing.T, pkg, format string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	args := []string{"list", "-deps"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out, err := exec.CommandContext(ctx, goBin, append(args, pkg)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

// TestDeps enforces derp's place in the tree: of Beam it imports only
// types/key and internal/tcpcc; beyond the stdlib only x/crypto, coder/websocket and
// pion/stun (with what they need); never testing code.
func TestDeps(t *testing.T) {
	allowed := []string{
		"beam.dev/beam/derp", "beam.dev/beam/types/key", "beam.dev/beam/internal/tcpcc",
		"golang.org/x/crypto/", "golang.org/x/sys/", "github.com/coder/websocket",
		"github.com/pion/", "github.com/wlynxg/anet",
	}
	for _, dep := range goList(t, "beam.dev/beam/derp", "{{if not .Standard}}{{.ImportPath}}{{end}}") {
		ok := false
		for _, a := range allowed {
			if dep == a || strings.HasPrefix(dep, strings.TrimSuffix(a, "/")+"/") {
				ok = true
			}
		}
		if !ok {
			t.Errorf("derp depends on %s", dep)
		}
	}
	for _, dep := range goList(t, "beam.dev/beam/derp", "") {
		if dep == "testing" || strings.HasPrefix(dep, "testing/") {
			t.Errorf("production code imports %s", dep)
		}
	}
}

func TestPackageDoc(t *testing.T) {
	for _, pkg := range []string{"beam.dev/beam/derp", "beam.dev/beam/derp/derpserver"} {
		goBin, _ := exec.LookPath("go")
		out, err := exec.CommandContext(t.Context(), goBin, "list", "-f", "{{.Doc}}", pkg).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(out), "Package ") {
			t.Errorf("%s: package doc = %q, want a doc starting with \"Package\"", pkg, out)
		}
	}
}
