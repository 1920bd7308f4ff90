-- Public edge: edge nodes and their auth keys, published routes, and
-- custom domains with their proof of control.

ALTER TABLE auth_keys ADD COLUMN edge INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN edge INTEGER NOT NULL DEFAULT 0;

-- A route lives as long as its node: deleting the node deletes its routes.
CREATE TABLE routes (
	id            INTEGER PRIMARY KEY,
	node_id       INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	network_id    INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
	host          TEXT    NOT NULL,
	proto         TEXT    NOT NULL,
	public_port   INTEGER NOT NULL DEFAULT 0,
	port          INTEGER NOT NULL,
	custom_domain INTEGER NOT NULL DEFAULT 0,
	options       TEXT    NOT NULL DEFAULT '{}',
	created_at    BIGINT  NOT NULL,
	UNIQUE (node_id, host, proto)
);
CREATE INDEX routes_host ON routes (host);

-- A network's claim on a custom domain: the token it must publish, and
-- when it proved control (0: not yet).
CREATE TABLE domains (
	network_id  INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
	domain      TEXT    NOT NULL,
	token       TEXT    NOT NULL,
	verified_at BIGINT  NOT NULL DEFAULT 0,
	created_at  BIGINT  NOT NULL,
	PRIMARY KEY (network_id, domain)
);
