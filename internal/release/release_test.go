package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestVersions(t *testing.T) {
	for _, tt := range []struct{ in, deb, npm string }{
		{"v1.2.3", "1.2.3", "1.2.3"},
		{"1.2.3", "1.2.3", "1.2.3"},
		{"v1.2.3-4-gabcdef0-dirty", "1.2.3.4.gabcdef0.dirty", "0.0.0-dev.1.2.3.4.gabcdef0.dirty"},
		{"35a0120", "0.0.0~dev.35a0120", "0.0.0-dev.35a0120"},
		{"9ee422d", "0.0.0~dev.9ee422d", "0.0.0-dev.9ee422d"},
		{"devel-0123456789ab+dirty", "0.0.0~dev.devel.0123456789ab.dirty", "0.0.0-dev.devel.0123456789ab.dirty"},
		{"", "0.0.0~dev.devel", "0.0.0-dev.devel"},
	} {
		if got := PackageVersion(tt.in); got != tt.deb {
			t.Errorf("PackageVersion(%q) = %q, want %q", tt.in, got, tt.deb)
		}
		if got := NPMVersion(tt.in); got != tt.npm {
			t.Errorf("NPMVersion(%q) = %q, want %q", tt.in, got, tt.npm)
		}
	}
}

// TestMakefilePlatforms: `make release` builds exactly the platforms the
// npm launcher lists and the packages use.
func TestMakefilePlatforms(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RELEASE_PLATFORMS := (.*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Makefile sets no RELEASE_PLATFORMS")
	}
	got := strings.Fields(string(m[1]))
	var want []string
	for _, p := range Platforms {
		want = append(want, p.GOOS+"/"+p.GOARCH)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Makefile RELEASE_PLATFORMS = %v, want %v", got, want)
	}
	for _, target := range []string{"dist", "release", "packages", "npm", "image"} {
		if !regexp.MustCompile(`(?m)^` + target + `:`).Match(b) {
			t.Errorf("Makefile has no %s target", target)
		}
	}
}

// TestWriteSums: SHA256SUMS is what sha256sum -c accepts.
func TestWriteSums(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{"beam-linux-amd64": "a", "beam_1.0.0_amd64.deb": "bb"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sums, err := WriteSums(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb  beam-linux-amd64\n" +
		"3b64db95cb55c763391c707108489ae18b4112d783300de38e033b4c98c3deaf  beam_1.0.0_amd64.deb\n"
	if sums != want {
		t.Errorf("SHA256SUMS:\n%s\nwant:\n%s", sums, want)
	}
	cmd := exec.Command("sha256sum", "-c", "SHA256SUMS")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c: %v\n%s", err, out)
	}
}
