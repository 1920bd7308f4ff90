// Package hostdns points the host's resolver at MagicDNS while a node runs
// in kernel TUN mode, and puts it back afterwards.
//
// Two ways, chosen by [New]:
//
//   - systemd-resolved, where it manages /etc/resolv.conf: split DNS on the
//     TUN device's link (resolvectl dns/domain/default-route), so only the
//     overlay's names go to MagicDNS. The settings belong to the link and
//     vanish with it, so even a crash leaves nothing behind; Close reverts
//     them at once.
//   - otherwise a managed /etc/resolv.conf: the original is saved in the
//     state directory, with a record of what was written, and replaced by
//     one that names MagicDNS (which forwards other names to the original
//     nameservers). Close restores the original. A process that dies
//     without closing leaves the record; [Manager.Recover], called at the
//     next start, restores the original from it. A file changed by someone
//     else since Beam wrote it is left alone.
//
// The file is replaced by rename where possible and rewritten in place
// where /etc/resolv.conf is a mount point (containers and network
// namespaces bind-mount it), so the same code works in both.
package hostdns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Mode is how the host's resolver is configured.
type Mode string

// Modes.
const (
	// ModeAuto picks ModeResolved where systemd-resolved manages
	// /etc/resolv.conf, else ModeFile.
	ModeAuto Mode = ""
	// ModeResolved configures split DNS on the device's link in
	// systemd-resolved through resolvectl.
	ModeResolved Mode = "resolved"
	// ModeFile manages /etc/resolv.conf.
	ModeFile Mode = "file"
)

// recordName is the crash-recovery record in the state directory.
const recordName = "hostdns.json"

// Options configures a Manager.
type Options struct {
	// StateDir holds the record of what was changed (and the original
	// file). Required.
	StateDir string
	// Interface is the TUN device the nameserver is reached through
	// (resolved's per-link settings). Required for ModeResolved.
	Interface string
	// Mode forces a mode; ModeAuto (zero) detects it.
	Mode Mode
	// ResolvConf is the resolver file. Empty means /etc/resolv.conf.
	ResolvConf string
	// Logger receives what the manager changes. Nil discards.
	Logger *slog.Logger
}

// Config is what the host's resolver should use.
type Config struct {
	// Nameservers are MagicDNS's addresses. Empty: leave the host's
	// resolver as it was.
	Nameservers []netip.Addr
	// SearchDomains are appended to short names ("beta" ->
	// "beta.example.beam"), ahead of the host's own.
	SearchDomains []string
	// MatchDomains are the domains only MagicDNS answers (the overlay's
	// domain, split-DNS routes). In ModeFile every name goes to MagicDNS,
	// which forwards the rest; these matter for ModeResolved.
	MatchDomains []string
}

// record is what a manager has changed, saved before each change.
type record struct {
	Mode       Mode   `json:"mode"`
	Interface  string `json:"interface,omitempty"`
	Path       string `json:"path,omitempty"`
	Original   string `json:"original"`              // the file's content before Beam
	Symlink    string `json:"symlink,omitempty"`     // the path was a symlink to this
	Written    string `json:"written"`               // what Beam last wrote
	OrigExists bool   `json:"orig_exists,omitempty"` // the file existed
}

// Manager configures the host's resolver. Its methods are safe for
// concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger
	mode Mode

	mu   sync.Mutex // guards the following fields
	last *Config    // last applied; nil: nothing applied
	rec  *record    // what is changed now (ModeFile); nil: nothing
}

// New returns a manager; it changes nothing until Set.
func New(opts Options) (*Manager, error) {
	if opts.StateDir == "" {
		return nil, errors.New("hostdns: Options.StateDir is required")
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = "/etc/resolv.conf"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{opts: opts, log: log.With("component", "hostdns"), mode: opts.Mode}
	if m.mode == ModeAuto {
		m.mode = detect(opts.ResolvConf)
	}
	if m.mode == ModeResolved && opts.Interface == "" {
		return nil, errors.New("hostdns: systemd-resolved mode needs Options.Interface")
	}
	return m, nil
}

// Mode returns the mode in use.
func (m *Manager) Mode() Mode { return m.mode }

// detect returns ModeResolved if systemd-resolved runs and owns path.
func detect(path string) Mode {
	if _, err := exec.LookPath("resolvectl"); err != nil {
		return ModeFile
	}
	if _, err := os.Stat("/run/systemd/resolve"); err != nil {
		return ModeFile
	}
	if t, err := os.Readlink(path); err == nil && strings.Contains(t, "/run/systemd/resolve/") {
		return ModeResolved
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ModeFile
	}
	ns := Nameservers(b)
	if len(ns) > 0 && ns[0] == netip.MustParseAddr("127.0.0.53") {
		return ModeResolved
	}
	return ModeFile
}

// Set points the host's resolver at cfg; an empty cfg.Nameservers
// restores it. Unchanged configs cost nothing. A config with a domain
// that fails CheckDomain is refused (an error wrapping ErrBadDomain) and
// nothing changes.
func (m *Manager) Set(cfg Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(cfg.Nameservers) == 0 {
		return m.restoreLocked()
	}
	if err := cfg.check(); err != nil {
		return err
	}
	if m.last != nil && equalConfig(*m.last, cfg) {
		return nil
	}
	var err error
	if m.mode == ModeResolved {
		err = m.setResolvedLocked(cfg)
	} else {
		err = m.setFileLocked(cfg)
	}
	if err != nil {
		return err
	}
	c := cfg
	m.last = &c
	return nil
}

// Close restores the host's resolver.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.restoreLocked()
}

func (m *Manager) restoreLocked() error {
	m.last = nil
	rec := m.rec
	if rec == nil {
		return nil
	}
	var err error
	if rec.Mode == ModeResolved {
		err = m.resolvectl("revert", rec.Interface)
	} else {
		err = restoreFile(rec, m.log)
	}
	if err != nil {
		return err
	}
	m.rec = nil
	return removeRecord(m.opts.StateDir)
}

func equalConfig(a, b Config) bool {
	return slices.Equal(a.Nameservers, b.Nameservers) && slices.Equal(a.SearchDomains, b.SearchDomains) &&
		slices.Equal(a.MatchDomains, b.MatchDomains)
}

// Recover undoes what a previous process recorded in stateDir and could
// not undo itself (it crashed or was killed): it restores the resolver
// file it replaced, unless someone changed the file since. Call it at
// start, while holding the state directory, before reading the host's
// resolver settings. No record: nothing to do.
func Recover(stateDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rec, err := readRecord(stateDir)
	if err != nil || rec == nil {
		return err
	}
	switch rec.Mode {
	case ModeFile:
		if err := restoreFile(rec, log); err != nil {
			return err
		}
	case ModeResolved:
		// The link's settings went with the device; revert in case a
		// device of that name is back.
		if rec.Interface != "" {
			ctx, cancel := context.WithTimeout(context.Background(), resolvectlTimeout)
			_ = exec.CommandContext(ctx, "resolvectl", "revert", rec.Interface).Run()
			cancel()
		}
	}
	log.Info("restored the host's DNS settings a previous run left", "mode", rec.Mode, "path", rec.Path)
	return removeRecord(stateDir)
}

// OriginalResolvConf returns the content of the host's resolver file as
// it was before Beam managed it: the saved original while a record of a
// managed file exists in stateDir (a running or crashed TUN-mode daemon),
// else the file itself.
func OriginalResolvConf(stateDir, path string) ([]byte, error) {
	if path == "" {
		path = "/etc/resolv.conf"
	}
	if rec, err := readRecord(stateDir); err == nil && rec != nil && rec.Mode == ModeFile && rec.Path == path {
		return []byte(rec.Original), nil
	}
	return os.ReadFile(path)
}

// Nameservers returns the nameserver addresses of resolv.conf content.
func Nameservers(conf []byte) []netip.Addr {
	var out []netip.Addr
	for line := range strings.SplitSeq(string(conf), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				out = append(out, a)
			}
		}
	}
	return out
}

func readRecord(stateDir string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, recordName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hostdns: read record: %w", err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("hostdns: record %s: %w", filepath.Join(stateDir, recordName), err)
	}
	return &rec, nil
}

func writeRecord(stateDir string, rec *record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("hostdns: encode record: %w", err)
	}
	p := filepath.Join(stateDir, recordName)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("hostdns: write record: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("hostdns: write record: %w", err)
	}
	return nil
}

func removeRecord(stateDir string) error {
	if err := os.Remove(filepath.Join(stateDir, recordName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("hostdns: remove record: %w", err)
	}
	return nil
}

// resolvectlTimeout bounds one resolvectl command.
const resolvectlTimeout = 10 * time.Second

func (m *Manager) resolvectl(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), resolvectlTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "resolvectl", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("hostdns: resolvectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}
