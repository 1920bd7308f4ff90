package cli

import (
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
// line or the file (not a default). path "" reads nothing.
func loadConfig(fl *pflag.FlagSet, path string, cfg any) (given func(flag string) bool, err error) {
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
