-- Each key's grants as one canonical text (`permission_set NAME` / `scope
-- NAME` lines, sorted by kind then name), beside the key itself. Keys are
-- immutable, so this copy of key_grants can never diverge from it; it lets a
-- node load its snapshot with one plain scan instead of a subquery per key.
ALTER TABLE keys ADD COLUMN grants TEXT NOT NULL DEFAULT '';

UPDATE keys SET grants = COALESCE((
    SELECT group_concat(g.kind || ' ' || g.name, char(10) ORDER BY g.kind, g.name)
    FROM key_grants g WHERE g.key_id = keys.id
), '');
