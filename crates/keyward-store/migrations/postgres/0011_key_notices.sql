-- What the key policy has told about each key (SPEC §10), so each notice is
-- sent once: flagged unused (cleared when used again), the smallest
-- `expiry_warning` threshold warned of, and the expiry itself.
ALTER TABLE keys ADD COLUMN flagged_unused_at BIGINT;
ALTER TABLE keys ADD COLUMN expiry_warned_ms BIGINT;
ALTER TABLE keys ADD COLUMN expired_noticed BOOLEAN NOT NULL DEFAULT FALSE;
-- Keys that expired before notices existed are not announced now.
UPDATE keys SET expired_noticed = TRUE
    WHERE expires_at IS NOT NULL AND expires_at <= (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT;
CREATE INDEX keys_by_expiry ON keys (org_id, expires_at)
    WHERE expires_at IS NOT NULL AND NOT expired_noticed;
-- The flagged keys, for the run that clears flags of keys used again.
CREATE INDEX keys_flagged_unused ON keys (org_id) WHERE flagged_unused_at IS NOT NULL;
