// Package cli is the beam command tree: one file per command. It reads
// flags, environment and config files, turns them into each component's
// Options and wires components together. It holds no logic of its own.
package cli

import (
	"errors"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"beam.dev/beam/internal/version"
)

// Factory carries what every command needs from the outside world, so
// tests can run commands with their own streams.
type Factory struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// Getenv reads the environment; os.Getenv if nil.
	Getenv func(string) string
}

// NewFactory returns a Factory bound to the process's stdio and environment.
func NewFactory() *Factory {
	return &Factory{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr, Getenv: os.Getenv}
}

func (f *Factory) getenv(k string) string {
	if f.Getenv == nil {
		return os.Getenv(k)
	}
	return f.Getenv(k)
}

// Logger returns a text logger on ErrOut at the given level (a
// *slog.LevelVar changes it while it runs), with one component= per line
// (see componentHandler).
func (f *Factory) Logger(level slog.Leveler) *slog.Logger {
	return slog.New(newComponentHandler(slog.NewTextHandler(f.ErrOut, &slog.HandlerOptions{Level: level})))
}

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// ExitCode returns the exit code main should use for err.
func ExitCode(err error) int {
	if e, ok := errors.AsType[*exitError](err); ok {
		return e.code
	}
	return 1
}

// userMessager is an error that says, for a user, what failed and what to
// do next (localclient's and coordclient's errors).
type userMessager interface {
	error
	UserMessage() string
}

// ErrorMessage returns what beam prints for err: the user message of the
// outermost error that has one (what failed and the next step, without
// the chain of packages it came through), else err's own text. It is the
// one formatter of errors shown to users.
func ErrorMessage(err error) string {
	if um, ok := errors.AsType[userMessager](err); ok {
		if m := um.UserMessage(); m != "" {
			return m
		}
	}
	return err.Error()
}

// NewCmdRoot builds the beam command tree.
func NewCmdRoot(f *Factory) *cobra.Command {
	root := &cobra.Command{
		Use:           "beam",
		Short:         "Beam: a userspace WireGuard overlay network and public edge",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
	}
	root.SetVersionTemplate("beam {{.Version}}\n")
	in := &instanceFlags{}
	in.register(root)
	root.AddCommand(
		checkNodeFlags(NewCmdDaemon(f, in, nil)),
		checkNodeFlags(NewCmdUp(f, in, nil)),
		NewCmdDown(f, in),
		checkNodeFlags(NewCmdSet(f, in, nil)),
		NewCmdLogout(f, in),
		NewCmdStatus(f, in),
		NewCmdIP(f, in),
		NewCmdNC(f, in),
		NewCmdDNS(f, in),
		NewCmdExpose(f, in, nil),
		NewCmdPing(f, in),
		NewCmdNetcheck(f, in),
		NewCmdMetrics(f, in),
		NewCmdEdge(f, in, nil),
		NewCmdServer(f, nil),
		NewCmdDemo(f, nil),
		NewCmdVersion(f, in),
	)
	root.AddCommand(
		NewCmdCoordinator(f, nil),
		NewCmdAdmin(f),
		NewCmdDERP(f, nil),
	)
	barePort(root, f, in)
	addCompletions(root, f, in)
	// cobra adds these as it runs; added now, the walk below covers them.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	rejectUnknownSubcommands(root)
	rejectUnknownHelpTopic(root)
	return root
}
