package gvisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// config is UPSTREAM: what the copy is made from.
type config struct {
	module  string
	version string
	copies  [][2]string // upstream path, path in the copy
	drops   []string    // paths in the copy
	owns    []string    // paths in the copy; a directory ends in "/"
}

func readConfig(path string) (config, error) {
	var c config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read upstream config: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch {
		case f[0] == "module" && len(f) == 2:
			c.module = f[1]
		case f[0] == "version" && len(f) == 2:
			c.version = f[1]
		case f[0] == "copy" && len(f) == 3:
			c.copies = append(c.copies, [2]string{f[1], f[2]})
		case f[0] == "drop" && len(f) == 2:
			c.drops = append(c.drops, f[1])
		case f[0] == "own" && len(f) == 2:
			c.owns = append(c.owns, f[1])
		default:
			return c, fmt.Errorf("read upstream config: %s:%d: cannot parse %q", path, n, sc.Text())
		}
	}
	if c.module == "" || c.version == "" || len(c.copies) == 0 {
		return c, fmt.Errorf("read upstream config: %s needs module, version and copy lines", path)
	}
	return c, nil
}

func (c config) isOwn(rel string) bool {
	for _, o := range c.owns {
		if rel == o || (strings.HasSuffix(o, "/") && strings.HasPrefix(rel, o)) {
			return true
		}
	}
	return false
}

// run runs a command in dir and returns its standard output, or an error
// with its standard error.
func run(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// moduleDir returns the module cache directory of c's upstream module.
func moduleDir(c config) (string, error) {
	out, err := run(".", "go", "mod", "download", "-json", c.module+"@"+c.version)
	var m struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &m); jerr != nil || m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("find upstream source: %s@%s: %v %s", c.module, c.version, err, m.Error)
	}
	return m.Dir, nil
}

// copyFile copies src to dst, creating dst's directory, as a file Beam can
// write (the module cache's are read-only).
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// expected makes in dir what the copy should be: upstream's files (from
// module directory src) as c says, with the patches in patchDir applied in
// order.
func expected(c config, src, patchDir, dir string) error {
	for _, cp := range c.copies {
		from, to := filepath.Join(src, cp[0]), filepath.Join(dir, cp[1])
		fi, err := os.Stat(from)
		if err != nil {
			return fmt.Errorf("copy upstream: %w", err)
		}
		if !fi.IsDir() {
			if err := copyFile(from, to); err != nil {
				return fmt.Errorf("copy upstream: %w", err)
			}
			continue
		}
		ents, err := os.ReadDir(from)
		if err != nil {
			return fmt.Errorf("copy upstream: %w", err)
		}
		for _, e := range ents {
			rel := filepath.ToSlash(filepath.Join(cp[1], e.Name()))
			if !e.Type().IsRegular() || slices.Contains(c.drops, rel) {
				continue
			}
			if err := copyFile(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
				return fmt.Errorf("copy upstream: %w", err)
			}
		}
	}
	for _, d := range c.drops {
		if !upstreamHas(c, src, d) {
			return fmt.Errorf("copy upstream: UPSTREAM drops %s, which %s@%s does not have", d, c.module, c.version)
		}
	}
	patches, err := filepath.Glob(filepath.Join(patchDir, "*.patch"))
	if err != nil {
		return fmt.Errorf("list patches: %w", err)
	}
	if _, err := run(dir, "git", "init", "-q"); err != nil {
		return fmt.Errorf("apply patches: %w", err)
	}
	for _, p := range patches { // Glob sorts them
		if p, err = filepath.Abs(p); err != nil {
			return fmt.Errorf("apply patches: %w", err)
		}
		if _, err := run(dir, "git", "apply", "--whitespace=nowarn", p); err != nil {
			return fmt.Errorf("apply patch %s to %s@%s: %w", filepath.Base(p), c.module, c.version, err)
		}
	}
	return os.RemoveAll(filepath.Join(dir, ".git"))
}

// upstreamHas reports whether rel, a path in the copy, is a file upstream.
func upstreamHas(c config, src, rel string) bool {
	for _, cp := range c.copies {
		if r, ok := strings.CutPrefix(rel, cp[1]+"/"); ok && !strings.Contains(r, "/") {
			if fi, err := os.Stat(filepath.Join(src, cp[0], r)); err == nil && fi.Mode().IsRegular() {
				return true
			}
		}
	}
	return false
}

// files lists the files under dir, relative and slash-separated, less
// those keep rejects.
func files(dir string, keep func(string) bool) (map[string]bool, error) {
	out := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel = filepath.ToSlash(rel); keep(rel) {
			out[rel] = true
		}
		return nil
	})
	return out, err
}

// verify returns an error describing every difference between copyDir (a
// third_party/gvisor) and upstream (module directory src) plus copyDir's
// patches.
func verify(c config, src, copyDir, scratch string) error {
	copyDir, err := filepath.Abs(copyDir)
	if err != nil {
		return fmt.Errorf("find the copy: %w", err)
	}
	want := filepath.Join(scratch, "want")
	if err := expected(c, src, filepath.Join(copyDir, "patches"), want); err != nil {
		return err
	}
	wantFiles, err := files(want, func(string) bool { return true })
	if err != nil {
		return fmt.Errorf("list expected files: %w", err)
	}
	gotFiles, err := files(copyDir, func(rel string) bool { return !c.isOwn(rel) })
	if err != nil {
		return fmt.Errorf("list the copy's files: %w", err)
	}
	var all []string
	for f := range wantFiles {
		all = append(all, f)
	}
	for f := range gotFiles {
		if !wantFiles[f] {
			all = append(all, f)
		}
	}
	slices.Sort(all)
	var summary, diffs strings.Builder
	for _, f := range all {
		switch {
		case !gotFiles[f]:
			fmt.Fprintf(&summary, "  %s: missing from the copy\n", f)
		case !wantFiles[f]:
			fmt.Fprintf(&summary, "  %s: only in the copy (neither upstream, from a patch, nor an own line in UPSTREAM)\n", f)
		default:
			a, err := os.ReadFile(filepath.Join(want, f))
			if err != nil {
				return err
			}
			b, err := os.ReadFile(filepath.Join(copyDir, f))
			if err != nil {
				return err
			}
			if bytes.Equal(a, b) {
				continue
			}
			fmt.Fprintf(&summary, "  %s: differs\n", f)
			// git diff --no-index exits 1 when the files differ.
			wf, gf := filepath.Join(want, f), filepath.Join(copyDir, f)
			d, _ := run(scratch, "git", "diff", "--no-index", "--no-color", "-U1", wf, gf)
			names := strings.NewReplacer(strings.TrimPrefix(filepath.ToSlash(wf), "/"), "expected/"+f,
				strings.TrimPrefix(filepath.ToSlash(gf), "/"), "copy/"+f)
			lines := strings.SplitAfter(names.Replace(string(d)), "\n")
			if len(lines) > 40 {
				lines = append(lines[:40], "  ...\n")
			}
			fmt.Fprintf(&diffs, "--- %s: expected (upstream plus patches) -> the copy\n%s", f, strings.Join(lines, ""))
		}
	}
	if summary.Len() == 0 {
		return nil
	}
	return fmt.Errorf("third_party/gvisor is not %s@%s plus patches/:\n%s%s"+
		"Put the change in a patch (third_party/gvisor/update.sh refresh NNNN-name.patch, or --new MSGFILE; see README.md)",
		c.module, c.version, summary.String(), diffs.String())
}

func TestCopyIsUpstreamPlusPatches(t *testing.T) {
	c, err := readConfig("UPSTREAM")
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(".", "go", "list", "-m", "-f", "{{.Version}}", c.module)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != c.version {
		t.Fatalf("go.mod requires %s %s, UPSTREAM names %s: the copy must come from the gVisor the rest of Beam links (move it with update.sh rebase, see README.md)", c.module, got, c.version)
	}
	src, err := moduleDir(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(c, src, ".", t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyFindsChanges checks the check: on a copy of third_party/gvisor,
// each change must make verify fail and name what changed.
func TestVerifyFindsChanges(t *testing.T) {
	c, err := readConfig("UPSTREAM")
	if err != nil {
		t.Fatal(err)
	}
	src, err := moduleDir(c)
	if err != nil {
		t.Fatal(err)
	}
	flipByte := func(rel string, at int) func(string) error {
		return func(dir string) error {
			p := filepath.Join(dir, rel)
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if at < 0 {
				at += len(b)
			}
			b[at] ^= 0x20
			return os.WriteFile(p, b, 0o644)
		}
	}
	write := func(rel, text string) func(string) error {
		return func(dir string) error { return os.WriteFile(filepath.Join(dir, rel), []byte(text), 0o644) }
	}
	remove := func(rel string) func(string) error {
		return func(dir string) error { return os.Remove(filepath.Join(dir, rel)) }
	}
	patch := func(prefix string) string {
		m, err := filepath.Glob(filepath.Join("patches", prefix+"-*.patch"))
		if err != nil || len(m) != 1 {
			t.Fatalf("patches/%s-*.patch: %v matches (%v)", prefix, m, err)
		}
		return filepath.ToSlash(m[0])
	}
	tests := []struct {
		name   string
		change func(dir string) error
		want   []string // in the error; none: no error
	}{
		{"unchanged", func(string) error { return nil }, nil},
		{"own file changed", write("README.md", "other\n"), nil},
		{"byte of an upstream file", flipByte("tcp/rack.go", 2000), []string{"tcp/rack.go: differs"}},
		{"byte of a patched file", flipByte("tcp/snd.go", -100), []string{"tcp/snd.go: differs"}},
		{"byte of a file a patch adds", flipByte("tcp/bbr.go", 3000), []string{"tcp/bbr.go: differs"}},
		{"byte of internal/tcp", flipByte("internal/tcp/tcp.go", 1000), []string{"internal/tcp/tcp.go: differs"}},
		{"byte of the licence", flipByte("LICENSE", 10), []string{"LICENSE: differs"}},
		{"file added", write("tcp/extra.go", "package tcp\n"), []string{"tcp/extra.go: only in the copy"}},
		{"file added outside the copied directories", write("extra.go", "package gvisor\n"), []string{"extra.go: only in the copy"}},
		{"dropped file put back", write("tcp/tcp_state_autogen.go", "package tcp\n"), []string{"tcp/tcp_state_autogen.go: only in the copy"}},
		{"upstream file removed", remove("tcp/rack.go"), []string{"tcp/rack.go: missing from the copy"}},
		{"patch removed", remove(patch("0005")), []string{"tcp/bbr.go: only in the copy", "tcp/snd.go: differs", "tcp/protocol.go: differs"}},
		{"patch that no longer applies", func(dir string) error {
			// A context line of the patch no longer matches upstream.
			p := filepath.Join(dir, patch("0003"))
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(p, bytes.Replace(b, []byte("\n \treturn 0\n"), []byte("\n \treturn 9\n"), 1), 0o644)
		}, []string{"apply patch 0003-"}},
		{"drop of a file upstream lacks", func(dir string) error {
			f, err := os.OpenFile(filepath.Join(dir, "UPSTREAM"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteString("drop tcp/nonesuch.go\n")
			return err
		}, []string{"UPSTREAM drops tcp/nonesuch.go"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "gvisor")
			if err := copyTree(".", dir); err != nil {
				t.Fatal(err)
			}
			if err := tt.change(dir); err != nil {
				t.Fatal(err)
			}
			c, err := readConfig(filepath.Join(dir, "UPSTREAM"))
			if err != nil {
				t.Fatal(err)
			}
			err = verify(c, src, dir, t.TempDir())
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("verify: %v, want no error", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("verify passed, want an error naming %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("verify error does not contain %q:\n%v", w, err)
				}
			}
			t.Logf("verify: %v", err)
		})
	}
}

// TestUpstreamPatchesApply checks that upstream/*.patch, the fixes offered
// to gVisor, apply in order to gVisor's tree at the version of the copy.
func TestUpstreamPatchesApply(t *testing.T) {
	c, err := readConfig("UPSTREAM")
	if err != nil {
		t.Fatal(err)
	}
	src, err := moduleDir(c)
	if err != nil {
		t.Fatal(err)
	}
	patches, err := filepath.Glob(filepath.Join("upstream", "*.patch"))
	if err != nil {
		t.Fatal(err)
	}
	if len(patches) == 0 {
		t.Fatal("no patches in upstream/")
	}
	dir := t.TempDir()
	for _, cp := range c.copies { // gVisor's own layout, generated files included
		if err := copyTree(filepath.Join(src, cp[0]), filepath.Join(dir, cp[0])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := run(dir, "git", "init", "-q"); err != nil {
		t.Fatal(err)
	}
	for _, p := range patches {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := run(dir, "git", "apply", abs); err != nil {
			t.Errorf("%s does not apply to %s@%s: %v", p, c.module, c.version, err)
		}
	}
}

// copyTree copies src (a file or a directory, with its subdirectories) to
// dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		return copyFile(p, filepath.Join(dst, rel))
	})
}
