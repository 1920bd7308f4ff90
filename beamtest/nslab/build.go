package nslab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var builds struct {
	sync.Mutex
	dir string                 // temporary directory of this process's builds
	m   map[string]*buildEntry // by package
}

type buildEntry struct {
	once sync.Once
	path string
	err  string
}

// BuildBinary builds the main package pkg (an import path such as
// "beam.dev/beam/cmd/beam", or a directory relative to the test's package)
// with "go build" and returns the path of the executable. Each package is
// built once per test process; later calls, also from parallel tests, return
// the same path. The executables live in one temporary directory per test
// process, named for its PID: a test process cannot remove it as it exits
// (nothing runs then), so each test process that builds removes the
// directories of test processes that have ended.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	builds.Lock()
	if builds.m == nil {
		builds.m = map[string]*buildEntry{}
	}
	e := builds.m[pkg]
	if e == nil {
		e = &buildEntry{}
		builds.m[pkg] = e
	}
	builds.Unlock()
	e.once.Do(func() { e.path, e.err = build(pkg) })
	if e.err != "" {
		t.Fatalf("nslab: build %s: %s", pkg, e.err)
	}
	return e.path
}

// buildDirPrefix starts the name of each test process's build directory,
// followed by its PID and a dash.
const buildDirPrefix = "nslab-bin-"

// removeEndedBuilds removes the build directories of test processes that
// have ended. Each built a few binaries of tens of MiB, and ten thousand
// test runs would otherwise fill the temporary directory.
func removeEndedBuilds() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), buildDirPrefix+"*-*"))
	for _, d := range dirs {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), buildDirPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() || processRuns(pid) {
			continue
		}
		os.RemoveAll(d)
	}
}

func build(pkg string) (string, string) {
	builds.Lock()
	if builds.dir == "" {
		removeEndedBuilds()
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", buildDirPrefix, os.Getpid()))
		if err != nil {
			builds.Unlock()
			return "", err.Error()
		}
		builds.dir = dir
	}
	dir := builds.dir
	builds.Unlock()

	// go test puts the go command's GOROOT/bin first in PATH.
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", err.Error()
	}
	// Each package gets its own subdirectory, so that two packages with the
	// same last element don't overwrite each other.
	sub, err := os.MkdirTemp(dir, "")
	if err != nil {
		return "", err.Error()
	}
	out := filepath.Join(sub, path.Base(filepath.ToSlash(pkg)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, pkg)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", err.Error() + ": " + string(bytes.TrimSpace(msg))
	}
	return out, ""
}
