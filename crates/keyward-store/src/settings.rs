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
