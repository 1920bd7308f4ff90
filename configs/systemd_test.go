package configs

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// roles are the units a package installs: one per beam role.
var roles = []string{"beam-daemon", "beam-server", "beam-coordinator", "beam-derp", "beam-edge"}

// unit is a systemd unit's [Service] keys (a key given twice keeps both).
type unit map[string][]string

func readUnit(t *testing.T, path string) unit {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not KEY=VALUE", path, line)
		}
		u[k] = append(u[k], v)
	}
	return u
}

func (u unit) get(k string) string {
	if v := u[k]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// readConfLines returns the fields of the non-comment lines of a
// sysusers.d or tmpfiles.d file.
func readConfLines(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 0 && !strings.HasPrefix(fields[0], "#") {
			lines = append(lines, fields)
		}
	}
	return lines
}

// TestSystemdUnits: a unit for every role; every User= of the units is
// created by the sysusers.d file shipped beside them, and every directory
// a unit writes is created by the tmpfiles.d file, owned by that user with
// the unit's mode, so the units start on a machine where nobody prepared
// anything by hand. Each unit runs /usr/bin/beam, and its settings file
// (EnvironmentFile=) is shipped in etc/ and defines what ExecStart uses.
func TestSystemdUnits(t *testing.T) {
	users := map[string]bool{}
	for _, l := range readConfLines(t, filepath.Join("systemd", "beam.sysusers.conf")) {
		if len(l) >= 2 && l[0] == "u" {
			users[l[1]] = true
		}
	}
	type dir struct{ mode, user, group string }
	dirs := map[string]dir{}
	for _, l := range readConfLines(t, filepath.Join("systemd", "beam.tmpfiles.conf")) {
		if len(l) < 5 || l[0] != "d" {
			t.Errorf("beam.tmpfiles.conf: line %q: want d PATH MODE USER GROUP", strings.Join(l, " "))
			continue
		}
		dirs[l[1]] = dir{l[2], l[3], l[4]}
	}
	units, err := filepath.Glob(filepath.Join("systemd", "*.service"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range units {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".service"))
	}
	for _, r := range roles {
		if !slices.Contains(names, r) {
			t.Errorf("no unit for role %s (units: %v)", r, names)
		}
	}
	varRE := regexp.MustCompile(`\$\{?([A-Z_][A-Z0-9_]*)\}?`)
	for _, p := range units {
		u := readUnit(t, p)
		user := u.get("User")
		if !users[user] {
			t.Errorf("%s runs as %q, which beam.sysusers.conf does not create (it creates %v)", p, user, users)
		}
		exec := u.get("ExecStart")
		if !strings.HasPrefix(exec, "/usr/bin/beam ") {
			t.Errorf("%s: ExecStart %q does not run /usr/bin/beam", p, exec)
		}
		check := func(path, mode string) {
			d, ok := dirs[path]
			switch {
			case !ok:
				t.Errorf("%s uses %s, which beam.tmpfiles.conf does not create", p, path)
			case d.user != user || d.group != u.get("Group"):
				t.Errorf("%s: %s is owned by %s:%s in beam.tmpfiles.conf, want %s:%s", p, path, d.user, d.group, user, u.get("Group"))
			case mode != "" && d.mode != mode:
				t.Errorf("%s: %s has mode %s in beam.tmpfiles.conf, want the unit's %s", p, path, d.mode, mode)
			}
		}
		if s := u.get("StateDirectory"); s != "" {
			check("/var/lib/"+s, u.get("StateDirectoryMode"))
		}
		if s := u.get("RuntimeDirectory"); s != "" {
			check("/run/"+s, u.get("RuntimeDirectoryMode"))
		}
		for _, rw := range strings.Fields(u.get("ReadWritePaths")) {
			check(rw, "")
		}
		for _, w := range strings.Fields(exec) {
			if strings.HasPrefix(w, "/var/lib/") || strings.HasPrefix(w, "/run/") {
				if _, ok := dirs[filepath.Dir(w)]; !ok && dirs[w] == (dir{}) {
					t.Errorf("%s: ExecStart names %s, in no directory beam.tmpfiles.conf creates", p, w)
				}
			}
		}
		env := ""
		for _, ef := range u["EnvironmentFile"] {
			name := filepath.Base(strings.TrimPrefix(ef, "-"))
			if !strings.HasPrefix(strings.TrimPrefix(ef, "-"), "/etc/beam/") {
				t.Errorf("%s: EnvironmentFile %s is not in /etc/beam", p, ef)
			}
			b, err := os.ReadFile(filepath.Join("etc", name))
			if err != nil {
				t.Errorf("%s: no example settings file: %v", p, err)
				continue
			}
			env += string(b)
		}
		for _, m := range varRE.FindAllStringSubmatch(exec, -1) {
			if !regexp.MustCompile(`(?m)^#?` + m[1] + `=`).MatchString(env) {
				t.Errorf("%s: ExecStart uses $%s, which its settings file does not name", p, m[1])
			}
		}
	}
	if _, ok := dirs["/etc/beam"]; !ok {
		t.Error("beam.tmpfiles.conf does not create /etc/beam, where the settings files live")
	}
}
