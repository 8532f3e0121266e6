-- What each key did (SPEC §9): requests per key, hour, route and outcome,
-- added up from every node's batched flushes. `route` is the catalog's
-- template ('' when no route matched), `hour` the hour's first unix
-- millisecond, `last_seen` the latest request counted in the row.
-- Pruned after --usage-retention (90 days).
CREATE TABLE key_usage (
    key_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, method, route, outcome)
);
CREATE INDEX key_usage_hour ON key_usage (hour);
