package netstack

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDeps enforces the package's place in Beam's dependency tree: the
// data plane never imports control-plane or role packages, and only
// internal/gv imports gVisor (or Beam's copy of its TCP).
func TestDeps(t *testing.T) {
	forbidden := []string{
		"beam.dev/beam/wire", "beam.dev/beam/coordinator", "beam.dev/beam/coordclient",
		"beam.dev/beam/node", "beam.dev/beam/dnsserver", "beam.dev/beam/edge",
		"beam.dev/beam/configs", "beam.dev/beam/derp/derpserver", "beam.dev/beam/beamtest",
		"beam.dev/beam/cmd", "beam.dev/beam/localapi", "testing",
	}
	for _, dir := range []string{".", "internal/bind", "internal/gv"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		checked := 0
		for _, ent := range entries {
			name := ent.Name()
			if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, name), nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			checked++
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				for _, bad := range forbidden {
					if path == bad || strings.HasPrefix(path, bad+"/") {
						t.Errorf("%s/%s imports %s", dir, name, path)
					}
				}
				gvisor := strings.HasPrefix(path, "gvisor.dev/") || strings.HasPrefix(path, "beam.dev/beam/third_party/gvisor/")
				if gvisor && dir != "internal/gv" {
					t.Errorf("%s/%s imports %s; only internal/gv may import gVisor", dir, name, path)
				}
			}
		}
		if checked == 0 {
			t.Errorf("no Go files checked in %s", dir)
		}
	}
}
