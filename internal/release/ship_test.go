package release

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/rhysd/actionlint"
)

// repoRoot is the repository, seen from this package's directory.
var repoRoot = filepath.Join("..", "..")

// TestDockerfile lints the Dockerfile with BuildKit's own parser and the
// build checks it runs while parsing (what `docker build --check` reports
// for them), then checks what the image promises: a static binary built
// from this module, a non-root user, `beam server` by default, a volume
// for the data directory and the server's ports.
func TestDockerfile(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parse Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile:%v: %s", w.Location, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		t.Errorf("Dockerfile:%v: %s: %s (%s)", loc, rule, msg, url)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and the image", len(stages))
	}
	var build []string
	for _, c := range stages[0].Commands {
		if r, ok := c.(*instructions.RunCommand); ok {
			build = append(build, strings.Join(r.CmdLine, " "))
		}
	}
	if b := strings.Join(build, "\n"); !strings.Contains(b, "CGO_ENABLED=0 go build") || !strings.Contains(b, "./cmd/beam") {
		t.Errorf("the build stage does not build a static ./cmd/beam (CGO_ENABLED=0 go build):\n%s", b)
	}
	final := stages[len(stages)-1]
	if !strings.Contains(final.BaseName, "static") && final.BaseName != "scratch" {
		t.Errorf("the image is FROM %s, want a base for static binaries (distroless static or scratch)", final.BaseName)
	}
	var user, volumes, ports, entry, cmd []string
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = append(user, c.User)
		case *instructions.VolumeCommand:
			volumes = append(volumes, c.Volumes...)
		case *instructions.ExposeCommand:
			ports = append(ports, c.Ports...)
		case *instructions.EntrypointCommand:
			entry = c.CmdLine
		case *instructions.CmdCommand:
			cmd = c.CmdLine
		}
	}
	if len(user) == 0 || slices.ContainsFunc(user, func(u string) bool {
		return u == "root" || u == "0" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root:")
	}) {
		t.Errorf("USER %v: want a non-root user", user)
	}
	if !slices.Contains(volumes, "/var/lib/beam") {
		t.Errorf("VOLUME %v: want /var/lib/beam, the data directory", volumes)
	}
	for _, p := range []string{"8080/tcp", "80/tcp", "443/tcp", "3478/udp"} {
		if !slices.Contains(ports, p) {
			t.Errorf("EXPOSE %v: no %s", ports, p)
		}
	}
	if got := strings.Join(append(slices.Clone(entry), cmd...), " "); got != "/usr/bin/beam server --data /var/lib/beam" {
		t.Errorf("the image runs %q by default, want /usr/bin/beam server --data /var/lib/beam", got)
	}
}

// TestCompose loads the example compose file as docker compose does
// (compose-go, with the Compose schema), and checks it has a server and a
// device that joins it.
func TestCompose(t *testing.T) {
	path := filepath.Join(repoRoot, "examples", "compose", "compose.yaml")
	opts, err := cli.NewProjectOptions([]string{path}, cli.WithName("beam"), cli.WithEnv([]string{"BEAM_AUTHKEY=beamkey-example"}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	srv, ok := p.Services["server"]
	if !ok || srv.Build == nil {
		t.Fatalf("%s: no server service built from the Dockerfile (services %v)", path, p.ServiceNames())
	}
	if df := filepath.Join(srv.Build.Context, srv.Build.Dockerfile); !fileExists(df) {
		t.Errorf("server builds from %s, which does not exist", df)
	}
	if srv.Command[0] != "server" || len(srv.Volumes) == 0 || srv.Volumes[0].Target != "/var/lib/beam" {
		t.Errorf("server runs %v with volumes %v, want beam server with its data in a volume at /var/lib/beam", srv.Command, srv.Volumes)
	}
	var serverURL string
	for _, a := range srv.Command {
		if v, ok := strings.CutPrefix(a, "--public-url="); ok {
			serverURL = v
		}
	}
	up, ok := p.Services["device-up"]
	if !ok {
		t.Fatalf("%s: no device-up service", path)
	}
	if !slices.Contains(up.Command, "up") || !slices.Contains(up.Command, "--coordinator="+serverURL) {
		t.Errorf("device-up runs %v, want beam up --coordinator=%s (the server's --public-url)", up.Command, serverURL)
	}
	if k := up.Environment["BEAM_AUTHKEY"]; k == nil || *k != "beamkey-example" {
		t.Errorf("device-up does not pass BEAM_AUTHKEY from the environment: %v", up.Environment)
	}
	dev, ok := p.Services["device"]
	if !ok || !slices.Contains(dev.Command, "daemon") {
		t.Fatalf("%s: no device service running beam daemon", path)
	}
	if !slices.Equal(dev.Command[:2], up.Command[:2]) || dev.Volumes[0].Source != up.Volumes[0].Source {
		t.Errorf("device (%v, %s) and device-up (%v, %s) do not share the daemon's state and socket", dev.Command[:2], dev.Volumes[0].Source, up.Command[:2], up.Volumes[0].Source)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestActionlint lints action.yml with actionlint, through the example
// workflow that uses it (actionlint checks an action's metadata, and the
// inputs and outputs a workflow uses, where a workflow uses it), in a
// scratch project laid out as a repository using the action is.
func TestActionlint(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []struct{ src, dst string }{
		{"action.yml", "action.yml"},
		{"action/main.js", "action/main.js"},
		{"action/post.js", "action/post.js"},
		{"examples/github-action/preview.yml", ".github/workflows/preview.yml"},
	} {
		if err := copyFile(filepath.Join(repoRoot, f.src), filepath.Join(dir, f.dst), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	l, err := actionlint.NewLinter(&out, &actionlint.LinterOptions{WorkingDir: dir, Oneline: true})
	if err != nil {
		t.Fatal(err)
	}
	proj, err := actionlint.NewProject(dir)
	if err != nil {
		t.Fatal(err)
	}
	errs, err := l.LintFile(filepath.Join(dir, ".github", "workflows", "preview.yml"), proj)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		t.Errorf("actionlint: %s:%d:%d: %s [%s]", e.Filepath, e.Line, e.Column, e.Message, e.Kind)
	}
	// The check reaches the action's metadata: an input it does not
	// declare is an error.
	bad := strings.Replace(readFile(t, filepath.Join(dir, ".github", "workflows", "preview.yml")), "port: \"8000\"", "prot: \"8000\"", 1)
	errs, err = l.Lint(filepath.Join(dir, ".github", "workflows", "bad.yml"), []byte(bad), proj)
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) == 0 {
		t.Error("actionlint accepts an input action.yml does not declare: it did not read the action's metadata")
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
