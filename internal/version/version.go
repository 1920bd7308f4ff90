// Package version reports which build of Beam is running.
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// override, when set at link time, is the version:
//
//	go build -ldflags "-X beam.dev/beam/internal/version.override=v1.2.3" ./cmd/beam
var override string

// String returns the version of this binary: the link-time override if
// set, else the module version (for go install of a release), else the
// VCS revision it was built from (12 hex digits, with "+dirty" for a
// modified tree), else "devel".
func String() string {
	if override != "" {
		return override
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := "devel-" + rev
	if modified == "true" {
		v += "+dirty"
	}
	return v
}

// Long returns String with the Go version and platform, for bug reports:
// "devel-0123456789ab go1.26.0 linux/amd64".
func Long() string {
	return strings.Join([]string{String(), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}, " ")
}
