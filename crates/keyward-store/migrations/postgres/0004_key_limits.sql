-- Limits on a key (SPEC §8), fixed at creation like its grants: named rate
-- limits as `NAME=REQUESTS/PER` and allowed networks as CIDRs, each list
-- space-separated in one column (read whole with the key, never queried
-- into). Existing keys have neither.
ALTER TABLE keys ADD COLUMN limits TEXT NOT NULL DEFAULT '';
ALTER TABLE keys ADD COLUMN allowed_cidrs TEXT NOT NULL DEFAULT '';
