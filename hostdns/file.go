package hostdns

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// managedHeader starts every file Beam writes.
const managedHeader = "# Managed by beam (kernel TUN mode): MagicDNS answers the overlay's names\n" +
	"# and forwards other names to the original nameservers. The original\n" +
	"# file is restored when beam stops or leaves the mesh.\n"

// setFileLocked writes the managed resolver file for cfg, saving the
// original (and the record) first.
func (m *Manager) setFileLocked(cfg Config) error {
	path := m.opts.ResolvConf
	rec := m.rec
	if rec == nil {
		rec = &record{Mode: ModeFile, Path: path}
		if fi, err := os.Lstat(path); err == nil {
			rec.OrigExists = true
			if fi.Mode()&os.ModeSymlink != 0 {
				if rec.Symlink, err = os.Readlink(path); err != nil {
					return fmt.Errorf("hostdns: read %s: %w", path, err)
				}
			}
			b, err := os.ReadFile(path)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("hostdns: read %s: %w", path, err)
			}
			rec.Original = string(b)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("hostdns: %w", err)
		}
	}
	next := *rec
	next.Written = managedContent(cfg, rec.Original)
	// The record goes first: if the process dies between the two writes,
	// Recover finds the file either as it was or as recorded.
	if err := writeRecord(m.opts.StateDir, &next); err != nil {
		return err
	}
	if err := writeFile(path, next.Written); err != nil {
		if rec == m.rec {
			writeRecord(m.opts.StateDir, rec)
		} else {
			removeRecord(m.opts.StateDir)
		}
		return err
	}
	m.rec = &next
	m.log.Info("host resolver points at MagicDNS", "path", path, "nameservers", cfg.Nameservers, "search", cfg.SearchDomains)
	return nil
}

// managedContent is the resolver file for cfg: its nameservers, its search
// domains ahead of the original's, and the original's options.
func managedContent(cfg Config, original string) string {
	var b strings.Builder
	b.WriteString(managedHeader)
	for _, a := range cfg.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	search := append([]string(nil), cfg.SearchDomains...)
	var options []string
	sc := bufio.NewScanner(strings.NewReader(original))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "search", "domain":
			for _, d := range f[1:] {
				if !containsFold(search, d) {
					search = append(search, d)
				}
			}
		case "options":
			options = append(options, sc.Text())
		}
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for _, o := range options {
		b.WriteString(o + "\n")
	}
	return b.String()
}

func containsFold(list []string, s string) bool {
	s = strings.TrimSuffix(s, ".")
	for _, x := range list {
		if strings.EqualFold(strings.TrimSuffix(x, "."), s) {
			return true
		}
	}
	return false
}

// restoreFile puts back the original the record names, if the file still
// holds what Beam wrote.
func restoreFile(rec *record, log *slog.Logger) error {
	cur, err := os.ReadFile(rec.Path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("hostdns: read %s: %w", rec.Path, err)
	}
	if string(cur) != rec.Written {
		if string(cur) != rec.Original {
			log.Warn("the resolver file changed since beam wrote it; leaving it as it is", "path", rec.Path)
		}
		return nil
	}
	switch {
	case rec.Symlink != "":
		tmp := filepath.Join(filepath.Dir(rec.Path), "."+filepath.Base(rec.Path)+".beam")
		os.Remove(tmp)
		if err := os.Symlink(rec.Symlink, tmp); err != nil {
			return fmt.Errorf("hostdns: restore %s: %w", rec.Path, err)
		}
		if err := os.Rename(tmp, rec.Path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("hostdns: restore %s: %w", rec.Path, err)
		}
	case !rec.OrigExists:
		if err := os.Remove(rec.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("hostdns: restore %s: %w", rec.Path, err)
		}
	default:
		if err := writeFile(rec.Path, rec.Original); err != nil {
			return err
		}
	}
	log.Info("host resolver restored", "path", rec.Path)
	return nil
}

// writeFile replaces path's content: in place if path is a mount point (a
// bind-mounted resolv.conf cannot be renamed over), else by writing a
// temporary file beside it and renaming it over path (which also replaces
// a symlink rather than writing through it).
func writeFile(path, content string) error {
	if isMountPoint(path) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return fmt.Errorf("hostdns: write %s: %w", path, err)
		}
		_, werr := f.WriteString(content)
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return fmt.Errorf("hostdns: write %s: %w", path, err)
		}
		return nil
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".beam")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("hostdns: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("hostdns: write %s: %w", path, err)
	}
	return nil
}

// isMountPoint reports whether path is a mount point of this process's
// mount namespace (Linux; false elsewhere).
func isMountPoint(path string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mount-point options ...
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && unescapeMount(fields[4]) == abs {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + (c - '0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
