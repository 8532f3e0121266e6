//! Group commit for request audit records.
//!
//! A request hands its record to one writer task and waits for the
//! acknowledgement before its response is sent. The writer takes every record
//! queued while the previous transaction was committing and writes them in
//! one transaction, so under load many requests share one commit (and one
//! fsync) instead of serialising on the chain head. Acknowledged means
//! committed: nothing a client saw answered is missing from the chain.

use keyward_app::App;
use keyward_core::audit::AuditEntry;
use keyward_store::AnyStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Records per transaction, at most.
const MAX_BATCH: usize = 1024;
/// Records waiting for a transaction, at most; beyond it, requests wait.
const QUEUE: usize = 16 * 1024;

type Ack = oneshot::Sender<bool>;

/// The audit record could not be committed.
#[derive(Debug, thiserror::Error)]
#[error("the audit log could not be written")]
pub struct AuditUnavailable;

/// Hands records to the writer task.
pub struct AuditWriter {
    tx: mpsc::Sender<(AuditEntry, Ack)>,
}

impl AuditWriter {
    /// Starts the writer task over `app`.
    pub fn start(
        app: Arc<App<AnyStore>>,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(app, metrics, rx));
        (AuditWriter { tx }, task)
    }

    /// Records `entry`; returns once it is committed.
    ///
    /// # Errors
    /// [`AuditUnavailable`] when the transaction failed or the writer stopped.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), AuditUnavailable> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((entry, ack))
            .await
            .map_err(|_| AuditUnavailable)?;
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(AuditUnavailable),
        }
    }
}

async fn write_loop(
    app: Arc<App<AnyStore>>,
    metrics: Arc<crate::telemetry::Metrics>,
    mut rx: mpsc::Receiver<(AuditEntry, Ack)>,
) {
    let mut entries = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut acks, MAX_BATCH).await > 0 {
        entries.extend(acks.iter_mut().map(|(e, _)| std::mem::take(e)));
        let ok = match app.record(&entries).await {
            Ok(()) => {
                metrics.audit_records.increment(entries.len() as u64);
                metrics.audit_batches.increment(1);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, records = entries.len(), "audit records could not be written; their requests are refused");
                false
            }
        };
        for (_, ack) in acks.drain(..) {
            let _ = ack.send(ok);
        }
        entries.clear();
    }
}

/// Refusals of requests nobody authenticated (no key, a malformed or unknown
/// one, a path or headers refused before authentication), counted per
/// client address, minute and status instead of one chained record each: a
/// flood of anonymous writes must not grow the audit log at will. Each
/// count becomes one record (`gateway.unauthenticated`) when its minute has
/// passed, carrying the count and the first request as a sample.
///
/// Memory is bounded: beyond [`MAX_TALLIES`] distinct client addresses in a
/// minute, the rest are counted together under the client `*`.
pub struct AnonymousTally {
    tallies: Mutex<HashMap<TallyKey, Tally>>,
}

/// Client address, minute, status, action.
type TallyKey = (String, i64, u16, String);

/// Distinct (client, minute, status) counts held at once.
pub const MAX_TALLIES: usize = 10_000;
/// The client under which refusals beyond [`MAX_TALLIES`] are counted.
pub const OTHER_CLIENTS: &str = "*";
const MINUTE_MS: i64 = 60_000;

struct Tally {
    count: u64,
    sample: AuditEntry,
}

impl AnonymousTally {
    /// An empty tally.
    pub fn new() -> Self {
        AnonymousTally {
            tallies: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one refusal; `entry` is its would-be record.
    pub fn note(&self, entry: AuditEntry, now_ms: i64) {
        let minute = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let status = entry.status.unwrap_or(0);
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = (
            entry.client.clone().unwrap_or_default(),
            minute,
            status,
            entry.action.clone(),
        );
        if tallies.len() >= MAX_TALLIES && !tallies.contains_key(&key) {
            key.0 = OTHER_CLIENTS.to_owned();
        }
        tallies
            .entry(key)
            .and_modify(|t| t.count += 1)
            .or_insert(Tally {
                count: 1,
                sample: entry,
            });
    }

    /// The records of every minute that ended before `now_ms` (of every
    /// minute, when `all`: at shutdown), removed from the tally.
    pub fn take(&self, now_ms: i64, all: bool) -> Vec<AuditEntry> {
        let current = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let done: Vec<_> = tallies
            .keys()
            .filter(|(_, minute, _, _)| all || *minute < current)
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(done.len());
        for key in done {
            let Some(t) = tallies.remove(&key) else {
                continue;
            };
            let (client, minute, _, action) = key;
            let sample: serde_json::Value =
                serde_json::from_str(&t.sample.details).unwrap_or_default();
            // A gateway request nobody authenticated is recorded as such;
            // other counted refusals (throttled sign-ins) keep their action.
            let action = if action == "gateway.request" {
                "gateway.unauthenticated".to_owned()
            } else {
                action
            };
            out.push(AuditEntry {
                at_ms: now_ms,
                actor: "anonymous".to_owned(),
                action,
                key_id: None,
                client: (client != OTHER_CLIENTS).then_some(client),
                details: serde_json::json!({
                    "count": t.count,
                    "minute_start_ms": minute,
                    "sample": sample,
                })
                .to_string(),
                ..t.sample
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(client: &str, path: &str) -> AuditEntry {
        AuditEntry {
            org_id: "org_1".into(),
            actor: "anonymous".into(),
            action: "gateway.request".into(),
            method: Some("POST".into()),
            path: Some(path.into()),
            status: Some(401),
            client: Some(client.into()),
            details: r#"{"reason":"missing"}"#.into(),
            ..AuditEntry::default()
        }
    }

    #[test]
    fn refusals_are_counted_per_client_and_minute() {
        let t = AnonymousTally::new();
        for i in 0..300 {
            t.note(refusal("10.0.0.1", &format!("/p{i}")), 60_000 + i);
        }
        t.note(refusal("10.0.0.2", "/q"), 60_500);
        t.note(refusal("10.0.0.1", "/later"), 120_001);
        // The minute has not ended: nothing yet.
        assert!(t.take(119_999, false).is_empty());
        let mut records = t.take(120_002, false);
        records.sort_by(|a, b| a.client.cmp(&b.client));
        assert_eq!(records.len(), 2);
        let first: serde_json::Value = serde_json::from_str(&records[0].details).unwrap();
        assert_eq!(first["count"], 300);
        assert_eq!(first["minute_start_ms"], 60_000);
        assert_eq!(first["sample"]["reason"], "missing");
        assert_eq!(records[0].path.as_deref(), Some("/p0"));
        assert_eq!(records[0].action, "gateway.unauthenticated");
        // The running minute comes out at shutdown.
        let rest = t.take(120_003, true);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].path.as_deref(), Some("/later"));
        assert!(t.take(i64::MAX / 2, true).is_empty());
    }

    #[test]
    fn many_clients_share_one_bounded_tally() {
        let t = AnonymousTally::new();
        for i in 0..(MAX_TALLIES + 500) {
            t.note(refusal(&format!("client-{i}"), "/x"), 0);
        }
        let records = t.take(60_000, false);
        assert_eq!(records.len(), MAX_TALLIES + 1);
        let other = records
            .iter()
            .find(|r| r.client.is_none())
            .expect("the `*` tally");
        let doc: serde_json::Value = serde_json::from_str(&other.details).unwrap();
        assert_eq!(doc["count"], 500);
    }
}
