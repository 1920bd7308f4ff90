-- The timestamp (the node's own clock, Unix nanoseconds) of the sealed
-- request that registered the node, 0 if unknown: every coordinator on
-- the database, and one that restarted, refuses the key's requests
-- stamped before it, which were refused unrecorded while the key was
-- unknown and would otherwise pass as new once it registered.
ALTER TABLE nodes ADD COLUMN reg_stamp BIGINT NOT NULL DEFAULT 0;
