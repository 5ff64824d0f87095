-- m2mgw registry, schema version 1: terminals, configuration, requests, files,
-- alarms, statistics, message log and counters.
-- Credentials are stored in recoverable form because digests need the plaintext
-- passwords (spec 6.3.2).

CREATE TABLE terminals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    imei TEXT NOT NULL UNIQUE,
    imsi TEXT,
    msisdn TEXT UNIQUE,
    serial TEXT UNIQUE,
    state TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    cipher TEXT NOT NULL,
    require_encryption INTEGER NOT NULL,
    sms_terminal_port INTEGER NOT NULL,
    sms_wakeup INTEGER NOT NULL,
    allowed_imsis TEXT,            -- JSON list, NULL = any IMSI
    "current" TEXT,                -- JSON CredentialSet
    pending TEXT,                  -- JSON CredentialSet
    session_timestamp INTEGER,
    last_session_timestamp INTEGER NOT NULL,
    session_key TEXT,
    session_key_expiry INTEGER,
    protocol_version INTEGER,
    bearer TEXT,
    address TEXT,
    last_seen REAL,
    connect_mode INTEGER,
    heartbeat_interval INTEGER,
    sync_tags TEXT,                -- JSON list of tags
    software_version TEXT,
    seq_counter INTEGER NOT NULL,
    trans_counter INTEGER NOT NULL,
    default_app TEXT,
    apps TEXT NOT NULL,            -- JSON list of application ids
    config_unverified INTEGER NOT NULL,
    auth_failures INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- Last known TLV values per terminal (spec 9.1 "configuration").
CREATE TABLE terminal_config (
    terminal_id INTEGER NOT NULL REFERENCES terminals(id) ON DELETE CASCADE,
    tag INTEGER NOT NULL,
    value BLOB NOT NULL,
    source TEXT NOT NULL,          -- 'reported' | 'set'
    updated_at REAL NOT NULL,
    PRIMARY KEY (terminal_id, tag)
) WITHOUT ROWID;

-- Platform-initiated requests: the durable queue and its history.
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL,
    command INTEGER NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    origin TEXT NOT NULL,
    msg_id TEXT,
    sequence_id INTEGER,
    attempts INTEGER NOT NULL,
    result INTEGER,
    outcome TEXT,
    answer_body BLOB,
    updated_at REAL NOT NULL
);
CREATE INDEX requests_serial ON requests (serial, id);
CREATE INDEX requests_active ON requests (state) WHERE state IN ('queued', 'sent');

-- DOWNLOAD_INFO file transactions (spec 4.14).
CREATE TABLE file_transactions (
    trans_id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    crc16 INTEGER NOT NULL,
    crc32 INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL
);

-- Alarm reports (spec 9.7): full history, and the state per (serial, code).
CREATE TABLE alarm_history (
    id INTEGER PRIMARY KEY,
    serial TEXT,
    msisdn TEXT,
    code INTEGER NOT NULL,
    type INTEGER NOT NULL,
    status INTEGER NOT NULL,
    cleared_code TEXT,
    time REAL NOT NULL
);
CREATE INDEX alarm_history_serial ON alarm_history (serial, id);

CREATE TABLE alarm_state (
    serial TEXT NOT NULL,
    msisdn TEXT,
    code INTEGER NOT NULL,
    type INTEGER NOT NULL,
    status INTEGER NOT NULL,
    cleared_code TEXT,
    time REAL NOT NULL,
    PRIMARY KEY (serial, code)
) WITHOUT ROWID;

CREATE TABLE statistics (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL,
    time REAL NOT NULL,
    tag INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX statistics_serial ON statistics (serial, id);

-- Message log (GB/Z 5.3.3 requires session events to be recorded).
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    serial TEXT,
    direction TEXT NOT NULL,
    bearer TEXT,
    command_id INTEGER,
    sequence_id INTEGER,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX messages_serial ON messages (serial, id);

-- Persisted monotonic counters: 'serial' (allocate_serial), 'trans_id' (allocate_trans_id).
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
