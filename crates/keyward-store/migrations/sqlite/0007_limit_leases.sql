-- Limits shared by several nodes (SPEC §8, docs/design.md "Limits across
-- nodes"). One row per key, limit and window: how many of the window's
-- requests the nodes have leased (`claimed`, never above the limit while
-- the nodes agree on how many they are), how many nodes hold a lease there
-- (`nodes`), and what the last change granted (`granted`, read back by the
-- node that asked). Rows are kept a minute past their window's end.
CREATE TABLE limit_leases (
    key_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    win BIGINT NOT NULL,
    claimed BIGINT NOT NULL DEFAULT 0,
    nodes BIGINT NOT NULL DEFAULT 0,
    granted BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, limit_name, win)
);
CREATE INDEX limit_leases_expires ON limit_leases (expires_at);

-- The nodes sharing limits, each seen at its last exchange; a node counts
-- as present until `seen_at + alive_ms` (its own `--max-staleness` and a
-- margin: as long as it may still be deciding on its own).
CREATE TABLE limit_nodes (
    node TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL,
    alive_ms BIGINT NOT NULL
);
