-- The UDP port of a node's peer relay server (wire.Node.PeerRelay), 0 for
-- none: kept so that coordinators sharing the database hand it to the
-- node's peers whichever one the node streams from.
ALTER TABLE nodes ADD COLUMN peer_relay INTEGER NOT NULL DEFAULT 0;
