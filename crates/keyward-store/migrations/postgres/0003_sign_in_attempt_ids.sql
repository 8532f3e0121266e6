-- Each sign-in attempt is recorded before its password is checked and
-- withdrawn by its own id when it succeeds: attempts in the same millisecond
-- must not withdraw each other.
ALTER TABLE sign_in_failures ADD COLUMN attempt TEXT NOT NULL DEFAULT '';
CREATE INDEX sign_in_failures_by_attempt ON sign_in_failures (attempt);
