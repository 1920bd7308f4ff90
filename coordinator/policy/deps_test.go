package policy

import (
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestDeps checks that the package imports only the standard library,
// hujson, wire and types/key (never testing), and has a package comment.
func TestDeps(t *testing.T) {
	allowed := map[string]bool{
		"github.com/tailscale/hujson": true,
		"beam.dev/beam/wire":          true,
		"beam.dev/beam/types/key":     true,
	}
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	docs, files := 0, 0
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		files++
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package policy ") {
			docs++
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(path, "/")
			std := !strings.Contains(first, ".")
			if path == "testing" || !std && !allowed[path] {
				t.Errorf("%s imports %q", name, path)
			}
		}
	}
	if files == 0 {
		t.Fatal("no Go files found")
	}
	if docs != 1 {
		t.Errorf("%d files carry a package comment starting \"Package policy \", want 1", docs)
	}
}
