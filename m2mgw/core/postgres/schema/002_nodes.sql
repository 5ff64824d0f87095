-- m2mgw registry on PostgreSQL, schema version 2: what only several gateway nodes on
-- one database need (issue #13); SQLite has no counterpart.

-- The live nodes (D-362). A node's lease is this one row: renewing it renews the
-- ownership of every terminal it holds in one small UPDATE. A row whose expires_at
-- has passed is a dead node; deleting it releases all its terminals at once.
-- Times are the database's clock, the one clock all nodes share.
CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Which node holds each terminal's live session: the node it last logged in on. A
-- login elsewhere takes the row over; epoch grows with every claim (a fencing token:
-- a node can tell that its claim was superseded) and previous_node is the node it was
-- taken from, so the taker can tell that node to drop the session.
CREATE SEQUENCE terminal_owner_epochs;
CREATE TABLE terminal_owners (
    serial TEXT PRIMARY KEY,
    node TEXT NOT NULL REFERENCES nodes(node) ON DELETE CASCADE,
    epoch BIGINT NOT NULL,
    previous_node TEXT,
    claimed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX terminal_owners_node ON terminal_owners (node);

-- The node delivering a notification, until when (D-365): claimed with SELECT ... FOR
-- UPDATE SKIP LOCKED, so no two nodes ever offer the same notifyId at once.
ALTER TABLE app_notifications ADD COLUMN claimed_by TEXT;
ALTER TABLE app_notifications ADD COLUMN claimed_until TIMESTAMPTZ;
CREATE INDEX app_notifications_claimed ON app_notifications (claimed_by)
    WHERE claimed_by IS NOT NULL;
