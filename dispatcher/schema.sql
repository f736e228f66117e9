-- Schema version 1, applied in one transaction at start by database.py. Later versions
-- go into files of their own listed in database.MIGRATIONS; this one is never edited.

-- The queue. Producers insert (type, store_id, payload); the defaults fill the rest.
-- `seq` is the rowid, so the engine reads the queue in insertion order through the
-- partial index below, which only ever holds the rows not yet fanned out.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE DEFAULT ('evt_' || lower(hex(randomblob(16)))),
    type       TEXT    NOT NULL,
    store_id   TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    state      TEXT    NOT NULL DEFAULT 'queued'
               CHECK (state IN ('queued', 'dispatched', 'rejected')),
    error      TEXT
);
CREATE INDEX events_queued ON events (seq) WHERE state = 'queued';
CREATE INDEX events_created ON events (created_at);

-- The configured webhooks as the daemon last loaded them; never holds a secret.
CREATE TABLE webhooks (
    name          TEXT PRIMARY KEY,
    url           TEXT NOT NULL,
    events        TEXT NOT NULL,  -- JSON array of event types
    stores        TEXT NOT NULL,  -- JSON array of store ids, "*" for all
    max_in_flight INTEGER NOT NULL,
    timeout_ms    INTEGER NOT NULL,
    signed        INTEGER NOT NULL,  -- 1 when at least one secret signs its messages
    active        INTEGER NOT NULL DEFAULT 1,  -- 0 once removed from the configuration
    circuit_open_until TEXT,  -- set while the circuit breaker keeps the endpoint alone
    updated_at    TEXT NOT NULL
);

-- One row per (event, webhook). `attempts` counts every recorded attempt; `budget_from`
-- is the attempt count when the current retry budget began (0, or the count at the last
-- manual redelivery), so a redelivery gets a fresh budget while numbering goes on.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    event_id         TEXT    NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    webhook          TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'in_flight', 'succeeded', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    budget_from      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    last_error       TEXT,
    last_status_code INTEGER,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    finished_at      TEXT,
    UNIQUE (event_id, webhook)
);
CREATE INDEX deliveries_due ON deliveries (webhook, next_attempt_at) WHERE state = 'pending';
-- Serves status counts, the drain check and the lease sweep (which only ever looks at
-- the in-flight rows). Every index here costs each delivery update; keep them few.
CREATE INDEX deliveries_by_state ON deliveries (state, webhook);

-- One row per HTTP attempt, numbered from 1 per delivery.
CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number           INTEGER NOT NULL,
    started_at       TEXT    NOT NULL,
    duration_ms      REAL    NOT NULL,
    status_code      INTEGER,
    error_kind       TEXT,
    error            TEXT,
    response_excerpt TEXT,
    manual           INTEGER NOT NULL DEFAULT 0,  -- 1 for the first attempt after a redeliver
    UNIQUE (delivery_id, number)
);
CREATE INDEX attempts_started ON attempts (started_at);

-- The event log as the dashboard shows it: one row per delivery.
CREATE VIEW event_log AS
SELECT e.id AS event_id, e.created_at, e.type, e.store_id, d.webhook, d.state, d.attempts,
       d.last_error, d.last_status_code, d.next_attempt_at, d.id AS delivery_id
FROM deliveries AS d
JOIN events AS e ON e.id = d.event_id;

-- Counters that other processes bump to tell the daemon to look again: `deliveries`
-- changes when an operator edits deliveries (redeliver), so the daemon rereads due times.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('deliveries', 0);
