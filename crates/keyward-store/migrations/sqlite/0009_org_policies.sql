-- An organization's key policy (SPEC §10), as the JSON text it was set with.
CREATE TABLE org_policies (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id),
    policy TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
