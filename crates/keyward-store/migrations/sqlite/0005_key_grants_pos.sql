-- A key's grants keep the order they were given in a stored position, as on
-- PostgreSQL, instead of SQLite's rowid order. Existing rows are numbered
-- in the rowid order they were read in until now.
ALTER TABLE key_grants ADD COLUMN pos INTEGER NOT NULL DEFAULT 0;
UPDATE key_grants SET pos = (
    SELECT COUNT(*) FROM key_grants g
    WHERE g.key_id = key_grants.key_id AND g.rowid < key_grants.rowid
);
