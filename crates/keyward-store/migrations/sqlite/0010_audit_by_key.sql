-- A key's audit trail (the console's key page, GET /v1/audit?key_id=…)
-- without walking the organization's whole log.
CREATE INDEX audit_by_key ON audit_log (org_id, key_id, seq DESC);
