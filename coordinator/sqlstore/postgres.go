package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// PostgreSQL error codes (SQLSTATE) the store tells apart.
const (
	pgUniqueViolation      = "23505"
	pgSerializationFailure = "40001"
	pgDeadlockDetected     = "40P01"
)

var postgresDialect = dialect{
	name:   "postgres",
	rebind: rebindDollar,
	isUnique: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == pgUniqueViolation
	},
	isRetryable: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && (pe.Code == pgSerializationFailure || pe.Code == pgDeadlockDetected)
	},
	lockTx: func(ctx context.Context, tx *sql.Tx, lock int64) error {
		_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lock)
		return err
	},
	lockSession: func(ctx context.Context, conn *sql.Conn, lock int64) error {
		_, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, lock)
		return err
	},
	unlockSession: func(ctx context.Context, conn *sql.Conn, lock int64) error {
		_, err := conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, lock)
		return err
	},
}

// defaultConnectTimeout bounds each connection attempt when the URL sets
// no connect_timeout, so an unreachable server fails the start instead of
// hanging on the kernel's TCP timeout.
const defaultConnectTimeout = 10 * time.Second

// maxPostgresConns caps the store's connections to the server.
const maxPostgresConns = 16

// openPostgres opens the PostgreSQL database at the URL dsn.
func openPostgres(ctx context.Context, dsn string) (_ *Store, err error) {
	defer func() {
		if err != nil {
			err = redactedError{err, passwordsOf(dsn)}
		}
	}()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: parse PostgreSQL URL: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	origin := newOrigin()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = make(map[string]string)
	}
	cfg.RuntimeParams[originSetting] = origin
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(maxPostgresConns)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlstore: connect to PostgreSQL at %s: %w", describeServer(cfg), err)
	}
	s := &Store{db: db, d: postgresDialect, pgcfg: cfg, origin: origin}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// describeServer names the server and database of cfg, without secrets.
func describeServer(cfg *pgx.ConnConfig) string {
	host := cfg.Host
	if !strings.HasPrefix(host, "/") {
		host += ":" + strconv.Itoa(int(cfg.Port))
	}
	return fmt.Sprintf("%s (database %q, user %q)", host, cfg.Database, cfg.User)
}

// passwordsOf returns the secrets in the URL dsn: the password in the
// user part and the password and sslpassword parameters (the URL may
// not parse).
func passwordsOf(dsn string) []string {
	var out []string
	u, err := url.Parse(dsn)
	if err == nil {
		if pw, _ := u.User.Password(); pw != "" {
			out = append(out, pw)
		}
		for _, k := range []string{"password", "sslpassword"} {
			if pw := u.Query().Get(k); pw != "" {
				out = append(out, pw)
			}
		}
		return out
	}
	// A URL that does not parse may still carry one: user:PASSWORD@.
	if _, rest, ok := strings.Cut(dsn, "://"); ok {
		if i := strings.LastIndex(rest, "@"); i >= 0 {
			if _, pw, ok := strings.Cut(rest[:i], ":"); ok && pw != "" {
				out = append(out, pw)
			}
		}
	}
	return out
}

// redactedError is an error whose text has the passwords masked out, in
// case a driver's message echoes the URL.
type redactedError struct {
	err       error
	passwords []string
}

func (e redactedError) Error() string {
	msg := e.err.Error()
	for _, pw := range e.passwords {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		if esc := url.QueryEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
		if esc := url.PathEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
	}
	return msg
}

func (e redactedError) Unwrap() error { return e.err }

// rebindDollar turns ? placeholders into $1, $2, ..., leaving quoted
// strings and identifiers alone.
func rebindDollar(q string) string {
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
