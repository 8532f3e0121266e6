-- A key's own trail (created, rolled, revoked, refusals: the console's key
-- page) without walking the organization's whole log. Gateway requests are
-- left out of the index: they are most of the log, and indexing each one
-- cost an audited POST 7.7 % more instructions (its requests show in the
-- key's usage instead).
CREATE INDEX audit_by_key ON audit_log (org_id, key_id, seq DESC)
    WHERE action <> 'gateway.request';
