-- A write to a node's stream state (node_online) says what it is now,
-- so that a listener need not re-read the node: the payload is
-- "ORIGIN online NODE_ID STREAMING" after an insert or update (STREAMING
-- is the origin of the store whose coordinator the node streams from)
-- and "ORIGIN offline NODE_ID" after a delete; ORIGIN is the writer's,
-- as in 0006. Writes to nodes keep the payload "ORIGIN NODE_ID".

CREATE FUNCTION beam_online_changed() RETURNS trigger AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN
		PERFORM pg_notify('beam_nodes:' || current_schema(),
			coalesce(current_setting('beam.origin', true), '') || ' offline ' || OLD.node_id);
	ELSE
		PERFORM pg_notify('beam_nodes:' || current_schema(),
			coalesce(current_setting('beam.origin', true), '') || ' online ' || NEW.node_id || ' ' || NEW.origin);
	END IF;
	RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER node_online_changed ON node_online;
CREATE TRIGGER node_online_changed AFTER INSERT OR UPDATE OR DELETE ON node_online
	FOR EACH ROW EXECUTE FUNCTION beam_online_changed();
