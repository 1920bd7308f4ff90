-- Which edges a coordinator sent which version of a route (see
-- coordinator.EdgeAcks): the coordinator where a route was exposed waits
-- for these records of the edges streaming from the others. version is
-- the route row's xmin when it was read; a later write of the route makes
-- a new version, and the record is replaced.
CREATE TABLE edge_acks (
	route_id BIGINT NOT NULL REFERENCES routes(id) ON DELETE CASCADE,
	edge_id  BIGINT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	version  TEXT   NOT NULL,
	PRIMARY KEY (route_id, edge_id)
);
