-- When a key was first reported leaked (SPEC §11): a scan or GitHub's
-- secret scanning; `key.leaked` is told once, with this mark.
ALTER TABLE keys ADD COLUMN leaked_at BIGINT;
