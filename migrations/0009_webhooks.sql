-- Webhook endpoints and their outbox: one delivery row per (endpoint, event), written in the
-- transaction that writes the event. The event body is not copied: a delivery names the event
-- by seq, and the event log keeps every event a pending delivery still needs.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT,
    session_id TEXT,
    directory TEXT,
    description TEXT,
    ordered INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until INTEGER,
    circuit TEXT NOT NULL DEFAULT '{}',
    -- Orders circuit writes: an older state never overwrites a newer one.
    circuit_seq BIGINT NOT NULL DEFAULT 0,
    failing_since INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- status: 0 pending, 1 delivered, 2 failed.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_status INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 0;
CREATE INDEX webhook_deliveries_pending_seq ON webhook_deliveries (endpoint_id, event_seq)
    WHERE status = 0;
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_min_seq ON webhook_deliveries (event_seq) WHERE status = 0;
CREATE INDEX webhook_deliveries_delivered ON webhook_deliveries (delivered_at) WHERE status = 1;
