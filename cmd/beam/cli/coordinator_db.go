package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator/sqlstore"
)

// dbUsage describes --db of beam coordinator and beam server.
const dbUsage = `PostgreSQL URL of the coordinator's database, postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=... (the database must exist; the password may instead come from PGPASSWORD or ~/.pgpass); empty: SQLite, coordinator.db in the data directory`

// openCoordinatorStore opens the coordinator's database with opts:
// PostgreSQL at db, or SQLite in dataDir when db is empty.
func openCoordinatorStore(ctx context.Context, dataDir, db string, opts sqlstore.Options) (*sqlstore.Store, error) {
	if db != "" {
		s, err := sqlstore.OpenWith(ctx, db, opts)
		if err != nil {
			return nil, fmt.Errorf("open database --db %s: %w", configs.RedactDB(db), err)
		}
		return s, nil
	}
	dbPath := filepath.Join(dataDir, "coordinator.db")
	// Create the database 0600 before SQLite does (it would use 0644);
	// SQLite gives its -wal and -shm files the same mode.
	fh, err := os.OpenFile(dbPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create database: %w", err)
	}
	fh.Close()
	return sqlstore.Open(ctx, dbPath)
}

// describeDB names the coordinator's database for logs and messages,
// without a password.
func describeDB(dataDir, db string) string {
	if db != "" {
		return configs.RedactDB(db)
	}
	return filepath.Join(dataDir, "coordinator.db")
}
