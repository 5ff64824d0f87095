-- The registry's identity: a random instance id created once, when this migration
-- runs, so that tools can tell whether a gateway's admin API serves this very
-- database (a copy keeps the id but not the path; see D-171).
CREATE TABLE registry_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO registry_meta (name, value) VALUES ('instance_id', lower(hex(randomblob(16))));
