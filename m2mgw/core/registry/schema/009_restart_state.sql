-- m2mgw registry, schema version 9: state a restart used to lose (D-341, D-342).

-- The concatenation reference of the newest WMMP message queued to each MSISDN
-- (spec 10.4.3, D-82), written with that message's outbox row: a restart continues
-- each 8-bit counter after it, so no reference still in flight is given again.
CREATE TABLE sms_references (
    msisdn TEXT PRIMARY KEY,       -- normalised (PD-30)
    reference INTEGER NOT NULL     -- 0-255
) WITHOUT ROWID;

-- Before, a message got its reference at its first segment, in queue order, from a
-- counter that ran 1, 2, ... 255, 0, 1 per number: the pending ones not begun are
-- numbered now in queue order, after the newest reference their number was given.
CREATE TEMP TABLE legacy_references AS
    WITH newest AS (
        SELECT msisdn, reference FROM (
            SELECT msisdn, reference,
                   ROW_NUMBER() OVER (PARTITION BY msisdn ORDER BY id DESC) AS n
            FROM sms_outbox WHERE reference IS NOT NULL)
        WHERE n = 1)
    SELECT o.id,
           (COALESCE(newest.reference, 0)
            + ROW_NUMBER() OVER (PARTITION BY o.msisdn ORDER BY o.id)) % 256 AS reference
    FROM sms_outbox o LEFT JOIN newest ON newest.msisdn = o.msisdn
    WHERE o.state = 'pending' AND o.reference IS NULL;
UPDATE sms_outbox
    SET reference = (SELECT l.reference FROM legacy_references l WHERE l.id = sms_outbox.id)
    WHERE id IN (SELECT id FROM legacy_references);
DROP TABLE legacy_references;
INSERT INTO sms_references (msisdn, reference)
    SELECT msisdn, reference FROM (
        SELECT msisdn, reference,
               ROW_NUMBER() OVER (PARTITION BY msisdn ORDER BY id DESC) AS n
        FROM sms_outbox WHERE reference IS NOT NULL)
    WHERE n = 1;

-- When the last SMS wake-up went to the terminal (spec 9.6, D-95): at most one per
-- [protocol] wakeup_min_interval, across restarts too.
ALTER TABLE terminals ADD COLUMN wakeup_at REAL;
