-- keyward schema, PostgreSQL: the SQLite schema with native types. Ids are
-- text, times are unix milliseconds (BIGINT), digests are 32-byte BYTEA.
-- Only digests of keys are ever stored.

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    is_default  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL
);
-- At most one default organization.
CREATE UNIQUE INDEX orgs_one_default ON orgs (is_default) WHERE is_default;

CREATE TABLE users (
    id                    TEXT PRIMARY KEY,
    org_id                TEXT NOT NULL REFERENCES orgs (id),
    email                 TEXT NOT NULL,
    name                  TEXT NOT NULL,
    password_hash         TEXT,
    must_change_password  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at            BIGINT NOT NULL,
    disabled_at           BIGINT,
    UNIQUE (org_id, email)
);

CREATE TABLE groups (
    org_id      TEXT NOT NULL REFERENCES orgs (id),
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    builtin     BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (org_id, id)
);

CREATE TABLE group_members (
    org_id      TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id),
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (org_id, group_id, user_id),
    FOREIGN KEY (org_id, group_id) REFERENCES groups (org_id, id)
);

CREATE TABLE keys (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs (id),
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    environment     TEXT NOT NULL,
    digest          BYTEA NOT NULL UNIQUE,
    display_prefix  TEXT NOT NULL,
    legacy          BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL,
    expires_at      BIGINT,
    revoked_at      BIGINT,
    rolled_to       TEXT,
    last_used_at    BIGINT,
    -- Canonical grants text (see the SQLite migration 0002): written once with
    -- the key, never updated; lets a node load its snapshot with one scan.
    grants          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX keys_by_org ON keys (org_id, created_at DESC, id DESC);

-- Grants as the creator chose them; `pos` keeps the creator's order.
CREATE TABLE key_grants (
    key_id  TEXT NOT NULL REFERENCES keys (id),
    kind    TEXT NOT NULL CHECK (kind IN ('scope', 'permission_set')),
    name    TEXT NOT NULL,
    pos     INTEGER NOT NULL,
    PRIMARY KEY (key_id, kind, name)
);
CREATE INDEX key_grants_by_name ON key_grants (kind, name);

-- Append-only, hash-chained audit log (see keyward_core::audit).
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    org_id      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    key_id      TEXT,
    method      TEXT,
    path        TEXT,
    status      BIGINT,
    required    TEXT NOT NULL,
    client      TEXT,
    request_id  TEXT,
    details     TEXT NOT NULL,
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL
);
CREATE INDEX audit_by_org ON audit_log (org_id, seq DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- The chain head: one row, locked (FOR UPDATE) by every append, so links
-- never fork across nodes.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

-- Versioned change log. The version comes from a single counter row bumped
-- inside the writing transaction (its row lock serialises writers), so commit
-- order equals version order; sequences would commit out of order.
CREATE TABLE change_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO change_head (id, version) VALUES (1, 0);

CREATE TABLE changes (
    version  BIGINT PRIMARY KEY,
    org_id   TEXT NOT NULL,
    key_id   TEXT,
    kind     TEXT NOT NULL,
    at       BIGINT NOT NULL
);
