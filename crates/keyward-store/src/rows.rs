//! Row shapes shared by the backends: sqlx's `FromRow` derive is generic
//! over the database, so SQLite and PostgreSQL decode the same structs.

use crate::{AuditRecord, KeyRecord, Result, SessionRecord, SnapshotKey, StoreError, UserRecord};
use keyward_core::KeyDigest;
use keyward_core::audit::AuditEntry;

/// A change-log entry to append (`log_changes` of each backend).
pub(crate) struct NewChange<'a> {
    pub(crate) org_id: &'a str,
    pub(crate) key_id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) at: i64,
}

impl<'a> NewChange<'a> {
    pub(crate) fn created(k: &'a KeyRecord) -> Self {
        NewChange {
            org_id: &k.org_id,
            key_id: &k.id,
            kind: "key.created",
            at: k.created_at,
        }
    }
}

pub(crate) fn conflict_or(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        _ => StoreError::Database(e),
    }
}

/// A stored key digest, or `Corrupt` naming the key.
fn digest_of(id: &str, bytes: &[u8]) -> Result<KeyDigest> {
    KeyDigest::from_slice(bytes).ok_or_else(|| {
        StoreError::Corrupt(format!("key `{id}` has a digest of {} bytes", bytes.len()))
    })
}

pub(crate) fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what} is {} bytes, expected 32", bytes.len())))
}

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    pub(crate) id: String,
    pub(crate) org_id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) environment: String,
    pub(crate) digest: Vec<u8>,
    pub(crate) display_prefix: String,
    pub(crate) legacy: bool,
    pub(crate) created_at: i64,
    pub(crate) created_by: String,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) rolled_to: Option<String>,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) limits: String,
    pub(crate) allowed_cidrs: String,
    pub(crate) flagged_unused_at: Option<i64>,
    pub(crate) leaked_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    pub(crate) id: String,
    pub(crate) org_id: String,
    pub(crate) digest: Vec<u8>,
    pub(crate) legacy: bool,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) grants: String,
    pub(crate) limits: String,
    pub(crate) allowed_cidrs: String,
}

impl SnapshotRow {
    pub(crate) fn into_key(self) -> Result<SnapshotKey> {
        let digest = digest_of(&self.id, &self.digest)?;
        let limits = crate::parse_limits(&self.id, &self.limits)?;
        let allowed_cidrs = crate::parse_cidrs(&self.id, &self.allowed_cidrs)?;
        Ok(SnapshotKey {
            id: self.id,
            org_id: self.org_id,
            digest,
            legacy: self.legacy,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
            grants: self.grants,
            limits,
            allowed_cidrs,
        })
    }
}

impl KeyRow {
    pub(crate) fn into_record(self) -> Result<KeyRecord> {
        let digest = digest_of(&self.id, &self.digest)?;
        let limits = crate::parse_limits(&self.id, &self.limits)?;
        let allowed_cidrs = crate::parse_cidrs(&self.id, &self.allowed_cidrs)?;
        Ok(KeyRecord {
            id: self.id,
            org_id: self.org_id,
            name: self.name,
            description: self.description,
            environment: self.environment,
            digest,
            display_prefix: self.display_prefix,
            legacy: self.legacy,
            created_at: self.created_at,
            created_by: self.created_by,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            rolled_to: self.rolled_to,
            last_used_at: self.last_used_at,
            flagged_unused_at: self.flagged_unused_at,
            leaked_at: self.leaked_at,
            scopes: Vec::new(),
            permission_sets: Vec::new(),
            limits,
            allowed_cidrs,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    pub(crate) seq: i64,
    pub(crate) at: i64,
    pub(crate) org_id: String,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) key_id: Option<String>,
    pub(crate) method: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) status: Option<i64>,
    pub(crate) required: String,
    pub(crate) client: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) details: String,
    pub(crate) prev_hash: Vec<u8>,
    pub(crate) hash: Vec<u8>,
}

impl AuditRow {
    pub(crate) fn into_record(self) -> Result<AuditRecord> {
        Ok(AuditRecord {
            seq: self.seq,
            prev_hash: hash32(&self.prev_hash, "audit prev_hash")?,
            hash: hash32(&self.hash, "audit hash")?,
            entry: AuditEntry {
                at_ms: self.at,
                org_id: self.org_id,
                actor: self.actor,
                action: self.action,
                key_id: self.key_id,
                method: self.method,
                path: self.path,
                // A status outside u16 cannot have been written by keyward;
                // keep it visible to verification as an impossible value.
                status: self.status.map(|s| u16::try_from(s).unwrap_or(u16::MAX)),
                required: self
                    .required
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                client: self.client,
                request_id: self.request_id,
                details: self.details,
            },
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    pub(crate) id: String,
    pub(crate) org_id: String,
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) password_hash: Option<String>,
    pub(crate) must_change_password: bool,
    pub(crate) created_at: i64,
    pub(crate) disabled_at: Option<i64>,
}

impl UserRow {
    pub(crate) fn into_record(self) -> UserRecord {
        UserRecord {
            id: self.id,
            org_id: self.org_id,
            email: self.email,
            name: self.name,
            password_hash: self.password_hash,
            must_change_password: self.must_change_password,
            created_at: self.created_at,
            disabled_at: self.disabled_at,
            groups: Vec::new(),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    pub(crate) token_hash: Vec<u8>,
    pub(crate) org_id: String,
    pub(crate) user_id: String,
    pub(crate) csrf: String,
    pub(crate) created_at: i64,
    pub(crate) last_seen_at: i64,
}

impl SessionRow {
    pub(crate) fn into_record(self) -> Result<SessionRecord> {
        Ok(SessionRecord {
            token_hash: hash32(&self.token_hash, "session token hash")?,
            org_id: self.org_id,
            user_id: self.user_id,
            csrf: self.csrf,
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
        })
    }
}
