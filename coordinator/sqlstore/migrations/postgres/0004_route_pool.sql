-- Public names have owners: a route shares its host with routes of other
-- nodes only when each of them was published as a pool member.
ALTER TABLE routes ADD COLUMN pool INTEGER NOT NULL DEFAULT 0;
