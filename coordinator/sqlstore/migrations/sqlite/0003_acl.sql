-- Access control: users, the audit log, and per-key node key expiry.

CREATE TABLE users (
	id         INTEGER PRIMARY KEY,
	name       TEXT    NOT NULL UNIQUE,
	created_at BIGINT  NOT NULL
);

CREATE TABLE audit_log (
	id     INTEGER PRIMARY KEY,
	at     BIGINT  NOT NULL,
	actor  TEXT    NOT NULL,
	action TEXT    NOT NULL,
	target TEXT    NOT NULL DEFAULT '',
	detail TEXT    NOT NULL DEFAULT ''
);

-- node_key_expiry is a duration in nanoseconds: 0 the default, -1 never.
ALTER TABLE auth_keys ADD COLUMN node_key_expiry BIGINT NOT NULL DEFAULT 0;
