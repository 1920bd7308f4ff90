package repotest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestHooksFenced checks, in every production (non-_test.go) file of the
// module, that test hooks are fenced (STYLE.md §10): no identifier
// starts with testHook, and nothing named fooForTest or TestOnlyFoo is
// assigned to, so such a hook is set only from _test.go files
// (export_test.go, in-package tests).
func TestHooksFenced(t *testing.T) {
	fset := token.NewFileSet()
	files := 0
	for _, p := range listPackages(t) {
		for _, name := range append(p.GoFiles, p.IgnoredGoFiles...) {
			if strings.HasSuffix(name, "_test.go") || !strings.HasSuffix(name, ".go") {
				continue
			}
			path := filepath.Join(p.Dir, name)
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Errorf("parse %s: %v", path, err)
				continue
			}
			files++
			for _, problem := range unfencedHooks(fset, f) {
				t.Error(problem)
			}
		}
	}
	if files < 100 {
		t.Fatalf("checked only %d production files", files)
	}
}

// isHookName reports whether name is one that only tests may set.
func isHookName(name string) bool {
	return strings.HasSuffix(name, "ForTest") || strings.HasPrefix(name, "TestOnly")
}

// unfencedHooks returns, as "file:line: problem", every identifier in f
// that starts with testHook and every assignment in f to a variable or
// field whose name isHookName.
func unfencedHooks(fset *token.FileSet, f *ast.File) []string {
	var problems []string
	report := func(pos token.Pos, format string, args ...any) {
		problems = append(problems, fset.Position(pos).String()+": "+fmt.Sprintf(format, args...))
	}
	// assigned reports a hook-named target of an assignment.
	assigned := func(e ast.Expr) {
		var id *ast.Ident
		switch x := ast.Unparen(e).(type) {
		case *ast.Ident:
			id = x
		case *ast.SelectorExpr:
			id = x.Sel
		case *ast.StarExpr:
			if s, ok := ast.Unparen(x.X).(*ast.SelectorExpr); ok {
				id = s.Sel
			} else if i, ok := ast.Unparen(x.X).(*ast.Ident); ok {
				id = i
			}
		}
		if id != nil && isHookName(id.Name) {
			report(id.Pos(), "%s is set outside tests; only _test.go files may set it", id.Name)
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.Ident:
			if strings.HasPrefix(x.Name, "testHook") {
				report(x.Pos(), "%s: a test hook in production code; fence it (STYLE.md §10: export_test.go, fooForTest, TestOnly option)", x.Name)
			}
		case *ast.AssignStmt:
			if x.Tok != token.DEFINE {
				for _, l := range x.Lhs {
					assigned(l)
				}
			}
		case *ast.IncDecStmt:
			assigned(x.X)
		case *ast.KeyValueExpr:
			if id, ok := x.Key.(*ast.Ident); ok && isHookName(id.Name) {
				report(id.Pos(), "%s is set outside tests; only _test.go files may set it", id.Name)
			}
		case *ast.CallExpr:
			// x.fooForTest.Store(v) and the like, for sync/atomic types.
			if sel, ok := ast.Unparen(x.Fun).(*ast.SelectorExpr); ok {
				switch sel.Sel.Name {
				case "Store", "Swap", "CompareAndSwap", "Add", "Or", "And":
					assigned(sel.X)
				}
			}
		}
		return true
	})
	return problems
}

// TestUnfencedHooks checks the checker on code that fences its hooks and
// code that does not.
func TestUnfencedHooks(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want int // problems
	}{
		{"fenced", `package p
var beforeTakeForTest atomic.Pointer[func()]
type link struct{ onWaitForTest func() }
type Options struct{ TestOnlyClock func() time.Time }
func (l *link) wait() {
	if h := beforeTakeForTest.Load(); h != nil { (*h)() }
	if l.onWaitForTest != nil { l.onWaitForTest() }
	x := 1; x++
	o := Options{}; _ = o.TestOnlyClock
}`, 0},
		{"testHook var", `package p
var testHookWait func()`, 1},
		{"testHook field and use", `package p
type link struct{ testHookWait func() }
func (l *link) wait() { if l.testHookWait != nil { l.testHookWait() } }`, 3},
		{"assigns field", `package p
func f(l *link) { l.onWaitForTest = func() {} }`, 1},
		{"assigns var", `package p
func f() { beforeTakeForTest = nil }`, 1},
		{"stores atomic", `package p
func f() { beforeTakeForTest.Store(nil) }`, 1},
		{"sets option", `package p
func f() Options { return Options{TestOnlyClock: time.Now} }`, 1},
		{"assigns option field", `package p
func f(o *Options) { o.TestOnlyClock = time.Now }`, 1},
		{"calls ForTest func", `package p
func f(b *Bind) { b.SetUDPFilterForTest(nil) }`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "p.go", tt.src, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			got := unfencedHooks(fset, f)
			if len(got) != tt.want {
				t.Errorf("got %d problems %q, want %d", len(got), got, tt.want)
			}
		})
	}
}
