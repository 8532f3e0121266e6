-- What the key policy has told about each key (SPEC §10), so each notice is
-- sent once: flagged unused (cleared when used again), the smallest
-- `expiry_warning` threshold warned of, and the expiry itself.
ALTER TABLE keys ADD COLUMN flagged_unused_at INTEGER;
ALTER TABLE keys ADD COLUMN expiry_warned_ms INTEGER;
ALTER TABLE keys ADD COLUMN expired_noticed INTEGER NOT NULL DEFAULT 0;
-- Keys that expired before notices existed are not announced now.
UPDATE keys SET expired_noticed = 1
    WHERE expires_at IS NOT NULL AND expires_at <= CAST(strftime('%s', 'now') AS INTEGER) * 1000;
CREATE INDEX keys_by_expiry ON keys (org_id, expires_at)
    WHERE expires_at IS NOT NULL AND expired_noticed = 0;
-- The flagged keys, for the run that clears flags of keys used again.
CREATE INDEX keys_flagged_unused ON keys (org_id) WHERE flagged_unused_at IS NOT NULL;
