-- m2mgw registry on PostgreSQL, schema version 3: what the PostgreSQL registry's store
-- needs beyond SQLite's schema (D-380, D-381).

-- Sealed secrets are bytes (the vault's PREFIX || nonce || ciphertext || tag): SQLite
-- keeps them in its TEXT columns as BLOBs since its migration 008, PostgreSQL needs
-- BYTEA. Secrets are always sealed here, so no plaintext text value is converted.
ALTER TABLE terminals
    ALTER COLUMN "current" TYPE BYTEA USING convert_to("current", 'UTF8'),
    ALTER COLUMN pending TYPE BYTEA USING convert_to(pending, 'UTF8'),
    ALTER COLUMN session_key TYPE BYTEA USING convert_to(session_key, 'UTF8');
ALTER TABLE applications
    ALTER COLUMN password TYPE BYTEA USING convert_to(password, 'UTF8'),
    ALTER COLUMN base_key TYPE BYTEA USING convert_to(base_key, 'UTF8'),
    ALTER COLUMN next_base_key TYPE BYTEA USING convert_to(next_base_key, 'UTF8');

-- The ids the registry hands out itself (terminals, requests, SMS, notifications,
-- application messages) come in blocks: nextval returns the first id of a block of
-- 1000 that the node then numbers rows from in memory. An insert that leaves the id to
-- its default takes one block for its one row, so it never collides with a block.
ALTER TABLE terminals ALTER COLUMN id SET INCREMENT BY 1000;
ALTER TABLE requests ALTER COLUMN id SET INCREMENT BY 1000;
ALTER TABLE sms_outbox ALTER COLUMN id SET INCREMENT BY 1000;
ALTER TABLE app_notifications ALTER COLUMN id SET INCREMENT BY 1000;
ALTER TABLE app_messages ALTER COLUMN id SET INCREMENT BY 1000;
