package oidcauth_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// deps lists the packages pkg depends on, itself included.
func deps(t *testing.T, goTool, pkg string) []string {
	out, err := exec.Command(goTool, "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// TestDeps keeps the sign-in packages in their places: oidcauth uses no
// other Beam package (the coordinator and the edge both build on it), the
// edge's sign-in sees only edge and oidcauth, the coordinator's only the
// coordinator's packages and oidcauth; none links testing.
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	rules := []struct {
		pkg         string
		allowedBeam []string
	}{
		{"beam.dev/beam/oidcauth", []string{"beam.dev/beam/oidcauth"}},
		{"beam.dev/beam/edge/edgeoidc", append(deps(t, goTool, "beam.dev/beam/edge"), "beam.dev/beam/edge/edgeoidc", "beam.dev/beam/oidcauth")},
		{"beam.dev/beam/coordinator/oidclogin", []string{"beam.dev/beam/coordinator/oidclogin", "beam.dev/beam/coordinator", "beam.dev/beam/coordinator/policy",
			"beam.dev/beam/wire", "beam.dev/beam/types/key", "beam.dev/beam/oidcauth"}},
	}
	for _, r := range rules {
		t.Run(r.pkg, func(t *testing.T) {
			for _, dep := range deps(t, goTool, r.pkg) {
				if dep == "testing" {
					t.Errorf("%s depends on testing", r.pkg)
				}
				if strings.HasPrefix(dep, "beam.dev/") && !slices.ContainsFunc(r.allowedBeam, func(a string) bool {
					return dep == a
				}) {
					t.Errorf("%s depends on %s", r.pkg, dep)
				}
			}
		})
	}
}
