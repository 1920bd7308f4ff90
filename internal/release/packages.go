package release

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// PackageOptions say what to put in a Linux package.
type PackageOptions struct {
	// Binary is the beam binary for Arch.
	Binary string
	// Configs is the repository's configs directory (systemd units,
	// settings files, install scripts).
	Configs string
	// Version is Beam's version as `make` names it (git describe); see
	// PackageVersion.
	Version string
	// Arch is GOARCH: amd64 or arm64.
	Arch string
	// Format is "deb" or "rpm".
	Format string
	// OutDir receives the package.
	OutDir string
	// MTime stamps every file, so two builds of one version are the same
	// bytes; zero means the Unix epoch.
	MTime time.Time
}

// PackageVersion turns a version string as git describe prints it into
// one both dpkg and rpm order sensibly: "v1.2.3" is 1.2.3 (and
// "v1.2.3-4-gabcdef0" 1.2.3.4.gabcdef0), and anything that does not start
// with a release number (a bare commit, "devel") is 0.0.0~dev.WORDS,
// which sorts before every release.
func PackageVersion(v string) string {
	v = strings.TrimPrefix(v, "v")
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '.', r == '~':
			return r
		}
		return '.'
	}, v)
	if !releaseRE.MatchString(clean) {
		if clean = strings.Trim(clean, ".~"); clean == "" {
			clean = "devel"
		}
		return "0.0.0~dev." + clean
	}
	return clean
}

// Units returns the names of the systemd units in configs/systemd.
func Units(configsDir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(configsDir, "systemd", "*.service"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range m {
		names = append(names, filepath.Base(p))
	}
	sort.Strings(names)
	return names, nil
}

var releaseRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+`)

// BuildPackage writes a .deb or .rpm for o and returns its path.
func BuildPackage(o PackageOptions) (string, error) {
	fail := func(err error) (string, error) { return "", fmt.Errorf("build %s package: %w", o.Format, err) }
	units, err := Units(o.Configs)
	if err != nil {
		return fail(err)
	}
	if len(units) == 0 {
		return fail(fmt.Errorf("no units in %s", filepath.Join(o.Configs, "systemd")))
	}
	mtime := o.MTime
	if mtime.IsZero() {
		mtime = time.Unix(0, 0).UTC()
	}
	file := func(src, dst string, mode fs.FileMode) *files.Content {
		return &files.Content{Source: src, Destination: dst, FileInfo: &files.ContentFileInfo{Mode: mode, MTime: mtime}}
	}
	contents := files.Contents{
		file(o.Binary, "/usr/bin/beam", 0o755),
		file(filepath.Join(o.Configs, "systemd", "beam.sysusers.conf"), "/usr/lib/sysusers.d/beam.conf", 0o644),
		file(filepath.Join(o.Configs, "systemd", "beam.tmpfiles.conf"), "/usr/lib/tmpfiles.d/beam.conf", 0o644),
		file(filepath.Join(o.Configs, "policy.hujson"), "/usr/share/doc/beam/examples/policy.hujson", 0o644),
		file(filepath.Join(o.Configs, "derpmap.example.json"), "/usr/share/doc/beam/examples/derpmap.json", 0o644),
	}
	for _, u := range units {
		contents = append(contents, file(filepath.Join(o.Configs, "systemd", u), "/usr/lib/systemd/system/"+u, 0o644))
	}
	envs, err := filepath.Glob(filepath.Join(o.Configs, "etc", "*.env"))
	if err != nil {
		return fail(err)
	}
	for _, e := range envs {
		// Settings may hold an auth key: root reads them (systemd does,
		// before it drops to User=), nobody else.
		c := file(e, "/etc/beam/"+filepath.Base(e), 0o600)
		c.Type = files.TypeConfigNoReplace
		contents = append(contents, c)
	}
	info := &nfpm.Info{
		Name:          "beam",
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       PackageVersion(o.Version),
		VersionSchema: "none",
		Section:       "net",
		Priority:      "optional",
		Maintainer:    "Beam <beam@beam.dev>",
		Description:   "Userspace WireGuard overlay network, coordinator, relay and public edge.\nBeam joins devices into a private mesh and publishes local ports on a public edge; every role runs from one binary, with a systemd unit each.",
		Vendor:        "Beam",
		Homepage:      "https://beam.dev",
		MTime:         mtime,
		Overridables: nfpm.Overridables{
			Contents: contents,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(o.Configs, "packaging", "postinstall.sh"),
				PreRemove:   filepath.Join(o.Configs, "packaging", "preremove.sh"),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, o.Format); err != nil {
		return fail(err)
	}
	pkgr, err := nfpm.Get(o.Format)
	if err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return fail(err)
	}
	out := filepath.Join(o.OutDir, pkgr.ConventionalFileName(info))
	w, err := os.Create(out)
	if err != nil {
		return fail(err)
	}
	if err := pkgr.Package(info, w); err != nil {
		w.Close()
		os.Remove(out)
		return fail(err)
	}
	if err := w.Close(); err != nil {
		return fail(err)
	}
	return out, nil
}
