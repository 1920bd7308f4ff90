-- Where the serving node forwards an http route: another address it
-- reaches, or its app over TLS; empty means its own 127.0.0.1:port.
ALTER TABLE routes ADD COLUMN upstream TEXT NOT NULL DEFAULT '';
