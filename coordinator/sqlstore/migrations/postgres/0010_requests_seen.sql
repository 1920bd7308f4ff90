-- Sealed requests seen by any coordinator sharing the database
-- (coordinator.ReplayStore): the SHA-256 of the sealed box and until
-- when (Unix nanoseconds) it could be replayed. The primary key decides
-- which coordinator saw a request first; rows past their time are
-- deleted by a periodic sweep.
CREATE UNLOGGED TABLE requests_seen (
	hash  BYTEA  PRIMARY KEY,
	until BIGINT NOT NULL
);
CREATE INDEX requests_seen_until ON requests_seen (until);
