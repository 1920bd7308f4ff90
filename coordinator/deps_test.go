package coordinator_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDeps enforces the dependency rules of the control-plane packages:
// coordinator never sees SQL drivers or its store, coordclient never sees
// coordinator, the console sees only coordinator, and sqlstore stays on
// coordinator, wire, key and drivers.
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	rules := []struct {
		pkg       string
		forbidden []string
		// allowedBeam lists the only beam.dev packages it may import.
		allowedBeam []string
	}{
		{"beam.dev/beam/coordinator", []string{"database/sql", "modernc.org/", "testing"},
			[]string{"beam.dev/beam/coordinator", "beam.dev/beam/coordinator/policy", "beam.dev/beam/wire", "beam.dev/beam/types/key"}},
		{"beam.dev/beam/coordclient", []string{"database/sql", "modernc.org/", "testing"},
			[]string{"beam.dev/beam/coordclient", "beam.dev/beam/wire", "beam.dev/beam/types/key"}},
		{"beam.dev/beam/coordinator/console", []string{"database/sql", "modernc.org/", "testing"},
			[]string{"beam.dev/beam/coordinator/console", "beam.dev/beam/coordinator", "beam.dev/beam/coordinator/policy", "beam.dev/beam/wire", "beam.dev/beam/types/key"}},
		{"beam.dev/beam/coordinator/sqlstore", []string{"testing"},
			[]string{"beam.dev/beam/coordinator/sqlstore", "beam.dev/beam/coordinator", "beam.dev/beam/coordinator/policy", "beam.dev/beam/wire", "beam.dev/beam/types/key"}},
	}
	for _, r := range rules {
		t.Run(r.pkg, func(t *testing.T) {
			out, err := exec.Command(goTool, "list", "-deps", r.pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", r.pkg, err)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, f := range r.forbidden {
					if dep == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f)) {
						t.Errorf("%s depends on %s", r.pkg, dep)
					}
				}
				if strings.HasPrefix(dep, "beam.dev/") {
					ok := false
					for _, a := range r.allowedBeam {
						ok = ok || dep == a
					}
					if !ok {
						t.Errorf("%s depends on %s", r.pkg, dep)
					}
				}
			}
		})
	}
}
