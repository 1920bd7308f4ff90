package release

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Platform is one binary Beam ships.
type Platform struct {
	GOOS, GOARCH string
}

// Platforms are the release builds: `make release` builds each, and the
// npm launcher lists each as an optional dependency.
var Platforms = []Platform{
	{"linux", "amd64"},
	{"linux", "arm64"},
	{"darwin", "amd64"},
	{"darwin", "arm64"},
	{"windows", "amd64"},
}

// BinaryName is the release binary's file name for p: beam-GOOS-GOARCH,
// with .exe on Windows.
func (p Platform) BinaryName() string {
	n := "beam-" + p.GOOS + "-" + p.GOARCH
	if p.GOOS == "windows" {
		n += ".exe"
	}
	return n
}

// NPMName is the name of p's npm package: @beam/ with Node's
// process.platform and process.arch, which the launcher looks up.
func (p Platform) NPMName() string {
	os, cpu := p.nodeOSCPU()
	return "@beam/" + os + "-" + cpu
}

func (p Platform) nodeOSCPU() (string, string) {
	os := p.GOOS
	if os == "windows" {
		os = "win32"
	}
	cpu := p.GOARCH
	if cpu == "amd64" {
		cpu = "x64"
	}
	return os, cpu
}

// NPMVersion turns a version as git describe prints it into semver, which
// npm requires: "v1.2.3" is 1.2.3; anything else is 0.0.0-dev.WORDS.
func NPMVersion(v string) string {
	v = strings.TrimPrefix(v, "v")
	words := strings.FieldsFunc(v, func(r rune) bool {
		return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	})
	if len(words) == 3 && v == strings.Join(words, ".") && allDigits(words) {
		return v
	}
	if len(words) == 0 {
		words = []string{"devel"}
	}
	return "0.0.0-dev." + strings.Join(words, ".")
}

func allDigits(ws []string) bool {
	for _, w := range ws {
		for _, r := range w {
			if r < '0' || r > '9' {
				return false
			}
		}
	}
	return true
}

// NPMOptions say which npm packages to write.
type NPMOptions struct {
	// Launcher is the repository's npm/beam directory.
	Launcher string
	// Binaries holds the release binaries, named by Platform.BinaryName.
	Binaries string
	// Platforms are the platform packages to write (default Platforms);
	// the launcher lists every one of Platforms either way.
	Platforms []Platform
	// Version is Beam's version; see NPMVersion.
	Version string
	// OutDir receives one directory per package: beam, and
	// beam-OS-CPU for each platform.
	OutDir string
}

// WriteNPM writes the launcher package and the platform packages, ready
// for npm pack or npm publish, and returns their directories (the
// launcher first).
func WriteNPM(o NPMOptions) ([]string, error) {
	fail := func(err error) ([]string, error) { return nil, fmt.Errorf("write npm packages: %w", err) }
	version := NPMVersion(o.Version)
	plats := o.Platforms
	if plats == nil {
		plats = Platforms
	}
	b, err := os.ReadFile(filepath.Join(o.Launcher, "package.json"))
	if err != nil {
		return fail(err)
	}
	var launcher packageJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&launcher); err != nil {
		return fail(fmt.Errorf("%s: %w", filepath.Join(o.Launcher, "package.json"), err))
	}
	launcher.Version = version
	launcher.OptionalDependencies = map[string]string{}
	for _, p := range Platforms {
		launcher.OptionalDependencies[p.NPMName()] = version
	}
	dir := filepath.Join(o.OutDir, "beam")
	if err := os.RemoveAll(dir); err != nil {
		return fail(err)
	}
	if err := writeJSON(filepath.Join(dir, "package.json"), launcher); err != nil {
		return fail(err)
	}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{"bin/beam.js", 0o755}, {"README.md", 0o644}} {
		if err := copyFile(filepath.Join(o.Launcher, f.name), filepath.Join(dir, f.name), f.mode); err != nil {
			return fail(err)
		}
	}
	dirs := []string{dir}
	for _, p := range plats {
		nos, cpu := p.nodeOSCPU()
		exe := "beam"
		if p.GOOS == "windows" {
			exe += ".exe"
		}
		pd := filepath.Join(o.OutDir, "beam-"+nos+"-"+cpu)
		if err := os.RemoveAll(pd); err != nil {
			return fail(err)
		}
		if err := copyFile(filepath.Join(o.Binaries, p.BinaryName()), filepath.Join(pd, "bin", exe), 0o755); err != nil {
			return fail(err)
		}
		pj := packageJSON{
			Name:            p.NPMName(),
			Version:         version,
			Description:     fmt.Sprintf("The beam binary for %s %s; installed by the beam package.", nos, cpu),
			Homepage:        launcher.Homepage,
			Files:           []string{"bin/" + exe},
			OS:              []string{nos},
			CPU:             []string{cpu},
			PreferUnplugged: true,
		}
		if err := writeJSON(filepath.Join(pd, "package.json"), pj); err != nil {
			return fail(err)
		}
		dirs = append(dirs, pd)
	}
	return dirs, nil
}

// packageJSON is the part of npm's package.json Beam's packages use, in
// the order npm's own files have it.
type packageJSON struct {
	Name                 string            `json:"name"`
	Version              string            `json:"version"`
	Description          string            `json:"description,omitempty"`
	Homepage             string            `json:"homepage,omitempty"`
	Bin                  map[string]string `json:"bin,omitempty"`
	Files                []string          `json:"files,omitempty"`
	Engines              map[string]string `json:"engines,omitempty"`
	OS                   []string          `json:"os,omitempty"`
	CPU                  []string          `json:"cpu,omitempty"`
	PreferUnplugged      bool              `json:"preferUnplugged,omitempty"`
	OptionalDependencies map[string]string `json:"optionalDependencies,omitempty"`
}

func writeJSON(path string, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
