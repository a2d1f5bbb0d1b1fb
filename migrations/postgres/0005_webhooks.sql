-- Webhook endpoints and their outbox (see the SQLite migration 0009). On PostgreSQL each batch
-- of every instance writes its delivery rows with one INSERT … SELECT before it commits, under
-- the `head` lock; `head.webhooks` counts the enabled endpoints so batches skip it when there
-- are none. Deliveries are claimed with `FOR UPDATE SKIP LOCKED` and leased (`lease_until`),
-- so several instances share them and a dead instance's claims expire.
ALTER TABLE head ADD COLUMN webhooks BIGINT NOT NULL DEFAULT 0;

CREATE TABLE webhook_endpoints (
    id              TEXT COLLATE "C" PRIMARY KEY,
    url             TEXT NOT NULL,
    events          TEXT,
    session_id      TEXT COLLATE "C",
    directory       TEXT COLLATE "C",
    description     TEXT,
    ordered         BOOLEAN NOT NULL DEFAULT false,
    enabled         BOOLEAN NOT NULL DEFAULT true,
    disabled_reason TEXT,
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  BIGINT,
    circuit         TEXT NOT NULL DEFAULT '{}',
    -- Orders circuit writes: an older state never overwrites a newer one.
    circuit_seq BIGINT NOT NULL DEFAULT 0,
    failing_since   BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- status: 0 pending, 1 delivered, 2 failed.
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    endpoint_id     TEXT COLLATE "C" NOT NULL,
    event_seq       BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    status          BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    lease_until     BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 0;
CREATE INDEX webhook_deliveries_pending_seq ON webhook_deliveries (endpoint_id, event_seq)
    WHERE status = 0;
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_min_seq ON webhook_deliveries (event_seq) WHERE status = 0;
CREATE INDEX webhook_deliveries_delivered ON webhook_deliveries (delivered_at) WHERE status = 1;
