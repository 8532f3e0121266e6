-- Work one node of several does at a time (applying the key policy): the
-- node holding a duty until `until` does it; another may take it after.
CREATE TABLE duties (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL
);
