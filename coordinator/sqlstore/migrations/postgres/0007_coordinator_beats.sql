-- Heartbeats of the coordinators sharing the database (see
-- coordinator.NodeFeed.Heartbeat): each store beats every few seconds
-- under its origin; the stream states (node_online) of an origin that
-- stopped beating are deleted by the next store that beats, so the
-- nodes of a coordinator that died are not shown online forever. Times
-- are the database's clock, in Unix nanoseconds.

CREATE TABLE coordinator_beats (
	origin TEXT   PRIMARY KEY,
	beat   BIGINT NOT NULL
);
