//go:build linux

package main

import (
	"bufio"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sassoftware/go-rpmutils"
)

// systemdEnv reads an EnvironmentFile= as systemd does (KEY=VALUE lines,
// # comments, optional quotes around the value).
func systemdEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not KEY=VALUE", path, line)
		}
		env[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	return env
}

// unitKeys returns the values of key in a unit file, in order.
func unitKeys(t *testing.T, path, key string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			vs = append(vs, v)
		}
	}
	return vs
}

// execStart returns the words of a unit's ExecStart= as systemd runs it:
// the unit's EnvironmentFile= (read under root) expands $VAR into words
// and ${VAR} into one word, the binary and every /var/lib or /run path
// are taken under root.
func execStart(t *testing.T, root, unit string, env map[string]string) []string {
	t.Helper()
	path := filepath.Join(root, "usr/lib/systemd/system", unit)
	for _, ef := range unitKeys(t, path, "EnvironmentFile") {
		for k, v := range systemdEnv(t, filepath.Join(root, strings.TrimPrefix(ef, "-"))) {
			if _, set := env[k]; !set {
				env[k] = v
			}
		}
	}
	es := unitKeys(t, path, "ExecStart")
	if len(es) != 1 {
		t.Fatalf("%s: %d ExecStart lines, want 1", unit, len(es))
	}
	var words []string
	for _, w := range strings.Fields(es[0]) {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			words = append(words, env[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$"):
			words = append(words, strings.Fields(env[w[1:]])...)
		case strings.HasPrefix(w, "/"):
			words = append(words, filepath.Join(root, w))
		default:
			words = append(words, w)
		}
	}
	return words
}

// TestDebPackage builds the .deb (and the .rpm) as `make packages` does,
// installs the .deb into a scratch root (its files, then its postinst's
// systemd-sysusers and systemd-tmpfiles with --root), checks the user,
// the directories and units it creates, checks that every unit's
// ExecStart parses, then runs beam-server.service's ExecStart with dev
// settings in /etc/beam/beam-server.env and joins a device with beam up.
func TestDebPackage(t *testing.T) {
	for _, tool := range []string{"dpkg-deb", "systemd-sysusers", "systemd-tmpfiles", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to check the package: %v", tool, err)
		}
	}
	bin := buildBeam(t)
	dir := t.TempDir()
	// The packages are built by tools/release, as make packages does: in
	// this test's process, under the race detector, compressing the binary
	// takes minutes.
	tool := filepath.Join(dir, "release")
	if out, err := exec.Command("go", "build", "-o", tool, "../../tools/release").CombinedOutput(); err != nil {
		t.Fatalf("go build tools/release: %v\n%s", err, out)
	}
	start := time.Now()
	cmd := exec.Command(tool, "packages", "-version", "v1.2.3", "-arch", runtime.GOARCH, "-binary", bin,
		"-configs", filepath.Join("..", "..", "configs"), "-out", dir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tools/release packages: %v\n%s", err, out)
	}
	t.Logf("built the .deb and the .rpm in %v", time.Since(start).Round(time.Millisecond))
	var deb, rpm string
	for _, p := range strings.Fields(string(out)) {
		switch filepath.Ext(p) {
		case ".deb":
			deb = p
		case ".rpm":
			rpm = p
		}
	}
	if deb == "" || rpm == "" {
		t.Fatalf("tools/release packages wrote %q, want a .deb and a .rpm", out)
	}
	if want := "beam_1.2.3_" + runtime.GOARCH + ".deb"; filepath.Base(deb) != want {
		t.Errorf("deb is %s, want %s", filepath.Base(deb), want)
	}

	out, err = exec.Command("dpkg-deb", "--show", "--showformat", "${Package} ${Version} ${Architecture}", deb).CombinedOutput()
	if got, want := string(out), "beam 1.2.3 "+runtime.GOARCH; err != nil || got != want {
		t.Errorf("dpkg-deb --show = %q, %v; want %q", got, err, want)
	}
	ctrl := filepath.Join(dir, "control")
	if out, err := exec.Command("dpkg-deb", "--control", deb, ctrl).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --control: %v\n%s", err, out)
	}
	conffiles, _ := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	postinst, _ := os.ReadFile(filepath.Join(ctrl, "postinst"))
	for _, f := range []string{"/etc/beam/beam-server.env", "/etc/beam/beam-edge.env", "/etc/beam/beam-daemon.env"} {
		if !strings.Contains(string(conffiles), f+"\n") {
			t.Errorf("conffiles does not keep %s across upgrades:\n%s", f, conffiles)
		}
	}
	for _, c := range []string{"systemd-sysusers /usr/lib/sysusers.d/beam.conf", "systemd-tmpfiles --create /usr/lib/tmpfiles.d/beam.conf"} {
		if !strings.Contains(string(postinst), c) {
			t.Errorf("postinst does not run %q:\n%s", c, postinst)
		}
	}

	// Install into the scratch root: what dpkg unpacks, then what postinst
	// does, rooted there.
	root := filepath.Join(dir, "root")
	start = time.Now()
	for _, args := range [][]string{
		{"dpkg-deb", "--extract", deb, root},
		{"systemd-sysusers", "--root=" + root, "beam.conf"},
		{"systemd-tmpfiles", "--root=" + root, "--create", "beam.conf"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if args[0] == "dpkg-deb" {
			checkRPM(t, rpm, root) // against the deb's files alone
		}
	}
	t.Logf("installed into a scratch root in %v", time.Since(start).Round(time.Millisecond))
	passwd, err := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	uid := -1
	for line := range strings.SplitSeq(string(passwd), "\n") {
		if f := strings.Split(line, ":"); len(f) == 7 && f[0] == "beam" {
			uid, _ = strconv.Atoi(f[2])
			if f[5] != "/var/lib/beam" || !strings.HasSuffix(f[6], "nologin") || uid == 0 || uid >= 1000 {
				t.Errorf("user beam is %q, want a system user (uid < 1000) with home /var/lib/beam and no login shell", line)
			}
		}
	}
	if uid < 0 {
		t.Fatalf("the package created no user beam:\n%s", passwd)
	}
	for _, d := range []string{"var/lib/beam", "var/lib/beam-server", "var/lib/beam-coordinator", "var/lib/beam-derp", "var/lib/beam-edge", "run/beam"} {
		fi, err := os.Stat(filepath.Join(root, d))
		if err != nil {
			t.Errorf("the package created no /%s: %v", d, err)
			continue
		}
		want := os.FileMode(0o700)
		if d == "run/beam" {
			want = 0o755
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || fi.Mode().Perm() != want {
			t.Errorf("/%s: uid %d mode %v, want uid %d (beam) mode %v", d, st.Uid, fi.Mode().Perm(), uid, want)
		}
	}
	units, err := filepath.Glob(filepath.Join(root, "usr/lib/systemd/system/*.service"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range units {
		names = append(names, filepath.Base(u))
	}
	if want := []string{"beam-coordinator.service", "beam-daemon.service", "beam-derp.service", "beam-edge.service", "beam-server.service"}; !slices.Equal(names, want) {
		t.Errorf("units %v, want %v", names, want)
	}
	// systemd-analyze verify reads the units as systemd would (unknown
	// keys, bad values, a command that is not there): copies whose
	// ExecStart names the unpacked binary, since nothing is installed in
	// /usr/bin.
	verify := filepath.Join(dir, "verify")
	if err := os.MkdirAll(verify, 0o755); err != nil {
		t.Fatal(err)
	}
	var copies []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		c := filepath.Join(verify, filepath.Base(u))
		if err := os.WriteFile(c, []byte(strings.ReplaceAll(string(b), "/usr/bin/beam", filepath.Join(root, "usr/bin/beam"))), 0o644); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, c)
	}
	if out, err := exec.Command("systemd-analyze", append([]string{"verify"}, copies...)...).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Every unit's command line, with its shipped settings, is one beam
	// accepts: --help after it fails on an unknown command or flag.
	for _, u := range names {
		words := execStart(t, root, u, map[string]string{})
		if out, err := exec.Command(words[0], append(words[1:], "--help")...).CombinedOutput(); err != nil {
			t.Errorf("%s: %s --help: %v\n%s", u, strings.Join(words, " "), err, out)
		}
	}

	// beam-server.service as a user would start it: settings in
	// /etc/beam/beam-server.env (here a dev server on free loopback ports).
	c := &cluster{t: t, bin: filepath.Join(root, "usr/bin/beam"), dir: dir}
	c.addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	c.url = "http://" + c.addr
	httpPort := freePort(t)
	settings := fmt.Sprintf("BEAM_SERVER_ARGS=--dev --addr %s --http-addr 127.0.0.1:%d --stun-addr 127.0.0.1:%d --tcp-ports %s --udp-ports %s\n",
		c.addr, httpPort, freePort(t), freePortRange(t, "tcp", 10), freePortRange(t, "udp", 10))
	if err := os.WriteFile(filepath.Join(root, "etc/beam/beam-server.env"), []byte(settings), 0o600); err != nil {
		t.Fatal(err)
	}
	words := execStart(t, root, "beam-server.service", map[string]string{})
	logPath := filepath.Join(dir, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(words[0], words[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+dir) // its discovery file stays in the test
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	c.coord = cmd
	t.Cleanup(func() {
		c.stopCoordinator()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s\nserver log:\n%s", strings.Join(words, " "), b)
		}
	})
	waitFor(t, 20*time.Second, "the server unit's coordinator answers", func() bool {
		resp, err := http.Get(c.url + "/key")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if _, err := os.Stat(filepath.Join(root, "var/lib/beam-server/admin.token")); err != nil {
		t.Errorf("the server keeps no admin token in /var/lib/beam-server: %v", err)
	}
	out2 := c.device("alpha").mustUp()
	if !strings.HasPrefix(out2, "alpha 100.64.") {
		t.Errorf("beam up printed %q, want the name and an overlay address", out2)
	}
}

// checkRPM reads the .rpm's header: the same version, files, modes and
// install script as the .deb (whose files are unpacked under debRoot),
// with the settings files kept across upgrades (%config(noreplace)).
func checkRPM(t *testing.T, path, debRoot string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := rpmutils.ReadRpm(f)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	nevra, err := r.Header.GetNEVRA()
	if err != nil {
		t.Fatal(err)
	}
	if nevra.Name != "beam" || nevra.Version != "1.2.3" {
		t.Errorf("rpm is %s-%s, want beam-1.2.3", nevra.Name, nevra.Version)
	}
	post, err := r.Header.GetString(rpmutils.POSTIN)
	if err != nil || !strings.Contains(post, "systemd-sysusers /usr/lib/sysusers.d/beam.conf") {
		t.Errorf("the rpm's %%post does not run systemd-sysusers (%v):\n%s", err, post)
	}
	files, err := r.Header.GetFiles()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, fi := range files {
		if fi.Mode()&syscall.S_IFMT != syscall.S_IFREG {
			continue
		}
		got[fi.Name()] = fmt.Sprintf("%o", fi.Mode()&0o7777)
		if strings.HasPrefix(fi.Name(), "/etc/") && fi.Flags()&(rpmutils.RPMFILE_CONFIG|rpmutils.RPMFILE_NOREPLACE) != rpmutils.RPMFILE_CONFIG|rpmutils.RPMFILE_NOREPLACE {
			t.Errorf("rpm: %s is not %%config(noreplace)", fi.Name())
		}
	}
	want := map[string]string{}
	err = filepath.WalkDir(debRoot, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want["/"+strings.TrimPrefix(p, debRoot+"/")] = fmt.Sprintf("%o", fi.Mode().Perm())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("rpm files (mode) %v\nwant the deb's %v", got, want)
	}
}
