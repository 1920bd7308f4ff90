package coordinator

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"beam.dev/beam/wire"
)

// registration is one mux.HandleFunc/Handle call of package coordinator:
// the method and the name of the wire constant it registers.
type registration struct {
	method, constName string
	pos               string
}

// wirePathConsts returns the string constants of package wire whose
// names start with "Path", by name.
func wirePathConsts(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("../wire/*.go")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, fn := range files {
		if strings.HasSuffix(fn, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, fn, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, sp := range gd.Specs {
				vs := sp.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Path") || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Errorf("wire.%s is not a string literal", name.Name)
						continue
					}
					v, _ := strconv.Unquote(lit.Value)
					out[name.Name] = v
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("found no wire.Path constants")
	}
	return out
}

// registrations parses the package's non-test files and returns every
// pattern given to a HandleFunc or Handle method. A pattern that is not
// a wire.Path constant, alone or after "METHOD "+, is an error.
func registrations(t *testing.T) []registration {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []registration
	for _, fn := range files {
		if strings.HasSuffix(fn, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, fn, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 2 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "HandleFunc" && sel.Sel.Name != "Handle") {
				return true
			}
			pos := fset.Position(call.Pos()).String()
			r := registration{pos: pos}
			arg := call.Args[0]
			if be, ok := arg.(*ast.BinaryExpr); ok && be.Op == token.ADD {
				lit, ok := be.X.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Errorf("%s: pattern does not start with a method literal", pos)
					return true
				}
				m, _ := strconv.Unquote(lit.Value)
				r.method = strings.TrimSuffix(m, " ")
				arg = be.Y
			}
			ps, ok := arg.(*ast.SelectorExpr)
			var pkg *ast.Ident
			if ok {
				pkg, ok = ps.X.(*ast.Ident)
			}
			if !ok || pkg.Name != "wire" || !strings.HasPrefix(ps.Sel.Name, "Path") {
				t.Errorf("%s: registers a pattern that is not a wire.Path constant", pos)
				return true
			}
			r.constName = ps.Sel.Name
			out = append(out, r)
			return true
		})
	}
	return out
}

// TestRoutesAreWirePaths checks that the coordinator registers its
// endpoints only under wire.Path constants, that every such constant is
// registered, and that the muxes route a request for each path, its
// wildcards filled, to exactly that pattern.
func TestRoutesAreWirePaths(t *testing.T) {
	consts := wirePathConsts(t)
	regs := registrations(t)
	used := map[string]bool{}
	for _, r := range regs {
		if _, ok := consts[r.constName]; !ok {
			t.Errorf("%s: wire.%s is not a wire path constant", r.pos, r.constName)
		}
		used[r.constName] = true
	}
	for name := range consts {
		if !used[name] {
			t.Errorf("wire.%s is not registered by the coordinator", name)
		}
	}

	s := &Server{}
	mux, admin := s.routes()
	for _, r := range regs {
		path := consts[r.constName]
		if r.constName == "PathAdminPrefix" {
			continue // the admin mux itself
		}
		t.Run(r.method+" "+r.constName, func(t *testing.T) {
			if r.method == "" {
				t.Fatalf("%s: pattern has no method", r.pos)
			}
			// Fill each wildcard with a value that needs escaping.
			target := path
			for strings.Contains(target, "{") {
				i, j := strings.IndexByte(target, '{'), strings.IndexByte(target, '}')
				target = target[:i] + "a%2Fb" + target[j+1:]
			}
			req := httptest.NewRequest(r.method, target, nil)
			_, pat := mux.Handler(req)
			if pat == wire.PathAdminPrefix {
				_, pat = admin.Handler(req)
			}
			if want := r.method + " " + path; pat != want {
				t.Errorf("%s %s routed to pattern %q, want %q", r.method, target, pat, want)
			}
		})
	}
	if !slices.ContainsFunc(regs, func(r registration) bool { return r.constName == "PathAdminPrefix" }) {
		t.Error("the admin API is not mounted at wire.PathAdminPrefix")
	}
}

// TestAdminPathsNeedToken checks that every endpoint under
// wire.PathAdminPrefix but the relays' check refuses a request without
// the admin token before any handler runs.
func TestAdminPathsNeedToken(t *testing.T) {
	consts := wirePathConsts(t)
	s := &Server{}
	s.admin = &adminAPI{core: s}
	h := hashSecret("the-admin-token")
	s.admin.tokenHash.Store(&h)
	mux, _ := s.routes()
	n := 0
	for _, r := range registrations(t) {
		path := consts[r.constName]
		if !strings.HasPrefix(path, wire.PathAdminPrefix) || path == wire.PathDERPVerify {
			continue
		}
		n++
		target := strings.NewReplacer("{", "", "}", "").Replace(path)
		for _, auth := range []string{"", "Bearer wrong-token"} {
			req := httptest.NewRequest(r.method, target, nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s with %q: got %d (WWW-Authenticate %q), want 401 with a challenge", r.method, target, auth, rec.Code, rec.Header().Get("WWW-Authenticate"))
			}
		}
	}
	if n < 20 {
		t.Errorf("checked %d admin endpoints, want every one (more than 20)", n)
	}
}
