package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
)

// reloadSpec says how a role reloads its config file on SIGHUP. As Caddy
// does, a reload builds a whole new value (the defaults, then the file,
// then what the command line set at start, which still wins), validates
// it, and swaps it in; an invalid file is refused and the running config
// kept.
type reloadSpec[T any] struct {
	// ConfigFile is --config; "" reloads only what Apply re-reads (the
	// policy file).
	ConfigFile string
	// Defaults returns the role's defaults.
	Defaults func() T
	// Start is the config the role started with.
	Start *T
	// Cmdline holds the keys the command line set (cmdlineKeys).
	Cmdline []string
	// Validate completes and checks a new config; given reports whether a
	// flag's setting came from the file or the command line (not a
	// default).
	Validate func(next *T, given func(flag string) bool) error
	// Apply applies next (cur is the running config) where the role can
	// do so without dropping connections, and returns the keys it
	// applied. An error refuses next; Apply must fail before it changes
	// anything.
	Apply  func(cur, next *T) (applied []string, err error)
	Logger *slog.Logger
	// HUP is the channel of reloadSignal, registered as the role
	// starts so that a SIGHUP while it starts waits for it (and does not
	// end the process); nil registers one now.
	HUP chan os.Signal
}

// reloadSignal starts catching SIGHUP for a role that can reload (on), so
// that a SIGHUP while the role starts is handled once it runs (watchReload)
// instead of ending the process. Nil when off: SIGHUP keeps its default.
func reloadSignal(on bool) chan os.Signal {
	if !on {
		return nil
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// watchReload reloads on every SIGHUP until ctx ends; stop ends it and
// waits for it.
func watchReload[T any](ctx context.Context, spec reloadSpec[T]) (stop func()) {
	hup := spec.HUP
	if hup == nil {
		hup = reloadSignal(true)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cur := spec.Start
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			if next, err := spec.reload(cur); err != nil {
				spec.Logger.Error("config reload refused, the running config stays", append(spec.fileAttr(), "err", err)...)
			} else {
				cur = next
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
	}
}

// reload reads, checks and applies a new config over cur.
func (spec *reloadSpec[T]) reload(cur *T) (*T, error) {
	next := spec.Defaults()
	keys := map[string]bool{}
	if spec.ConfigFile != "" {
		var err error
		if keys, err = configs.LoadFile(spec.ConfigFile, &next); err != nil {
			return nil, err
		}
		configs.CopyKeys(&next, spec.Start, spec.Cmdline)
	} else {
		next = *spec.Start
	}
	given := func(flag string) bool {
		k := configs.FlagKey(flag)
		return keys[k] || slices.Contains(spec.Cmdline, k)
	}
	if err := spec.Validate(&next, given); err != nil {
		return nil, err
	}
	changed := configs.ChangedKeys(cur, &next)
	applied, err := spec.Apply(cur, &next)
	if err != nil {
		return nil, err
	}
	var reloaded, restart []string
	for _, k := range changed {
		if slices.Contains(applied, k) {
			reloaded = append(reloaded, k)
		} else {
			restart = append(restart, k)
		}
	}
	for _, k := range applied {
		// Files named by the config are read again even when their
		// name is the same; the token files are no config keys.
		if (k == "policy_file" || k == "admin_token" || k == "relay_token") && !slices.Contains(reloaded, k) {
			reloaded = append(reloaded, k)
		}
	}
	spec.Logger.Info("config reloaded", append(spec.fileAttr(), "reloaded", reloaded, "needs_restart", restart)...)
	if len(restart) > 0 {
		spec.Logger.Warn("config reload: these settings changed but take effect only after a restart", "keys", restart)
	}
	return &next, nil
}

// fileAttr returns the log attribute naming the config file, none
// without --config (a reload then re-reads only the files the role names).
func (spec *reloadSpec[T]) fileAttr() []any {
	if spec.ConfigFile == "" {
		return nil
	}
	return []any{"file", spec.ConfigFile}
}

// validateOnly is a reloadSpec.Validate for configs that need no
// completing.
func validateOnly[T any, P interface {
	*T
	Validate() error
}](next *T, _ func(string) bool) error {
	return P(next).Validate()
}

// stopSignal stops catching SIGHUP on hup (nil: nothing).
func stopSignal(hup chan os.Signal) {
	if hup != nil {
		signal.Stop(hup)
	}
}

// cmdlineKeys returns the config keys of the flags given on the command
// line.
func cmdlineKeys(fl *pflag.FlagSet) []string {
	var keys []string
	fl.Visit(func(f *pflag.Flag) { keys = append(keys, configs.FlagKey(f.Name)) })
	return keys
}

// reloadLevel is an Apply step: the log level.
func reloadLevel(lv *slog.LevelVar, next string) error {
	l, err := parseLevel(next)
	if err != nil {
		return err
	}
	lv.Set(l)
	return nil
}
