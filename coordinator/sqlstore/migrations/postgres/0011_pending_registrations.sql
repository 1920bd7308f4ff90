-- Registrations waiting for approval, shared by the coordinators on the
-- database (coordinator.ApprovalStore): a code any of them can approve,
-- whichever one the node waits on. approval is the JSON of the
-- coordinator.Approval, '' while the node waits; no auth key is kept
-- here. A write notifies as in 0008 with the kind "pending" and the code.
CREATE TABLE pending_registrations (
	code       TEXT   PRIMARY KEY,
	node_key   TEXT   NOT NULL UNIQUE,
	hostname   TEXT   NOT NULL DEFAULT '',
	os         TEXT   NOT NULL DEFAULT '',
	source     TEXT   NOT NULL DEFAULT '',
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	approval   TEXT   NOT NULL DEFAULT ''
);

CREATE TRIGGER pending_registrations_changed AFTER INSERT OR UPDATE OR DELETE ON pending_registrations
	FOR EACH ROW EXECUTE FUNCTION beam_row_changed('pending', 'code');
