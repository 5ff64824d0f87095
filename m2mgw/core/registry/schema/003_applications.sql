-- m2mgw registry, schema version 3: M2M applications (application spec 7.1, 2.6), their
-- durable notification outbox (4.7, 6.6) and the msgId of every application request
-- that reaches a terminal (2.7). Secrets are stored recoverably, like the terminals'
-- (the SOAP and long-connection digests need the plaintext password).

CREATE TABLE applications (
    app_id TEXT PRIMARY KEY,
    password TEXT NOT NULL,
    ec_code TEXT NOT NULL UNIQUE,
    cipher TEXT NOT NULL,          -- 'legacy' | 'aes'
    base_key TEXT NOT NULL,
    base_key_expiry INTEGER,       -- UNIX time, NULL = never
    next_base_key TEXT,            -- scheduled rotation (7.2)
    next_base_key_from INTEGER,
    next_base_key_expiry INTEGER,
    callback_url TEXT,             -- M2MAppNotifyService endpoint, NULL = none
    terminals TEXT NOT NULL,       -- JSON list of bound serials
    permissions TEXT NOT NULL,     -- JSON list: 'connectivity', 'remote_control_all'
    require_session INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    last_session_timestamp INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;

-- Undelivered notifications, FIFO per application; id is the notifyId. Deleted once
-- delivered or acknowledged.
CREATE TABLE app_notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL,
    kind TEXT NOT NULL,            -- DeliverData, NotifyResult, ...
    body BLOB NOT NULL,            -- the notification element as XML
    state TEXT NOT NULL,           -- 'pending' | 'kept'
    attempts INTEGER NOT NULL,
    next_attempt REAL NOT NULL,
    leased_until REAL,             -- FetchMessages lease
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX app_notifications_app ON app_notifications (app_id, id);

-- Application requests to terminals; id is the msgId, requests.msg_id its text.
CREATE TABLE app_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    serial TEXT NOT NULL,
    request_id INTEGER,
    biz_seq TEXT,
    need_ack INTEGER NOT NULL,
    state TEXT NOT NULL,           -- QUEUED, SENT, ACKED, APPLIED, FAILED, EXPIRED
    op_result INTEGER,
    terminal_result INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX app_messages_biz_seq ON app_messages (app_id, biz_seq) WHERE biz_seq IS NOT NULL;
