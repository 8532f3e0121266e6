//! Webhook endpoints and their transactional outbox (SPEC §10), written
//! once for both backends like `settings.rs`.
//!
//! An event is an audit record whose action is an event
//! (`keyward_core::webhook::is_event`). Every write transaction appends its
//! audit records through `append_audited_tx`, which first reads the
//! organization's subscriptions, then appends, then queues one outbox row
//! per record and subscribed endpoint: the event commits with its change or
//! not at all. (The read comes first because PostgreSQL's append keeps the
//! audit head locked until the commit.)
//!
//! Delivery is per endpoint, oldest record first: a node *leases* an
//! endpoint with one statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//! nodes polling at once take different endpoints), delivers, and records
//! each attempt only while its lease holds. A node killed mid-delivery
//! leaves its lease to expire; the next holder sends the same records again.

use crate::Result;
use keyward_core::audit::AuditEntry;
use std::future::Future;

/// An endpoint as stored. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// `wh_…`.
    pub id: String,
    /// Its organization.
    pub org_id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The operator's note.
    pub description: String,
    /// Subscribed events, as given.
    pub events: Vec<String>,
    /// The signing secret (`whsec_…`): needed to sign each delivery, so it
    /// is stored as it is; it is shown to people once, at creation.
    pub secret: String,
    /// Unix ms.
    pub created_at: i64,
    /// The actor who created it.
    pub created_by: String,
    /// When it was disabled for failing 24 h.
    pub disabled_at: Option<i64>,
    /// Consecutive failed attempts.
    pub failures: i64,
    /// When the first of those failed.
    pub failing_since: Option<i64>,
    /// No attempt before this (the back-off).
    pub next_attempt_at: i64,
    /// Events not yet delivered (read only; 0 when writing).
    pub pending: i64,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("disabled_at", &self.disabled_at)
            .field("failures", &self.failures)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// An event waiting for an endpoint: its audit record, and how often it was
/// tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEvent {
    /// The audit record's position, which names the message.
    pub audit_seq: i64,
    /// Attempts so far.
    pub attempts: i64,
    /// The record.
    pub entry: AuditEntry,
}

/// One attempt's result, as recorded by the node that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The event tried.
    pub audit_seq: i64,
    /// When the attempt started (unix ms).
    pub at: i64,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed, when it did (never a secret).
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
    /// A 2xx: the event is delivered.
    pub delivered: bool,
}

/// An endpoint's state after an attempt, decided by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointState {
    /// Consecutive failures.
    pub failures: i64,
    /// When they started.
    pub failing_since: Option<i64>,
    /// No attempt before this.
    pub next_attempt_at: i64,
    /// Disabled now (for failing too long).
    pub disabled_at: Option<i64>,
    /// The holder's lease, extended to this.
    pub lease_until: i64,
}

/// One event of an endpoint's delivery history, with its attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The audit record (and message) it is.
    pub audit_seq: i64,
    /// Event type.
    pub event: String,
    /// The key concerned, if any.
    pub key_id: Option<String>,
    /// When it was queued (unix ms).
    pub created_at: i64,
    /// When it was delivered.
    pub delivered_at: Option<i64>,
    /// Attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// One recorded attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1, 2, … per event and endpoint.
    pub attempt: i64,
    /// Unix ms.
    pub at: i64,
    /// The node that made it.
    pub node: String,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// Webhook endpoints and their outbox (`webhooks.rs`, expanded by
/// `keys_impl!`). Events enter the outbox in the transactions that append
/// their audit records, never through this trait.
pub trait Webhooks: Send + Sync + 'static {
    /// Stores an endpoint and its subscriptions and appends `audit`, in one
    /// transaction.
    fn create_webhook(
        &self,
        hook: &WebhookRecord,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The organization's endpoints, oldest first.
    fn list_webhooks(
        &self,
        org_id: &str,
    ) -> impl Future<Output = Result<Vec<WebhookRecord>>> + Send;
    /// One endpoint of the organization.
    fn get_webhook(
        &self,
        org_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<WebhookRecord>>> + Send;
    /// Deletes an endpoint with its queue and history, appending `audit`;
    /// whether it existed.
    fn delete_webhook(
        &self,
        org_id: &str,
        id: &str,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Leases to `node`, until `now + lease_ms`, the enabled endpoint with
    /// events waiting whose back-off ended longest ago and whose lease is
    /// free or expired.
    fn claim_webhook(
        &self,
        node: &str,
        now: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<Option<WebhookRecord>>> + Send;
    /// An endpoint's undelivered events, oldest first.
    fn pending_events(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<PendingEvent>>> + Send;
    /// Records an attempt and the endpoint's new state (and `audit`, when
    /// it is disabled), if `node` still holds its lease; whether it did.
    fn record_attempt(
        &self,
        node: &str,
        webhook_id: &str,
        attempt: &Attempt,
        state: &EndpointState,
        audit: Option<&AuditEntry>,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Gives the lease back, if `node` holds it.
    fn release_webhook(
        &self,
        node: &str,
        webhook_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// An endpoint's events, newest first, before audit position `before`.
    fn deliveries(
        &self,
        webhook_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeliveryRecord>>> + Send;
    /// Forgets events delivered before `before` (the history's retention).
    fn prune_deliveries(&self, before: i64) -> impl Future<Output = Result<u64>> + Send;
}

/// Endpoints of one organization delivered to at once, over all nodes
/// (about: two nodes may both take the last place). One organization's
/// slow or hanging receivers then hold a few delivery slots, never all of
/// them: the other organizations' events keep flowing.
pub const LEASES_PER_ORG: i64 = 3;

/// `SELECT` of the one endpoint to lease next, `$3` being now, then
/// `$tail` (the backend's locking clause): enabled, past its back-off, not
/// leased, with events waiting, its organization holding fewer than
/// [`LEASES_PER_ORG`] leases; the one whose oldest waiting event is oldest
/// first, so endpoints are served in the order their events happened
/// (no endpoint waits behind others that sort before it).
macro_rules! due_webhook {
    ($tail:literal) => {
        concat!(
            "SELECT w.id FROM webhooks w WHERE w.disabled_at IS NULL ",
            "AND w.next_attempt_at <= $3 AND w.lease_until <= $3 ",
            "AND EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.webhook_id = w.id ",
            "AND o.delivered_at IS NULL) ",
            "AND (SELECT COUNT(*) FROM webhooks x WHERE x.org_id = w.org_id ",
            "AND x.lease_until > $3) < 3 ",
            "ORDER BY (SELECT MIN(o.audit_seq) FROM webhook_outbox o WHERE o.webhook_id = w.id ",
            "AND o.delivered_at IS NULL), w.id LIMIT 1",
            $tail
        )
    };
}
pub(crate) use due_webhook;

/// Outbox rows per `INSERT` (3 parameters each).
pub(crate) const OUTBOX_ROWS_PER_INSERT: usize = 1_000;

/// `SELECT <webhook columns> FROM webhooks w <rest>` as a static string.
macro_rules! select_webhooks {
    ($rest:literal) => {
        concat!(
            "SELECT w.id, w.org_id, w.url, w.description, w.events, w.secret, w.created_at, ",
            "w.created_by, w.disabled_at, w.failures, w.failing_since, w.next_attempt_at, ",
            "(SELECT COUNT(*) FROM webhook_outbox o WHERE o.webhook_id = w.id ",
            "AND o.delivered_at IS NULL) AS pending ",
            "FROM webhooks w ",
            $rest
        )
    };
}
pub(crate) use select_webhooks;

/// A row of [`select_webhooks!`].
pub(crate) type WebhookRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<i64>,
    i64,
    Option<i64>,
    i64,
    i64,
);

pub(crate) fn webhook_record(r: WebhookRow) -> WebhookRecord {
    WebhookRecord {
        id: r.0,
        org_id: r.1,
        url: r.2,
        description: r.3,
        events: r
            .4
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
        secret: r.5,
        created_at: r.6,
        created_by: r.7,
        disabled_at: r.8,
        failures: r.9,
        failing_since: r.10,
        next_attempt_at: r.11,
        pending: r.12,
    }
}

/// A status as stored (a column of integers).
pub(crate) fn status_of(v: Option<i64>) -> Option<u16> {
    v.and_then(|s| u16::try_from(s).ok())
}

/// Implements [`crate::Webhooks`] and `append_audited_tx` for one backend
/// (expanded by `keys_impl!`). The backend module defines `CLAIM_WEBHOOK`,
/// its lease-taking statement.
macro_rules! webhooks_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Appends `entries` to the audit chain and queues the events
            /// among them for their subscribed endpoints, in the caller's
            /// transaction (module docs). Every write transaction appends
            /// through here.
            async fn append_audited_tx(
                conn: &mut <$db as sqlx::Database>::Connection,
                entries: &[&keyward_core::audit::AuditEntry],
            ) -> $crate::Result<Vec<i64>> {
                use keyward_core::webhook::is_event;
                if !entries.iter().any(|e| is_event(&e.action)) {
                    return append_audit_tx(conn, entries).await;
                }
                let mut orgs: Vec<&str> = Vec::new();
                for e in entries {
                    if is_event(&e.action) && !orgs.contains(&e.org_id.as_str()) {
                        orgs.push(&e.org_id);
                    }
                }
                // (org, event, endpoint)
                let mut subs: Vec<(String, String, String)> = Vec::new();
                for org in orgs {
                    let rows: Vec<(String, String, String)> = sqlx::query_as(
                        "SELECT s.org_id, s.event_type, s.webhook_id FROM webhook_subscriptions s \
                         JOIN webhooks w ON w.id = s.webhook_id \
                         WHERE s.org_id = $1 AND w.disabled_at IS NULL",
                    )
                    .bind(org)
                    .fetch_all(&mut *conn)
                    .await?;
                    subs.extend(rows);
                }
                let seqs = append_audit_tx(conn, entries).await?;
                if subs.is_empty() {
                    return Ok(seqs);
                }
                let mut rows: Vec<(&str, i64, i64)> = Vec::new();
                for (e, seq) in entries.iter().zip(&seqs) {
                    for (org, event, webhook) in &subs {
                        if *org == e.org_id && *event == e.action {
                            rows.push((webhook, *seq, e.at_ms));
                        }
                    }
                }
                for chunk in rows.chunks($crate::webhooks::OUTBOX_ROWS_PER_INSERT) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO webhook_outbox (webhook_id, audit_seq, created_at) ",
                    );
                    qb.push_values(chunk, |mut b, (webhook, seq, at)| {
                        b.push_bind(webhook.to_string())
                            .push_bind(*seq)
                            .push_bind(*at);
                    });
                    qb.build().execute(&mut *conn).await?;
                }
                Ok(seqs)
            }
        }

        impl $crate::Webhooks for $store {
            async fn create_webhook(
                &self,
                hook: &$crate::WebhookRecord,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO webhooks (id, org_id, url, description, events, secret, \
                     created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&hook.id)
                .bind(&hook.org_id)
                .bind(&hook.url)
                .bind(&hook.description)
                .bind(hook.events.join(","))
                .bind(&hook.secret)
                .bind(hook.created_at)
                .bind(&hook.created_by)
                .execute(&mut *tx)
                .await
                .map_err($crate::rows::conflict_or)?;
                for event in &hook.events {
                    sqlx::query(
                        "INSERT INTO webhook_subscriptions (org_id, event_type, webhook_id) \
                         VALUES ($1, $2, $3)",
                    )
                    .bind(&hook.org_id)
                    .bind(event)
                    .bind(&hook.id)
                    .execute(&mut *tx)
                    .await?;
                }
                Self::append_audited_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_webhooks(
                &self,
                org_id: &str,
            ) -> $crate::Result<Vec<$crate::WebhookRecord>> {
                let rows: Vec<$crate::webhooks::WebhookRow> = sqlx::query_as(
                    $crate::webhooks::select_webhooks!(
                        "WHERE w.org_id = $1 ORDER BY w.created_at, w.id"
                    ),
                )
                .bind(org_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map($crate::webhooks::webhook_record).collect())
            }

            async fn get_webhook(
                &self,
                org_id: &str,
                id: &str,
            ) -> $crate::Result<Option<$crate::WebhookRecord>> {
                let row: Option<$crate::webhooks::WebhookRow> = sqlx::query_as(
                    $crate::webhooks::select_webhooks!("WHERE w.org_id = $1 AND w.id = $2"),
                )
                .bind(org_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map($crate::webhooks::webhook_record))
            }

            async fn delete_webhook(
                &self,
                org_id: &str,
                id: &str,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<bool> {
                let mut tx = self.write_tx().await?;
                let done = sqlx::query("DELETE FROM webhooks WHERE org_id = $1 AND id = $2")
                    .bind(org_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::append_audited_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn claim_webhook(
                &self,
                node: &str,
                now: i64,
                lease_ms: i64,
            ) -> $crate::Result<Option<$crate::WebhookRecord>> {
                // Most polls find nothing: a read says so without taking
                // the write lock (SQLite) or a transaction (PostgreSQL).
                let due: Option<(i32,)> = sqlx::query_as(
                    "SELECT 1 FROM webhooks w WHERE w.disabled_at IS NULL \
                     AND w.next_attempt_at <= $1 AND w.lease_until <= $1 \
                     AND EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.webhook_id = w.id \
                     AND o.delivered_at IS NULL) LIMIT 1",
                )
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                if due.is_none() {
                    return Ok(None);
                }
                let mut tx = self.write_tx().await?;
                let id: Option<(String,)> = sqlx::query_as(CLAIM_WEBHOOK)
                    .bind(node)
                    .bind(now.saturating_add(lease_ms))
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                let Some((id,)) = id else {
                    return Ok(None);
                };
                let row: Option<$crate::webhooks::WebhookRow> = sqlx::query_as(
                    $crate::webhooks::select_webhooks!("WHERE w.id = $1"),
                )
                .bind(&id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map($crate::webhooks::webhook_record))
            }

            async fn pending_events(
                &self,
                webhook_id: &str,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::PendingEvent>> {
                let rows: Vec<(i64, i64, i64, String, String, String, Option<String>, String)> =
                    sqlx::query_as(
                        "SELECT o.audit_seq, o.attempts, a.at, a.org_id, a.actor, a.action, \
                         a.key_id, a.details FROM webhook_outbox o \
                         JOIN audit_log a ON a.seq = o.audit_seq \
                         WHERE o.webhook_id = $1 AND o.delivered_at IS NULL \
                         ORDER BY o.audit_seq LIMIT $2",
                    )
                    .bind(webhook_id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(audit_seq, attempts, at_ms, org_id, actor, action, key_id, details)| {
                        $crate::PendingEvent {
                            audit_seq,
                            attempts,
                            entry: keyward_core::audit::AuditEntry {
                                at_ms,
                                org_id,
                                actor,
                                action,
                                key_id,
                                details,
                                ..Default::default()
                            },
                        }
                    })
                    .collect())
            }

            async fn record_attempt(
                &self,
                node: &str,
                webhook_id: &str,
                attempt: &$crate::Attempt,
                state: &$crate::EndpointState,
                audit: Option<&keyward_core::audit::AuditEntry>,
            ) -> $crate::Result<bool> {
                let mut tx = self.write_tx().await?;
                // Only while the lease is ours: a node that lost it (stalled
                // past it) records nothing and stops.
                let held = sqlx::query(
                    "UPDATE webhooks SET failures = $1, failing_since = $2, \
                     next_attempt_at = $3, disabled_at = $4, lease_until = $5 \
                     WHERE id = $6 AND lease_holder = $7",
                )
                .bind(state.failures)
                .bind(state.failing_since)
                .bind(state.next_attempt_at)
                .bind(state.disabled_at)
                .bind(state.lease_until)
                .bind(webhook_id)
                .bind(node)
                .execute(&mut *tx)
                .await?;
                if held.rows_affected() == 0 {
                    return Ok(false);
                }
                let (n,): (i64,) = sqlx::query_as(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = $1 \
                     WHERE webhook_id = $2 AND audit_seq = $3 RETURNING attempts",
                )
                .bind(attempt.delivered.then_some(attempt.at.saturating_add(attempt.duration_ms)))
                .bind(webhook_id)
                .bind(attempt.audit_seq)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO webhook_attempts (webhook_id, audit_seq, attempt, at, node, \
                     status, error, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(webhook_id)
                .bind(attempt.audit_seq)
                .bind(n)
                .bind(attempt.at)
                .bind(node)
                .bind(attempt.status.map(i64::from))
                .bind(attempt.error.as_deref())
                .bind(attempt.duration_ms)
                .execute(&mut *tx)
                .await?;
                if let Some(audit) = audit {
                    Self::append_audited_tx(&mut tx, &[audit]).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn release_webhook(&self, node: &str, webhook_id: &str) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "UPDATE webhooks SET lease_holder = NULL, lease_until = 0 \
                     WHERE id = $1 AND lease_holder = $2",
                )
                .bind(webhook_id)
                .bind(node)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn deliveries(
                &self,
                webhook_id: &str,
                before: Option<i64>,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::DeliveryRecord>> {
                let rows: Vec<(i64, String, Option<String>, i64, Option<i64>)> = sqlx::query_as(
                    "SELECT o.audit_seq, a.action, a.key_id, o.created_at, o.delivered_at \
                     FROM webhook_outbox o JOIN audit_log a ON a.seq = o.audit_seq \
                     WHERE o.webhook_id = $1 AND o.audit_seq < $2 \
                     ORDER BY o.audit_seq DESC LIMIT $3",
                )
                .bind(webhook_id)
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                let mut out: Vec<$crate::DeliveryRecord> = rows
                    .into_iter()
                    .map(|(audit_seq, event, key_id, created_at, delivered_at)| {
                        $crate::DeliveryRecord {
                            audit_seq,
                            event,
                            key_id,
                            created_at,
                            delivered_at,
                            attempts: Vec::new(),
                        }
                    })
                    .collect();
                let (Some(last), Some(first)) = (out.last(), out.first()) else {
                    return Ok(out);
                };
                let tries: Vec<(i64, i64, i64, String, Option<i64>, Option<String>, i64)> =
                    sqlx::query_as(
                        "SELECT audit_seq, attempt, at, node, status, error, duration_ms \
                         FROM webhook_attempts WHERE webhook_id = $1 \
                         AND audit_seq >= $2 AND audit_seq <= $3 ORDER BY audit_seq, attempt",
                    )
                    .bind(webhook_id)
                    .bind(last.audit_seq)
                    .bind(first.audit_seq)
                    .fetch_all(&self.pool)
                    .await?;
                for (seq, attempt, at, node, status, error, duration_ms) in tries {
                    if let Some(d) = out.iter_mut().find(|d| d.audit_seq == seq) {
                        d.attempts.push($crate::AttemptRecord {
                            attempt,
                            at,
                            node,
                            status: $crate::webhooks::status_of(status),
                            error,
                            duration_ms,
                        });
                    }
                }
                Ok(out)
            }

            async fn prune_deliveries(&self, before: i64) -> $crate::Result<u64> {
                let mut tx = self.write_tx().await?;
                let done = sqlx::query(
                    "DELETE FROM webhook_outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1",
                )
                .bind(before)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }
        }
    };
}
pub(crate) use webhooks_impl;

#[cfg(test)]
mod tests {
    #[test]
    fn the_claim_caps_each_organization_at_its_leases() {
        let sql = due_webhook!("");
        assert!(
            sql.contains(&format!("< {} ", super::LEASES_PER_ORG)),
            "{sql}"
        );
    }
}
