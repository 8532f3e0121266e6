//! The store a URL names, as one type: what the binary holds, so every
//! command works on SQLite and PostgreSQL alike (`--database URL`).

use crate::StoreError;
use crate::{AuditQuery, Directory, LeaseAnswer, LeaseAsk, SessionRecord, UsageRow, UserRecord};
use crate::{
    AuditRecord, Change, ChangeNotifier, KeyFilter, KeyRecord, Org, PgStore, Result, Revoked,
    SnapshotKey, SqliteStore, Store,
};
use keyward_core::KeyDigest;
use keyward_core::audit::AuditEntry;
use std::time::Duration;

/// SQLite or PostgreSQL, chosen by the URL scheme, with the deadline every
/// call of this process gets.
#[derive(Clone, Debug)]
pub struct AnyStore {
    backend: Backend,
    /// Longest a call may take before it fails with
    /// [`StoreError::Timeout`]; `None` waits (the CLI's long imports).
    deadline: Option<Duration>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AnyStore {
    pub(crate) fn sqlite(s: SqliteStore) -> Self {
        AnyStore {
            backend: Backend::Sqlite(s),
            deadline: None,
        }
    }

    pub(crate) fn postgres(s: PgStore) -> Self {
        AnyStore {
            backend: Backend::Postgres(s),
            deadline: None,
        }
    }

    /// The same store, every call of which fails after `deadline`: a server
    /// must answer 503 on time while its database is unreachable or a lock
    /// it waits for is held by a stalled node, never hang with the request.
    /// Migrations are exempt (they may rightly run long).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// `call`, failed with [`StoreError::Timeout`] once `deadline` has passed.
/// Dropping the call drops its connection's work: an open transaction is
/// rolled back (PostgreSQL's own timeouts end what the server still runs).
async fn within<T>(
    deadline: Option<Duration>,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        None => call.await,
        Some(d) => tokio::time::timeout(d, call)
            .await
            .unwrap_or(Err(StoreError::Timeout(d))),
    }
}

/// Calls the same method on whichever backend this is, within the deadline.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($s) => within($self.deadline, $call).await,
            Backend::Postgres($s) => within($self.deadline, $call).await,
        }
    };
}

impl Store for AnyStore {
    async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.migrate().await,
            Backend::Postgres(s) => s.migrate().await,
        }
    }
    async fn create_org(
        &self,
        org: &Org,
        owner: Option<&UserRecord>,
        audits: &[AuditEntry],
    ) -> Result<Org> {
        delegate!(self, s => s.create_org(org, owner, audits))
    }
    async fn default_org(&self) -> Result<Option<Org>> {
        delegate!(self, s => s.default_org())
    }
    async fn org_by_slug(&self, slug: &str) -> Result<Option<Org>> {
        delegate!(self, s => s.org_by_slug(slug))
    }
    async fn list_orgs(&self) -> Result<Vec<Org>> {
        delegate!(self, s => s.list_orgs())
    }
    async fn insert_keys(
        &self,
        org_id: &str,
        keys: &[KeyRecord],
        audits: &[AuditEntry],
        skip_existing: bool,
    ) -> Result<Vec<bool>> {
        delegate!(self, s => s.insert_keys(org_id, keys, audits, skip_existing))
    }
    async fn revoke_key(
        &self,
        org_id: &str,
        key_id: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Revoked> {
        delegate!(self, s => s.revoke_key(org_id, key_id, at, audit))
    }
    async fn roll_key(
        &self,
        org_id: &str,
        old_id: &str,
        old_expires_at: i64,
        new_key: &KeyRecord,
        audit: &AuditEntry,
    ) -> Result<()> {
        delegate!(self, s => s.roll_key(org_id, old_id, old_expires_at, new_key, audit))
    }
    async fn get_key(&self, org_id: &str, key_id: &str) -> Result<Option<KeyRecord>> {
        delegate!(self, s => s.get_key(org_id, key_id))
    }
    async fn list_keys(&self, org_id: &str, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        delegate!(self, s => s.list_keys(org_id, filter))
    }
    async fn key_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        delegate!(self, s => s.key_by_digest(digest))
    }
    async fn count_keys(&self) -> Result<u64> {
        delegate!(self, s => s.count_keys())
    }
    async fn snapshot_keys(&self, after: &str, limit: u32) -> Result<Vec<SnapshotKey>> {
        delegate!(self, s => s.snapshot_keys(after, limit))
    }
    async fn touch_keys(&self, uses: &[(String, i64)]) -> Result<()> {
        delegate!(self, s => s.touch_keys(uses))
    }
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<i64>> {
        delegate!(self, s => s.append_audit(entries))
    }
    async fn audit_chain(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        delegate!(self, s => s.audit_chain(after, limit))
    }
    async fn audit_head(&self) -> Result<(i64, [u8; 32])> {
        delegate!(self, s => s.audit_head())
    }
    async fn audit_for_key(
        &self,
        org_id: &str,
        key_id: &str,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        delegate!(self, s => s.audit_for_key(org_id, key_id, limit))
    }
    async fn change_notifier(&self) -> Result<Option<ChangeNotifier>> {
        delegate!(self, s => s.change_notifier())
    }
    async fn changes_since(&self, version: i64, limit: u32) -> Result<(Vec<Change>, i64)> {
        delegate!(self, s => s.changes_since(version, limit))
    }
    async fn snapshot_keys_by_id(&self, ids: &[String]) -> Result<Vec<SnapshotKey>> {
        delegate!(self, s => s.snapshot_keys_by_id(ids))
    }
    async fn limit_heartbeat(&self, node: &str, now: i64, alive_ms: i64) -> Result<u64> {
        delegate!(self, s => s.limit_heartbeat(node, now, alive_ms))
    }
    async fn claim_leases(&self, nodes: u64, asks: &[LeaseAsk]) -> Result<Vec<LeaseAnswer>> {
        delegate!(self, s => s.claim_leases(nodes, asks))
    }
    async fn limit_leave(&self, node: &str) -> Result<()> {
        delegate!(self, s => s.limit_leave(node))
    }
    async fn forget_leases(&self, before: i64) -> Result<()> {
        delegate!(self, s => s.forget_leases(before))
    }
    async fn add_usage(&self, rows: &[UsageRow]) -> Result<()> {
        delegate!(self, s => s.add_usage(rows))
    }
    async fn key_usage(&self, key_id: &str, since: i64, until: i64) -> Result<Vec<UsageRow>> {
        delegate!(self, s => s.key_usage(key_id, since, until))
    }
    async fn prune_usage(&self, before: i64) -> Result<u64> {
        delegate!(self, s => s.prune_usage(before))
    }
}

impl crate::Settings for AnyStore {
    async fn keys_expiring(&self, org_id: &str, until: i64) -> Result<Vec<crate::ExpiringKey>> {
        delegate!(self, s => s.keys_expiring(org_id, until))
    }
    async fn note_keys(&self, notes: &[(crate::KeyNotice, AuditEntry)]) -> Result<Vec<bool>> {
        delegate!(self, s => s.note_keys(notes))
    }
    async fn clear_unused_flags(&self, org_id: &str, active_since: Option<i64>) -> Result<u64> {
        delegate!(self, s => s.clear_unused_flags(org_id, active_since))
    }
    async fn get_policy(&self, org_id: &str) -> Result<Option<crate::StoredPolicy>> {
        delegate!(self, s => s.get_policy(org_id))
    }
    async fn claim_duty(&self, name: &str, holder: &str, now: i64, hold_ms: i64) -> Result<bool> {
        delegate!(self, s => s.claim_duty(name, holder, now, hold_ms))
    }
    async fn put_policy(
        &self,
        org_id: &str,
        policy: &crate::StoredPolicy,
        audit: &AuditEntry,
    ) -> Result<()> {
        delegate!(self, s => s.put_policy(org_id, policy, audit))
    }
}

impl crate::Webhooks for AnyStore {
    async fn create_webhook(&self, hook: &crate::WebhookRecord, audit: &AuditEntry) -> Result<()> {
        delegate!(self, s => s.create_webhook(hook, audit))
    }
    async fn list_webhooks(&self, org_id: &str) -> Result<Vec<crate::WebhookRecord>> {
        delegate!(self, s => s.list_webhooks(org_id))
    }
    async fn get_webhook(&self, org_id: &str, id: &str) -> Result<Option<crate::WebhookRecord>> {
        delegate!(self, s => s.get_webhook(org_id, id))
    }
    async fn delete_webhook(&self, org_id: &str, id: &str, audit: &AuditEntry) -> Result<bool> {
        delegate!(self, s => s.delete_webhook(org_id, id, audit))
    }
    async fn claim_webhook(
        &self,
        node: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<crate::WebhookRecord>> {
        delegate!(self, s => s.claim_webhook(node, now, lease_ms))
    }
    async fn pending_events(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<crate::PendingEvent>> {
        delegate!(self, s => s.pending_events(webhook_id, limit))
    }
    async fn record_attempt(
        &self,
        node: &str,
        webhook_id: &str,
        attempt: &crate::Attempt,
        state: &crate::EndpointState,
        audit: Option<&AuditEntry>,
    ) -> Result<bool> {
        delegate!(self, s => s.record_attempt(node, webhook_id, attempt, state, audit))
    }
    async fn release_webhook(&self, node: &str, webhook_id: &str) -> Result<()> {
        delegate!(self, s => s.release_webhook(node, webhook_id))
    }
    async fn deliveries(
        &self,
        webhook_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<crate::DeliveryRecord>> {
        delegate!(self, s => s.deliveries(webhook_id, before, limit))
    }
    async fn prune_deliveries(&self, before: i64) -> Result<u64> {
        delegate!(self, s => s.prune_deliveries(before))
    }
}

impl Directory for AnyStore {
    async fn create_user(&self, user: &UserRecord, audit: &AuditEntry) -> Result<()> {
        delegate!(self, s => s.create_user(user, audit))
    }

    async fn get_user(&self, org_id: &str, user_id: &str) -> Result<Option<UserRecord>> {
        delegate!(self, s => s.get_user(org_id, user_id))
    }

    async fn user_by_email(&self, org_id: &str, email: &str) -> Result<Option<UserRecord>> {
        delegate!(self, s => s.user_by_email(org_id, email))
    }

    async fn list_users(&self, org_id: &str, group_id: Option<&str>) -> Result<Vec<UserRecord>> {
        delegate!(self, s => s.list_users(org_id, group_id))
    }

    async fn set_membership(
        &self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        member: bool,
        audit: &AuditEntry,
    ) -> Result<bool> {
        delegate!(self, s => s.set_membership(org_id, group_id, user_id, member, audit))
    }

    async fn set_password(
        &self,
        org_id: &str,
        user_id: &str,
        password_hash: &str,
        must_change: bool,
        audit: Option<&AuditEntry>,
        keep_session: Option<&[u8; 32]>,
    ) -> Result<()> {
        delegate!(self, s => s.set_password(org_id, user_id, password_hash, must_change, audit, keep_session))
    }

    async fn create_session(
        &self,
        session: &SessionRecord,
        idle_cutoff: i64,
        nonce_cutoff: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        delegate!(self, s => s.create_session(session, idle_cutoff, nonce_cutoff, audit))
    }

    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>> {
        delegate!(self, s => s.session(token_hash))
    }

    async fn touch_session(&self, token_hash: &[u8; 32], at: i64) -> Result<()> {
        delegate!(self, s => s.touch_session(token_hash, at))
    }

    async fn end_session(&self, token_hash: &[u8; 32], audit: Option<&AuditEntry>) -> Result<()> {
        delegate!(self, s => s.end_session(token_hash, audit))
    }

    async fn begin_sign_in(
        &self,
        attempt: &str,
        org_id: &str,
        email: &str,
        client: &str,
        at: i64,
        since: i64,
    ) -> Result<(u32, u32)> {
        delegate!(self, s => s.begin_sign_in(attempt, org_id, email, client, at, since))
    }

    async fn clear_sign_in_attempt(&self, attempt: &str) -> Result<()> {
        delegate!(self, s => s.clear_sign_in_attempt(attempt))
    }

    async fn create_nonce(&self, nonce: &str, token_hash: &[u8; 32], at: i64) -> Result<()> {
        delegate!(self, s => s.create_nonce(nonce, token_hash, at))
    }

    async fn use_nonce(&self, nonce: &str, token_hash: &[u8; 32], at: i64) -> Result<bool> {
        delegate!(self, s => s.use_nonce(nonce, token_hash, at))
    }

    async fn query_audit(&self, org_id: &str, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        delegate!(self, s => s.query_audit(org_id, query))
    }
}
