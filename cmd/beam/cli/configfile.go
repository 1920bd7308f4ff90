package cli

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"

	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
)

// configUsage is the help of every role's --config.
const configUsage = "HuJSON config file: its keys are this command's flags with _ for - (--tcp-ports is tcp_ports); flags given here win over it"

// loadConfig reads the config file at path into cfg, the role's configs
// struct the flags of fl are bound to: the file's keys replace the
// defaults, then the flags given on the command line are set again, so
// they win. given reports whether a flag's setting came from the command
// line or the file (not a default). path "" reads nothing. A file that
// sets a secret (see secretKeys) and that group or others may read gets a
// warning on errOut.
func loadConfig(fl *pflag.FlagSet, errOut io.Writer, path string, cfg any) (given func(flag string) bool, err error) {
	keys := map[string]bool{}
	given = func(name string) bool { return fl.Changed(name) || keys[configs.FlagKey(name)] }
	if path == "" {
		return given, nil
	}
	// What the command line gave, as text each flag's Set takes back.
	type setting struct {
		f     *pflag.Flag
		slice []string
		text  string
	}
	var cmdline []setting
	fl.Visit(func(f *pflag.Flag) {
		s := setting{f: f, text: f.Value.String()}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			s.slice = slices.Clone(sv.GetSlice()) // decoding reuses the backing array
		}
		cmdline = append(cmdline, s)
	})
	keys, err = configs.LoadFile(path, cfg)
	if err != nil {
		return nil, err
	}
	warnExposedSecrets(errOut, path, keys)
	for _, s := range cmdline {
		if sv, ok := s.f.Value.(pflag.SliceValue); ok {
			err = sv.Replace(s.slice)
		} else {
			err = s.f.Value.Set(s.text)
		}
		if err != nil {
			return nil, err
		}
	}
	return given, nil
}

// secretKeys are the config keys whose value is a secret: an auth key
// (beam up, beam edge). Secrets held in files of their own (mesh key,
// OIDC client secret, tokens) are named by path and not listed here.
var secretKeys = []string{"authkey"}

// warnExposedSecrets warns on w, as ssh does for a private key, when the
// config file at path sets one of secretKeys (keys holds the keys it
// sets) and group or others may read it. It warns rather than refuses, as
// Beam does for the other secret files it reads, so that a machine set up
// before the check keeps starting; the warning says how to fix it.
func warnExposedSecrets(w io.Writer, path string, keys map[string]bool) {
	if w == nil || runtime.GOOS == "windows" {
		return // nowhere to warn; no Unix mode bits
	}
	var set []string
	for _, k := range secretKeys {
		if keys[k] {
			set = append(set, k)
		}
	}
	if len(set) == 0 {
		return
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o044 == 0 {
		return
	}
	fmt.Fprintf(w, "warning: config %s holds a secret (%s) and is readable by group or others (mode %04o): anyone who can read it can use the key; run chmod 600 %s\n",
		path, set[0], fi.Mode().Perm(), path)
}
