-- m2mgw registry, schema version 2: the durable SMS outbox (spec 10.4).
-- One row per WMMP message to a terminal's MSISDN. It is split into SMS only when
-- sent; the concatenation reference and the segments already confirmed by the modem
-- (+CMGS) are kept, so a retry after a modem fault or a restart resends only the
-- remaining segments under the same reference.

CREATE TABLE sms_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msisdn TEXT NOT NULL,          -- normalised (PD-30)
    port INTEGER NOT NULL,         -- destination port (sms_terminal_port)
    message BLOB NOT NULL,         -- the complete WMMP message
    state TEXT NOT NULL,           -- 'pending' | 'sent' | 'failed'
    reference INTEGER,             -- concatenation reference, once the first segment left
    parts_sent INTEGER NOT NULL,   -- segments confirmed by the modem
    attempts INTEGER NOT NULL,     -- failed send attempts
    uncertain INTEGER NOT NULL,    -- attempts whose PDU may have gone out anyway
    error TEXT,                    -- the last failure
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX sms_outbox_pending ON sms_outbox (id) WHERE state = 'pending';
