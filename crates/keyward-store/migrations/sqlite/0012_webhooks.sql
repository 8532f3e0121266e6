-- Webhook endpoints (SPEC §10). `events` keeps the list as given; the
-- subscriptions table is what the outbox fan-out reads.
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs (id),
    url             TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    events          TEXT NOT NULL,
    secret          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    disabled_at     INTEGER,
    -- Consecutive failed attempts, and when the first of them failed.
    failures        INTEGER NOT NULL DEFAULT 0,
    failing_since   INTEGER,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    -- The node delivering to this endpoint, until `lease_until`.
    lease_holder    TEXT,
    lease_until     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_by_org ON webhooks (org_id, created_at);

CREATE TABLE webhook_subscriptions (
    org_id      TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    webhook_id  TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    PRIMARY KEY (org_id, event_type, webhook_id)
);
CREATE INDEX webhook_subscriptions_by_webhook ON webhook_subscriptions (webhook_id);

-- The transactional outbox: one row per event and subscribed endpoint,
-- written in the transaction that appends the event's audit record.
CREATE TABLE webhook_outbox (
    webhook_id   TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    audit_seq    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER,
    PRIMARY KEY (webhook_id, audit_seq)
);
CREATE INDEX webhook_outbox_pending ON webhook_outbox (webhook_id, audit_seq)
    WHERE delivered_at IS NULL;
CREATE INDEX webhook_outbox_delivered ON webhook_outbox (delivered_at)
    WHERE delivered_at IS NOT NULL;

-- Every attempt, for the delivery history.
CREATE TABLE webhook_attempts (
    webhook_id  TEXT NOT NULL,
    audit_seq   INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    node        TEXT NOT NULL,
    status      INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, audit_seq, attempt),
    FOREIGN KEY (webhook_id, audit_seq) REFERENCES webhook_outbox (webhook_id, audit_seq)
        ON DELETE CASCADE
);
