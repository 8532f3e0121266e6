//! An organization's settings (SPEC §10): its key policy, written once for
//! both backends like `people.rs`. The policy is stored as the JSON text the
//! operator wrote (durations in their own spelling); the app checks it.

use crate::Result;
use keyward_core::audit::AuditEntry;
use std::future::Future;

/// An organization's settings: its key policy; and the duties one node of
/// several does at a time (applying it). Split from [`Store`] like
/// [`Directory`] (the `settings_impl!` macro in `settings.rs`, expanded by
/// `keys_impl!`).
pub trait Settings: Send + Sync + 'static {
    /// The organization's policy, if one was ever set.
    fn get_policy(&self, org_id: &str)
    -> impl Future<Output = Result<Option<StoredPolicy>>> + Send;
    /// Takes the duty `name` (work one node does at a time) for `hold_ms`
    /// from `now` if it is free, expired or already `holder`'s; whether
    /// `holder` now holds it.
    fn claim_duty(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        hold_ms: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Active keys of the organization, neither revoked nor rolled, that
    /// expire by `until` and whose expiry was not announced yet.
    fn keys_expiring(
        &self,
        org_id: &str,
        until: i64,
    ) -> impl Future<Output = Result<Vec<ExpiringKey>>> + Send;
    /// Records each notice not recorded before (by another run) with its
    /// audit record, all in one transaction; which were new. The audit
    /// records are events (`key.unused`, `key.expiring`, `key.expired`),
    /// so the outbox gets them in the same transaction.
    fn note_keys(
        &self,
        notes: &[(KeyNotice, AuditEntry)],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// Clears the `unused` flag of the organization's keys used since they
    /// were flagged, or used at or after `active_since` (the flag's window
    /// under the policy now; `None`: no flag in the policy, clear all).
    fn clear_unused_flags(
        &self,
        org_id: &str,
        active_since: Option<i64>,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Replaces the organization's policy and appends `audit`, in one
    /// transaction.
    fn put_policy(
        &self,
        org_id: &str,
        policy: &StoredPolicy,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The policy an organization stored, and when and by whom it was last set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    /// The policy's JSON text (`keyward_core::policy::PolicyText`).
    pub text: String,
    /// When it was set (unix ms).
    pub updated_at: i64,
    /// The actor who set it.
    pub updated_by: String,
}

/// A key close to (or past) its expiry, for the policy's notices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringKey {
    /// `key_…`
    pub id: String,
    /// Its name.
    pub name: String,
    /// Unix ms.
    pub expires_at: i64,
    /// The smallest `expiry_warning` threshold already announced.
    pub warned_ms: Option<i64>,
}

/// Something the key policy tells once about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyNotice {
    /// Flagged unused now (at unix ms).
    Unused {
        /// The key.
        key_id: String,
        /// Unix ms.
        at: i64,
    },
    /// Warned that it expires within `threshold_ms`.
    Expiring {
        /// The key.
        key_id: String,
        /// The threshold crossed.
        threshold_ms: i64,
    },
    /// Announced as expired.
    Expired {
        /// The key.
        key_id: String,
    },
    /// Reported leaked (at unix ms).
    Leaked {
        /// The key.
        key_id: String,
        /// Unix ms.
        at: i64,
    },
}

/// Implements [`crate::Settings`] for one backend (expanded by `keys_impl!`).
macro_rules! settings_impl {
    ($store:ty, $db:ty) => {
        impl $crate::Settings for $store {
            async fn get_policy(
                &self,
                org_id: &str,
            ) -> $crate::Result<Option<$crate::StoredPolicy>> {
                let row: Option<(String, i64, String)> = sqlx::query_as(
                    "SELECT policy, updated_at, updated_by FROM org_policies WHERE org_id = $1",
                )
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(
                    row.map(|(text, updated_at, updated_by)| $crate::StoredPolicy {
                        text,
                        updated_at,
                        updated_by,
                    }),
                )
            }

            async fn claim_duty(
                &self,
                name: &str,
                holder: &str,
                now: i64,
                hold_ms: i64,
            ) -> $crate::Result<bool> {
                // One statement: taken when free, expired, or already ours.
                // Two nodes racing for it are ordered by the row's lock;
                // the second sees the first's `until` and changes nothing.
                let done = sqlx::query(
                    "INSERT INTO duties (name, holder, until) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     until = excluded.until \
                     WHERE duties.until <= $4 OR duties.holder = excluded.holder",
                )
                .bind(name)
                .bind(holder)
                .bind(now.saturating_add(hold_ms))
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn keys_expiring(
                &self,
                org_id: &str,
                until: i64,
            ) -> $crate::Result<Vec<$crate::ExpiringKey>> {
                let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
                    "SELECT id, name, expires_at, expiry_warned_ms FROM keys \
                     WHERE org_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2 \
                     AND expired_noticed = $3 AND revoked_at IS NULL AND rolled_to IS NULL \
                     ORDER BY expires_at, id",
                )
                .bind(org_id)
                .bind(until)
                .bind(false)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, name, expires_at, warned_ms)| $crate::ExpiringKey {
                        id,
                        name,
                        expires_at,
                        warned_ms,
                    })
                    .collect())
            }

            async fn note_keys(
                &self,
                notes: &[($crate::KeyNotice, keyward_core::audit::AuditEntry)],
            ) -> $crate::Result<Vec<bool>> {
                if notes.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.write_tx().await?;
                let mut new = Vec::with_capacity(notes.len());
                let mut told = Vec::with_capacity(notes.len());
                for (notice, audit) in notes {
                    // Each update changes the row only the first time: a
                    // notice is told once whoever runs the policy.
                    let done = match notice {
                        $crate::KeyNotice::Unused { key_id, at } => sqlx::query(
                            "UPDATE keys SET flagged_unused_at = $1 WHERE id = $2 \
                             AND flagged_unused_at IS NULL AND revoked_at IS NULL",
                        )
                        .bind(*at)
                        .bind(key_id),
                        $crate::KeyNotice::Expiring {
                            key_id,
                            threshold_ms,
                        } => sqlx::query(
                            "UPDATE keys SET expiry_warned_ms = $1 WHERE id = $2 \
                             AND (expiry_warned_ms IS NULL OR expiry_warned_ms > $1)",
                        )
                        .bind(*threshold_ms)
                        .bind(key_id),
                        $crate::KeyNotice::Leaked { key_id, at } => sqlx::query(
                            "UPDATE keys SET leaked_at = $1 WHERE id = $2 AND leaked_at IS NULL",
                        )
                        .bind(*at)
                        .bind(key_id),
                        $crate::KeyNotice::Expired { key_id } => sqlx::query(
                            "UPDATE keys SET expired_noticed = $1 WHERE id = $2 \
                             AND expired_noticed = $3",
                        )
                        .bind(true)
                        .bind(key_id)
                        .bind(false),
                    }
                    .execute(&mut *tx)
                    .await?;
                    told.push(done.rows_affected() > 0);
                    if done.rows_affected() > 0 {
                        new.push(audit);
                    }
                }
                Self::append_audited_tx(&mut tx, &new).await?;
                tx.commit().await?;
                Ok(told)
            }

            async fn clear_unused_flags(
                &self,
                org_id: &str,
                active_since: Option<i64>,
            ) -> $crate::Result<u64> {
                // Most runs find nothing to clear: a read says so without
                // taking the write lock, which the audit writer needs.
                let any: Option<(i32,)> = sqlx::query_as(
                    "SELECT 1 FROM keys WHERE org_id = $1 AND flagged_unused_at IS NOT NULL LIMIT 1",
                )
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await?;
                if any.is_none() {
                    return Ok(0);
                }
                let mut tx = self.write_tx().await?;
                let done = sqlx::query(
                    "UPDATE keys SET flagged_unused_at = NULL WHERE org_id = $1 \
                     AND flagged_unused_at IS NOT NULL \
                     AND (last_used_at > flagged_unused_at \
                     OR COALESCE(last_used_at, created_at) >= $2)",
                )
                .bind(org_id)
                .bind(active_since.unwrap_or(i64::MIN))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            async fn put_policy(
                &self,
                org_id: &str,
                policy: &$crate::StoredPolicy,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO org_policies (org_id, policy, updated_at, updated_by) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (org_id) DO UPDATE SET policy = excluded.policy, \
                     updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                )
                .bind(org_id)
                .bind(&policy.text)
                .bind(policy.updated_at)
                .bind(&policy.updated_by)
                .execute(&mut *tx)
                .await?;
                Self::append_audited_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}
pub(crate) use settings_impl;
