//go:build unix

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeBlock is one ```sh block of README.md and what the README says
// about it in HTML comments: <!-- not run: REASON --> right before the
// fence skips it; <!-- expect: REGEXP --> lines right after the closing
// fence must each match the block's standard output.
type readmeBlock struct {
	line    int // of the opening fence
	text    string
	skip    string
	expects []*regexp.Regexp
}

var (
	notRunRE = regexp.MustCompile(`^<!-- not run: (.+) -->$`)
	expectRE = regexp.MustCompile(`^<!-- expect: (.+) -->$`)
)

// parseREADME returns the ```sh blocks of a README in order.
func parseREADME(b []byte) ([]readmeBlock, error) {
	var blocks []readmeBlock
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "```sh" {
			continue
		}
		blk := readmeBlock{line: i + 1}
		for j := i - 1; j >= 0 && strings.TrimSpace(lines[j]) != ""; j-- {
			if m := notRunRE.FindStringSubmatch(strings.TrimSpace(lines[j])); m != nil {
				blk.skip = m[1]
			}
		}
		var body []string
		j := i + 1
		for ; j < len(lines) && strings.TrimSpace(lines[j]) != "```"; j++ {
			body = append(body, lines[j])
		}
		if j == len(lines) {
			return nil, fmt.Errorf("README.md:%d: ```sh block not closed", blk.line)
		}
		blk.text = strings.Join(body, "\n") + "\n"
		for j++; j < len(lines); j++ {
			m := expectRE.FindStringSubmatch(strings.TrimSpace(lines[j]))
			if m == nil {
				break
			}
			re, err := regexp.Compile(m[1])
			if err != nil {
				return nil, fmt.Errorf("README.md:%d: bad expect: %w", j+1, err)
			}
			blk.expects = append(blk.expects, re)
		}
		if blk.skip != "" && len(blk.expects) > 0 {
			return nil, fmt.Errorf("README.md:%d: a block that is not run cannot expect output", blk.line)
		}
		blocks = append(blocks, blk)
		i = j - 1
	}
	return blocks, nil
}

func TestParseREADME(t *testing.T) {
	in := "text\n<!-- not run: needs root -->\n```sh\nsudo x\n```\n\n```sh\necho a\necho b\n```\n<!-- expect: ^a$ -->\n<!-- expect: b -->\nmore\n"
	got, err := parseREADME([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d blocks, want 2", len(got))
	}
	if got[0].skip != "needs root" || got[0].text != "sudo x\n" {
		t.Errorf("block 1 = skip %q text %q; want skip %q text %q", got[0].skip, got[0].text, "needs root", "sudo x\n")
	}
	if got[1].skip != "" || got[1].text != "echo a\necho b\n" || len(got[1].expects) != 2 {
		t.Errorf("block 2 = skip %q text %q, %d expects; want run, %q, 2 expects", got[1].skip, got[1].text, len(got[1].expects), "echo a\necho b\n")
	}
	if _, err := parseREADME([]byte("```sh\necho\n")); err == nil {
		t.Error("unclosed block: got no error")
	}
}

// TestREADME runs README.md's shell blocks exactly as written, in order,
// in one bash, in a copy of the repository (symlinks to its files, so
// `make build` and `go run ./cmd/beam` work and write only there), and
// checks each block's output against the README's expect comments.
// Everything it starts is stopped by PID at the end: bash's background
// jobs, and the daemons beam up started (STATE/daemon.pid).
func TestREADME(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "python3", "dig", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README's examples need %s (install it: .ci/run lists the packages)", tool)
		}
	}
	lockREADMEPorts(t)
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := parseREADME(readme)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	ents, err := os.ReadDir(repo)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if n := e.Name(); n != "bin" && !strings.HasPrefix(n, ".") {
			if err := os.Symlink(filepath.Join(repo, n), filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	home := filepath.Join(dir, ".home")
	for _, d := range []string{home, filepath.Join(dir, ".run")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	jobsFile := filepath.Join(dir, ".jobs")

	var script strings.Builder
	script.WriteString("set -e\n")
	fmt.Fprintf(&script, "trap 'jobs -p > %q' EXIT\ntrap 'exit 143' TERM\n", jobsFile)
	var run []int
	for i, b := range blocks {
		if b.skip != "" {
			t.Logf("README.md:%d: not run: %s", b.line, b.skip)
			continue
		}
		run = append(run, i)
		fmt.Fprintf(&script, "echo '@@README block %d@@'; echo '@@README block %d@@' >&2\n", i, i)
		script.WriteString(b.text)
	}
	script.WriteString("echo '@@README end@@'\n")
	if len(run) == 0 {
		t.Fatal("README.md has no shell block to run")
	}

	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "BEAM_") || strings.HasPrefix(k, "XDG_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home, "XDG_RUNTIME_DIR="+filepath.Join(dir, ".run"), "GOFLAGS=-buildvcs=false",
		"BEAM_DNS_UPSTREAM="+os.Getenv("BEAM_DNS_UPSTREAM")) // the README's daemons forward to the test's stub, not the host's resolvers
	// The go command keeps its caches and settings, which HOME would move.
	for _, k := range []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOENV"} {
		v, err := exec.Command("go", "env", k).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", k, err)
		}
		env = append(env, k+"="+strings.TrimSpace(string(v)))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	// Files, not pipes: the background jobs keep their ends open, and
	// Wait would wait for them.
	stdoutF, err := os.Create(filepath.Join(dir, ".stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer stdoutF.Close()
	stderrF, err := os.Create(filepath.Join(dir, ".stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderrF.Close()
	cmd.Stdout, cmd.Stderr = stdoutF, stderrF
	t.Cleanup(func() { stopREADMEProcesses(t, dir, jobsFile, cmd) })
	start := time.Now()
	runErr := cmd.Run()
	t.Logf("README blocks ran in %v", time.Since(start).Round(time.Millisecond))

	outb, _ := os.ReadFile(stdoutF.Name())
	errb, _ := os.ReadFile(stderrF.Name())
	out := string(outb)
	failed := runErr != nil
	if runErr != nil {
		t.Errorf("README script: %v", runErr)
	}
	for _, i := range run {
		b := blocks[i]
		seg, ok := section(out, i)
		if !ok {
			if !failed {
				t.Errorf("README.md:%d: block did not run", b.line)
			}
			continue
		}
		for _, re := range b.expects {
			if !re.MatchString(seg) {
				t.Errorf("README.md:%d: output does not match %q; got:\n%s", b.line, re, seg)
				failed = true
			}
		}
	}
	if failed || t.Failed() {
		t.Logf("script stdout:\n%s", out)
		t.Logf("script stderr:\n%s", tail(string(errb), 200))
		for _, log := range findFiles(dir, "beam.log") {
			b, _ := os.ReadFile(log)
			t.Logf("%s:\n%s", log, tail(string(b), 60))
		}
	}
}

// section returns the standard output of README block i.
func section(out string, i int) (string, bool) {
	_, rest, ok := strings.Cut(out, fmt.Sprintf("@@README block %d@@\n", i))
	if !ok {
		return "", false
	}
	if j := strings.Index(rest, "@@README "); j >= 0 {
		rest = rest[:j]
	}
	return rest, true
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// findFiles returns the files named name in dir and its subdirectories
// one level down (state directories), not following symlinks.
func findFiles(dir, name string) []string {
	var out []string
	for _, pat := range []string{filepath.Join(dir, name), filepath.Join(dir, "*", name)} {
		m, _ := filepath.Glob(pat)
		for _, p := range m {
			if fi, err := os.Lstat(filepath.Dir(p)); err == nil && fi.Mode()&os.ModeSymlink == 0 {
				out = append(out, p)
			}
		}
	}
	return out
}

// stopREADMEProcesses stops what the README started, each by its PID: the
// daemons (STATE/daemon.pid), bash's background jobs, then bash's process
// group (the background jobs run in it) in case bash was killed before
// it could list them.
func stopREADMEProcesses(t *testing.T, dir, jobsFile string, cmd *exec.Cmd) {
	var pids []int
	for _, pf := range findFiles(dir, "daemon.pid") {
		b, err := os.ReadFile(pf)
		if pid, err2 := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && err2 == nil && pid > 1 {
			pids = append(pids, pid)
		}
	}
	if b, err := os.ReadFile(jobsFile); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && pid > 1 {
				pids = append(pids, pid)
			}
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	// They are not this process's children: poll until they are gone.
	deadline := time.After(15 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			select {
			case <-tick.C:
			case <-deadline:
				break wait
			}
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			t.Logf("pid %d did not stop on SIGTERM; killed", pid)
		}
	}
	if cmd.Process != nil {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Logf("kill process group %d: %v", cmd.Process.Pid, err)
		}
	}
}

// lockREADMEPorts holds a lock, shared by every test run on this machine,
// until t ends: the README's commands use fixed ports (8080, 8081, 9080,
// 1080, 5353, 3000, 8000), so two suites at once (make stress) would run
// one README into the other's servers. The second waits for the first.
func lockREADMEPorts(t *testing.T) {
	t.Helper()
	path := filepath.Join(os.TempDir(), "beam-readme-ports.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	start := time.Now()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("lock %s: %v", path, err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Logf("waited %v for another run's README test (the README's ports are fixed)", waited.Round(time.Millisecond))
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}
