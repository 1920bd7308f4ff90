package repotest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "beam.dev/beam"

type pkgInfo struct {
	ImportPath string
	Doc        string
	Name       string
	Imports    []string
	Deps       []string

	Dir            string
	GoFiles        []string
	IgnoredGoFiles []string // excluded by build constraints (other platforms)
}

// listPackages runs go list over the module.
func listPackages(t *testing.T) []pkgInfo {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkgInfo
	for dec.More() {
		var p pkgInfo
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.Name == "main" && p.Doc == "" {
			t.Errorf("%s: command has no package comment", p.ImportPath)
			continue
		}
		if p.Doc == "" {
			t.Errorf("%s: no package comment", p.ImportPath)
		}
	}
}

// forbidden lists, per package (prefix match on the importer), Beam
// packages it must not depend on, directly or indirectly (STYLE.md §1).
var forbidden = map[string][]string{
	"types/key":            {"wire", "netstack", "node", "coordinator", "coordclient", "derp", "dnsserver", "edge", "localapi", "localclient", "configs", "cmd"},
	"wire":                 {"netstack", "node", "coordinator", "coordclient", "derp", "dnsserver", "edge", "localapi", "localclient", "cmd"},
	"netstack":             {"wire", "coordinator", "coordclient", "node", "dnsserver", "edge", "edgenode", "configs", "localapi", "cmd", "derp/derpserver"},
	"derp":                 {"netstack", "coordinator", "node", "edge", "dnsserver", "cmd"},
	"derp/derpserver":      {"netstack", "coordinator", "node", "edge", "dnsserver", "cmd"},
	"coordinator":          {"coordinator/sqlstore", "netstack", "node", "dnsserver", "edge", "derp/derpserver", "configs", "cmd", "localapi"},
	"coordinator/sqlstore": {"netstack", "node", "dnsserver", "edge", "derp", "cmd", "localapi"},
	"coordclient":          {"coordinator", "netstack", "node", "cmd"},
	"dnsserver":            {"netstack", "node", "coordinator", "wire", "edge", "cmd"},
	"edge":                 {"netstack", "node", "expose", "coordinator", "wire", "configs", "dnsserver", "cmd"},
	"node":                 {"coordinator", "derp/derpserver", "edge", "localapi", "cmd", "beamnet"},
	"beamnet":              {"coordinator", "derp/derpserver", "edge", "edgenode", "configs", "localapi", "localclient", "cmd"},
	"acmecert":             {"node", "expose", "netstack", "coordinator", "coordclient", "derp", "dnsserver", "edge", "localapi", "localclient", "configs", "cmd", "wire"},
	"expose":               {"node", "netstack", "coordinator", "coordclient", "derp", "dnsserver", "edge", "localapi", "localclient", "configs", "cmd"},
	"localapi":             {"cmd"},
	"localclient":          {"node", "netstack", "localapi", "cmd"},
}

func TestDependencyDirection(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(p.ImportPath, module+"/")
		rules, ok := forbidden[rel]
		if !ok {
			continue
		}
		for _, dep := range p.Deps {
			if !strings.HasPrefix(dep, module+"/") {
				if dep == "testing" {
					t.Errorf("%s depends on package testing in production code", rel)
				}
				continue
			}
			d := strings.TrimPrefix(dep, module+"/")
			for _, bad := range rules {
				if d == bad || strings.HasPrefix(d, bad+"/") {
					if d == "localapi/apitype" {
						continue // plain JSON types, shared by daemon and CLI
					}
					if rel == "coordinator" && d == "coordinator/policy" {
						continue
					}
					t.Errorf("%s must not depend on %s", rel, d)
				}
			}
			if strings.HasPrefix(d, "beamtest/") {
				t.Errorf("%s (production) depends on test harness %s", rel, d)
			}
		}
	}
}

// TestNoTestHarnessInProduction checks that no production package imports
// a beamtest harness.
func TestNoTestHarnessInProduction(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.HasPrefix(p.ImportPath, module+"/beamtest/") {
			continue
		}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module+"/beamtest/") {
				t.Errorf("%s imports %s outside tests", p.ImportPath, imp)
			}
		}
	}
}
