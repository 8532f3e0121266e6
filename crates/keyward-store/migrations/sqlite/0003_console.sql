-- Console sign-in: sessions shared by every node, failed attempts for
-- throttling, and one-use form nonces (a created key is shown once, even if
-- the browser resubmits the form).

CREATE TABLE sessions (
    token_hash    BLOB PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs (id),
    user_id       TEXT NOT NULL REFERENCES users (id),
    csrf          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE sign_in_failures (
    at      INTEGER NOT NULL,
    org_id  TEXT NOT NULL,
    email   TEXT NOT NULL,
    client  TEXT NOT NULL
);
CREATE INDEX sign_in_failures_by_email ON sign_in_failures (org_id, email, at);
CREATE INDEX sign_in_failures_by_client ON sign_in_failures (client, at);

CREATE TABLE form_nonces (
    nonce       TEXT PRIMARY KEY,
    token_hash  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER
);
