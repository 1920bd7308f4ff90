-- Several coordinators on one database, beyond nodes: a write to a
-- setting (the policy, user groups, DNS settings), an edge route or a
-- custom domain claim notifies on the node feed's channel
-- "beam_nodes:SCHEMA" with the payload "ORIGIN KIND KEY": KIND is
-- "setting" (KEY is the setting's name), "route" (KEY is the route's ID)
-- or "domain" (KEY is the domain). ORIGIN is as in 0006, so a store skips
-- its own writes; a listener re-reads what KEY names. One channel keeps
-- the order of writes: a route's notification comes after its node's.

CREATE FUNCTION beam_row_changed() RETURNS trigger AS $$
DECLARE
	k TEXT;
BEGIN
	IF TG_OP = 'DELETE' THEN
		k := to_jsonb(OLD) ->> TG_ARGV[1];
	ELSE
		k := to_jsonb(NEW) ->> TG_ARGV[1];
	END IF;
	PERFORM pg_notify('beam_nodes:' || current_schema(),
		coalesce(current_setting('beam.origin', true), '') || ' ' || TG_ARGV[0] || ' ' || k);
	RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER settings_changed AFTER INSERT OR UPDATE OR DELETE ON settings
	FOR EACH ROW EXECUTE FUNCTION beam_row_changed('setting', 'name');
CREATE TRIGGER routes_changed AFTER INSERT OR UPDATE OR DELETE ON routes
	FOR EACH ROW EXECUTE FUNCTION beam_row_changed('route', 'id');
CREATE TRIGGER domains_changed AFTER INSERT OR UPDATE OR DELETE ON domains
	FOR EACH ROW EXECUTE FUNCTION beam_row_changed('domain', 'domain');
