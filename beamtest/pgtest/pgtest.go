// Package pgtest runs a private PostgreSQL server for tests: a new cluster
// (initdb) in a temporary directory, served by the postgres program on a
// unix socket in that directory and on no TCP port, so it touches neither
// the machine's own PostgreSQL nor the network, and is removed on Close.
//
// The server programs are found on PATH, then in `pg_config --bindir`,
// then in /usr/lib/postgresql/*/bin (Debian's postgresql package); when
// there are none, Start fails and says what to install. PostgreSQL refuses
// to run as root, so under root the cluster belongs to, and the server
// runs as, the unprivileged user "nobody". Databases are created per test
// (NewDatabase, or the cheaper NewSchema) in one server per test package
// (Shared):
//
//	var pg pgtest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(pg.Run(m)) }
//
//	func TestX(t *testing.T) { dsn := pg.NewDatabase(t); ... }
package pgtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// User is the server's superuser, the user of every DSN; the server trusts
// whoever connects on its socket.
const User = "beam"

// startTimeout bounds initdb and the server's start in Shared and New.
const startTimeout = 2 * time.Minute

// Server is a running private PostgreSQL server.
type Server struct {
	dir string   // the cluster's temporary directory: data/ and the socket
	bin string   // the directory of the server programs
	env []string // the server's environment
	log *tail

	mu sync.Mutex // guards the following fields
	// cmd is the server process, done closed when it has exited; Stop
	// and Start replace them.
	cmd      *exec.Cmd
	done     chan struct{}
	nextDB   int
	schemaDB bool // the database of NewSchema exists (created under mu)
	closed   bool
}

// BinDir returns the directory of PostgreSQL's server programs (initdb,
// postgres), or an error that says how to install them.
func BinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// The newest major version first.
	slices.SortFunc(dirs, func(a, b string) int { return majorOf(b) - majorOf(a) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New("pgtest: PostgreSQL server programs (initdb, postgres) not found on PATH, in `pg_config --bindir` or in /usr/lib/postgresql/*/bin; install them (Debian: apt-get install postgresql)")
}

func majorOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Start creates a cluster in a new temporary directory and starts its
// server, returning once it accepts connections. The caller must Close it.
func Start(ctx context.Context) (_ *Server, err error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	// The socket path must fit in sun_path (107 bytes): keep it short.
	// Under root the server's user must reach the directory: /tmp, not a
	// TMPDIR of root's that it may not enter.
	parent := ""
	if os.Geteuid() == 0 {
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, "beam-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	initAttr, _, err := procAttrs(dir)
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(), "LC_ALL=C", "LANG=C", "HOME="+dir, "TZ=UTC")
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", User, "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.Dir, initdb.Env = dir, env
	initdb.SysProcAttr = initAttr
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	s := &Server{dir: dir, bin: bin, env: env, log: &tail{}}
	if err := s.startServer(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// startServer starts the server process on the cluster and waits until it
// accepts connections; on failure no process is left running.
func (s *Server) startServer(ctx context.Context) error {
	_, serverAttr, err := procAttrs(s.dir)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.dir, "data"), "-k", s.dir,
		"-c", "listen_addresses=", "-c", "port=5432", "-c", "max_connections=200",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "lc_messages=C", "-c", "log_min_messages=warning", "-c", "log_destination=stderr",
		"-c", "logging_collector=off")
	cmd.Dir, cmd.Env = s.dir, s.env
	cmd.SysProcAttr = serverAttr
	stderr, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	cmd.Stderr = cmd.Stdout
	done := make(chan struct{})
	// The parent-death signal comes when the thread that started the
	// server ends, not the process: a goroutine keeps that thread, locked,
	// until the server has exited.
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			<-done
		}
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	ready := make(chan struct{})
	go s.readLog(cmd, stderr, ready, done)
	select {
	case <-ready:
		return nil
	case <-done:
		return fmt.Errorf("pgtest: postgres exited before it was ready:\n%s", s.log)
	case <-ctx.Done():
		s.stopServer()
		return fmt.Errorf("pgtest: postgres not ready: %w\n%s", ctx.Err(), s.log)
	}
}

// stopServer stops the server process, if running, with a fast shutdown
// (open connections end) and waits for it to exit.
func (s *Server) stopServer() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	// SIGINT is PostgreSQL's fast shutdown.
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		cmd.Process.Kill()
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Stop stops the server as an administrator restarting it would (a fast
// shutdown: open connections end at once, clients get errors) and keeps
// its cluster, for Start. It returns once the server has exited.
func (s *Server) Stop() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("pgtest: Stop after Close")
	}
	s.stopServer()
	return nil
}

// Start starts a server stopped by Stop again, on the same socket and
// data, and returns once it accepts connections.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	closed, running := s.closed, s.cmd != nil && !isDone(s.done)
	s.mu.Unlock()
	switch {
	case closed:
		return errors.New("pgtest: Start after Close")
	case running:
		return errors.New("pgtest: the server is running")
	}
	return s.startServer(ctx)
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// readLog keeps the server's log and closes ready when the server cmd
// says it accepts connections; it closes done when cmd has exited.
func (s *Server) readLog(cmd *exec.Cmd, r io.Reader, ready, done chan struct{}) {
	sc := bufio.NewScanner(r)
	signalled := false
	for sc.Scan() {
		line := sc.Text()
		s.log.add(line)
		if !signalled && strings.Contains(line, "database system is ready to accept connections") {
			signalled = true
			close(ready)
		}
	}
	cmd.Wait()
	close(done)
}

// DSN returns the URL of database db on the server.
func (s *Server) DSN(db string) string {
	return "postgres://" + User + "@/" + db + "?host=" + s.dir + "&sslmode=disable"
}

// CreateDatabase creates a new, empty database and returns its name.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	s.mu.Lock()
	s.nextDB++
	name := "test" + strconv.Itoa(s.nextDB)
	s.mu.Unlock()
	if err := s.admin(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return name, nil
}

// DropDatabase drops database name, ending its open connections.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	if err := s.admin(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgtest: drop database: %w", err)
	}
	return nil
}

// NewDatabase creates a database for t, dropped when t ends, and returns
// its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name, err := s.CreateDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			t.Errorf("%v", err)
		}
	})
	return s.DSN(name)
}

// schemaDB is the database NewSchema creates schemas in.
const schemaDB = "schemas"

// NewSchema is a cheaper NewDatabase: it creates a schema for t, dropped
// when t ends, in a database shared with other tests, and returns a DSN
// whose connections have only that schema on their search path. Objects
// a test creates without a schema name land there; database-wide state
// (advisory locks, roles) is shared.
func (s *Server) NewSchema(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	if !s.schemaDB {
		if err := s.admin(t.Context(), "CREATE DATABASE "+schemaDB); err != nil {
			s.mu.Unlock()
			t.Fatalf("pgtest: create database: %v", err)
		}
		s.schemaDB = true
	}
	s.nextDB++
	name := "test" + strconv.Itoa(s.nextDB)
	s.mu.Unlock()
	if err := s.exec(t.Context(), schemaDB, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.exec(ctx, schemaDB, "DROP SCHEMA "+name+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema: %v", err)
		}
	})
	return s.DSN(schemaDB) + "&search_path=" + name
}

func (s *Server) admin(ctx context.Context, stmt string) error {
	return s.exec(ctx, "postgres", stmt)
}

// exec runs stmt in database db.
func (s *Server) exec(ctx context.Context, db, stmt string) error {
	conn, err := pgx.Connect(ctx, s.DSN(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, stmt)
	return err
}

// CPU returns the CPU time the running server has used since it started:
// its postmaster's, its backends' and its other processes', those that
// exited included (Linux only). A restart (Stop, Start) starts it from 0.
func (s *Server) CPU() (time.Duration, error) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil || isDone(done) {
		return 0, errors.New("pgtest: the server is not running")
	}
	return treeCPU(cmd.Process.Pid)
}

// Log returns the end of the server's log.
func (s *Server) Log() string { return s.log.String() }

// Close stops the server (a fast shutdown, ending open connections) and
// removes its directory. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stopServer()
	return os.RemoveAll(s.dir)
}

// New starts a server for t alone, stopped when t ends. It fails t if
// PostgreSQL is not installed.
func New(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Shared is one server for a test package, started by the first
// NewDatabase and stopped by Run. The zero value is ready to use.
type Shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Server returns the shared server, starting it on first use. It fails t
// if the server cannot start (PostgreSQL not installed, for one).
func (p *Shared) Server(t testing.TB) *Server {
	t.Helper()
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		p.srv, p.err = Start(ctx)
	})
	if p.err != nil {
		t.Fatal(p.err)
	}
	return p.srv
}

// NewDatabase creates a database for t on the shared server and returns
// its DSN; see Server.NewDatabase.
func (p *Shared) NewDatabase(t testing.TB) string {
	t.Helper()
	return p.Server(t).NewDatabase(t)
}

// NewSchema creates a schema for t on the shared server and returns its
// DSN; see Server.NewSchema.
func (p *Shared) NewSchema(t testing.TB) string {
	t.Helper()
	return p.Server(t).NewSchema(t)
}

// Run runs the package's tests and then stops the server if one was
// started; TestMain passes its result to os.Exit.
func (p *Shared) Run(m *testing.M) int {
	code := m.Run()
	p.once.Do(func() {}) // no server starts after this
	if p.srv != nil {
		p.srv.Close()
	}
	return code
}

// tail keeps the last lines of a log.
type tail struct {
	mu    sync.Mutex // guards lines
	lines []string
}

func (l *tail) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 100 {
		l.lines = slices.Delete(l.lines, 0, 1)
	}
	l.lines = append(l.lines, line)
}

func (l *tail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
