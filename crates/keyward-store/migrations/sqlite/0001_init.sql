-- keyward schema, SQLite. Ids are text, times are unix milliseconds, digests
-- are 32-byte blobs. Only digests of keys are ever stored.

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    is_default  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
-- At most one default organization.
CREATE UNIQUE INDEX orgs_one_default ON orgs (is_default) WHERE is_default = 1;

CREATE TABLE users (
    id                    TEXT PRIMARY KEY,
    org_id                TEXT NOT NULL REFERENCES orgs (id),
    email                 TEXT NOT NULL,
    name                  TEXT NOT NULL,
    password_hash         TEXT,
    must_change_password  INTEGER NOT NULL DEFAULT 0,
    created_at            INTEGER NOT NULL,
    disabled_at           INTEGER,
    UNIQUE (org_id, email)
);

-- Authorization groups: one per permission set of the catalog, plus
-- `administrators`. Rows exist so memberships have something to point at.
CREATE TABLE groups (
    org_id      TEXT NOT NULL REFERENCES orgs (id),
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    builtin     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, id)
);

CREATE TABLE group_members (
    org_id      TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id),
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (org_id, group_id, user_id),
    FOREIGN KEY (org_id, group_id) REFERENCES groups (org_id, id)
);

CREATE TABLE keys (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs (id),
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    environment     TEXT NOT NULL,
    digest          BLOB NOT NULL UNIQUE,
    display_prefix  TEXT NOT NULL,
    legacy          INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    expires_at      INTEGER,
    revoked_at      INTEGER,
    rolled_to       TEXT,
    last_used_at    INTEGER
);
CREATE INDEX keys_by_org ON keys (org_id, created_at DESC, id DESC);

-- Grants as the creator chose them: scope names and permission set ids.
CREATE TABLE key_grants (
    key_id  TEXT NOT NULL REFERENCES keys (id),
    kind    TEXT NOT NULL CHECK (kind IN ('scope', 'permission_set')),
    name    TEXT NOT NULL,
    PRIMARY KEY (key_id, kind, name)
);
CREATE INDEX key_grants_by_name ON key_grants (kind, name);

-- Append-only, hash-chained audit log (see keyward_core::audit).
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    org_id      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    key_id      TEXT,
    method      TEXT,
    path        TEXT,
    status      INTEGER,
    required    TEXT NOT NULL,
    client      TEXT,
    request_id  TEXT,
    details     TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE INDEX audit_by_org ON audit_log (org_id, seq DESC);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;

-- The chain head: one row, locked by every append, so links never fork.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

-- Versioned change log polled by running servers. The version comes from a
-- single counter row bumped inside the writing transaction, so commit order
-- equals version order.
CREATE TABLE change_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
);
INSERT INTO change_head (id, version) VALUES (1, 0);

CREATE TABLE changes (
    version  INTEGER PRIMARY KEY,
    org_id   TEXT NOT NULL,
    key_id   TEXT,
    kind     TEXT NOT NULL,
    at       INTEGER NOT NULL
);
