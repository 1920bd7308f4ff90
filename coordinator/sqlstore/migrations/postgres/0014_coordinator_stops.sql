-- A coordinator that shuts down cleanly (coordinator.NodeFeed.StopBeating)
-- asks its nodes to come back within a grace, and records until when:
-- its stream states (node_online) then count as online for every
-- coordinator until stopped_until, and are deleted at the first
-- heartbeat after it (the nodes that did not stream again are offline).
-- NULL while the coordinator runs. The database's clock, in Unix
-- nanoseconds, as beat.

ALTER TABLE coordinator_beats ADD COLUMN stopped_until BIGINT;
