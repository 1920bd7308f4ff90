-- Beam coordinator schema, SQLite dialect.
-- Times are BIGINT Unix nanoseconds, 0 meaning "none"; booleans are INTEGER 0/1;
-- lists are JSON text. The PostgreSQL dialect keeps the same columns.

CREATE TABLE networks (
	id         INTEGER PRIMARY KEY,
	name       TEXT    NOT NULL UNIQUE,
	domain     TEXT    NOT NULL,
	created_at BIGINT  NOT NULL
);

CREATE TABLE auth_keys (
	id         INTEGER PRIMARY KEY,
	network_id INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
	prefix     TEXT    NOT NULL UNIQUE,
	hash       BLOB    NOT NULL UNIQUE,
	reusable   INTEGER NOT NULL DEFAULT 0,
	ephemeral  INTEGER NOT NULL DEFAULT 0,
	expires_at BIGINT  NOT NULL DEFAULT 0,
	tags       TEXT    NOT NULL DEFAULT '[]',
	user_name  TEXT    NOT NULL DEFAULT '',
	use_count  INTEGER NOT NULL DEFAULT 0,
	created_at BIGINT  NOT NULL
);

CREATE TABLE nodes (
	id          INTEGER PRIMARY KEY,
	network_id  INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
	node_key    TEXT    NOT NULL UNIQUE,
	disco_key   TEXT    NOT NULL DEFAULT '',
	name        TEXT    NOT NULL,
	hostname    TEXT    NOT NULL DEFAULT '',
	os          TEXT    NOT NULL DEFAULT '',
	ipv4        TEXT    NOT NULL UNIQUE,
	ipv6        TEXT    NOT NULL UNIQUE,
	endpoints   TEXT    NOT NULL DEFAULT '[]',
	home_derp   INTEGER NOT NULL DEFAULT 0,
	last_seen   BIGINT  NOT NULL DEFAULT 0,
	key_expiry  BIGINT  NOT NULL DEFAULT 0,
	user_name   TEXT    NOT NULL DEFAULT '',
	tags        TEXT    NOT NULL DEFAULT '[]',
	ephemeral   INTEGER NOT NULL DEFAULT 0,
	auth_key_id INTEGER REFERENCES auth_keys(id) ON DELETE SET NULL,
	created_at  BIGINT  NOT NULL,
	UNIQUE (network_id, name)
);

CREATE TABLE settings (
	name  TEXT PRIMARY KEY,
	value BLOB NOT NULL
);
