-- Several coordinators on one database (coordinator.NodeFeed). Every
-- write to a node, or to which coordinator it streams from, sends a
-- notification on the channel "beam_nodes:SCHEMA" whose payload is
-- "ORIGIN NODE_ID": ORIGIN is the beam.origin setting of the writing
-- connection (each Store sets its own; "" if unset), so a store can skip
-- its own writes. Notifications go out when the transaction commits, so a
-- listener that re-reads the node sees the write.

CREATE TABLE node_online (
	node_id BIGINT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
	origin  TEXT   NOT NULL,
	since   BIGINT NOT NULL
);

CREATE FUNCTION beam_node_changed() RETURNS trigger AS $$
DECLARE
	changed BIGINT;
BEGIN
	IF TG_TABLE_NAME = 'nodes' THEN
		IF TG_OP = 'DELETE' THEN changed := OLD.id; ELSE changed := NEW.id; END IF;
	ELSE
		IF TG_OP = 'DELETE' THEN changed := OLD.node_id; ELSE changed := NEW.node_id; END IF;
	END IF;
	PERFORM pg_notify('beam_nodes:' || current_schema(),
		coalesce(current_setting('beam.origin', true), '') || ' ' || changed);
	RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER nodes_changed AFTER INSERT OR UPDATE OR DELETE ON nodes
	FOR EACH ROW EXECUTE FUNCTION beam_node_changed();
CREATE TRIGGER node_online_changed AFTER INSERT OR UPDATE OR DELETE ON node_online
	FOR EACH ROW EXECUTE FUNCTION beam_node_changed();
