//! Group commit for request audit records.
//!
//! A request hands its record to one writer task and waits for the
//! acknowledgement before its response is sent. The writer takes every record
//! queued while the previous transaction was committing and writes them in
//! one transaction, so under load many requests share one commit (and one
//! fsync) instead of serialising on the chain head. Acknowledged means
//! committed: nothing a client saw answered is missing from the chain.

use crate::telemetry::Outage;
use keyward_app::AnyStore;
use keyward_app::App;
use keyward_core::audit::AuditEntry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// How often the writer tries the database again while it is failing.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Hands records to the writer task, and says whether writes may proceed.
pub struct AuditWriter {
    tx: mpsc::Sender<(AuditEntry, Ack)>,
    health: Arc<Health>,
}

/// Whether the last audit batch committed, and what the outage cost.
struct Health {
    ok: AtomicBool,
    /// Writes refused unforwarded since the outage began.
    refused: AtomicU64,
    /// When the batch being committed started (ms since `base`, plus one;
    /// 0 while none is): one that takes longer than [`SLOW_BATCH`] counts
    /// as a failure already, so writes stop being forwarded while the
    /// database is silent, not only once the deadline has passed.
    batch_started: AtomicU64,
    base: std::time::Instant,
}

/// A batch still uncommitted after this long stops forwarding writes.
const SLOW_BATCH: u64 = 500;

impl Health {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

/// Who the writer is, for the record that closes an outage.
pub struct WriterIdentity {
    /// This node's id (request ids start with it).
    pub node: String,
    /// The organization a node-level record is filed under.
    pub org_id: String,
}

impl AuditWriter {
    /// Starts the writer task over `app`.
    pub fn start(
        app: Arc<App<AnyStore>>,
        metrics: Arc<crate::telemetry::Metrics>,
        identity: WriterIdentity,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let health = Arc::new(Health {
            ok: AtomicBool::new(true),
            refused: AtomicU64::new(0),
            batch_started: AtomicU64::new(0),
            base: crate::telemetry::monotonic(),
        });
        let task = tokio::spawn(write_loop(app, metrics, rx, health.clone(), identity));
        (AuditWriter { tx, health }, task)
    }

    /// Whether audit records are being committed. While they are not, a
    /// write must be refused before it is forwarded: otherwise the upstream
    /// what happened. Also false while a batch has been committing for
    /// longer than [`SLOW_BATCH`] ms. Set again by the next batch that
    /// commits (the writer tries every [`PROBE_EVERY`]).
    pub fn healthy(&self) -> bool {
        if !self.health.ok.load(Ordering::Acquire) {
            return false;
        }
        let started = self.health.batch_started.load(Ordering::Acquire);
        started == 0 || self.health.now().saturating_sub(started) < SLOW_BATCH
    }

    /// Counts a write refused because the audit is failing (reported in the
    /// record that ends the outage).
    pub fn note_refused(&self) {
        self.health.refused.fetch_add(1, Ordering::Relaxed);
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
        // Never longer than one database call may take: a record queued
        // behind a batch that is itself waiting for a silent database would
        // otherwise wait for two deadlines. A record committed after its
        // request gave up is still in the chain; only the converse matters
        // (nothing answered 2xx is missing).
        match tokio::time::timeout(crate::config::STORE_DEADLINE, done).await {
            Ok(Ok(true)) => Ok(()),
            _ => Err(AuditUnavailable),
        }
    }
}

async fn write_loop(
    app: Arc<App<AnyStore>>,
    metrics: Arc<crate::telemetry::Metrics>,
    mut rx: mpsc::Receiver<(AuditEntry, Ack)>,
    health: Arc<Health>,
    identity: WriterIdentity,
) {
    let mut entries = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::with_capacity(MAX_BATCH);
    let outage = Outage::new(
        "audit writes",
        "their requests are answered 503 and writes are refused unforwarded until a batch commits",
    );
    // When the current outage began (unix ms), while there is one.
    let mut failing_since: Option<i64> = None;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut acks, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            // Only while failing: nothing else would try again once writes
            // are refused.
            _ = probe.tick(), if failing_since.is_some() => {}
        }
        entries.extend(acks.iter_mut().map(|(e, _)| std::mem::take(e)));
        if let Some(since) = failing_since {
            // The batch that ends an outage says what it cost, in the chain:
            // the writes refused until this retry began (not those refused
            // while it runs, usually milliseconds; every refusal is in the
            // `AUDIT_UNAVAILABLE` metric).
            entries.push(keyward_app::audit_resumed_entry(
                &identity.node,
                &identity.org_id,
                app.now(),
                since,
                health.refused.load(Ordering::Relaxed),
            ));
        }
        health.batch_started.store(health.now(), Ordering::Release);
        let attempted_at = app.now();
        let result = app.record(&entries).await;
        health.batch_started.store(0, Ordering::Release);
        let ok = match result {
            Ok(()) => {
                metrics.audit_records.increment(entries.len() as u64);
                metrics.audit_batches.increment(1);
                // Refusals of a slow spell that ended without a failure are
                // in the metrics only; the count restarts either way.
                health.refused.store(0, Ordering::Relaxed);
                if failing_since.take().is_some() {
                    health.ok.store(true, Ordering::Release);
                    outage.recovered();
                }
                true
            }
            Err(e) => {
                if failing_since.is_none() {
                    // The outage began when the failed batch did.
                    failing_since = Some(attempted_at);
                    health.ok.store(false, Ordering::Release);
                    probe.reset();
                }
                outage.failed(&e, entries.len());
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

    /// Counts one refusal; `entry` is its would-be record. Counted per
    /// client, minute and status.
    pub fn note(&self, entry: AuditEntry, now_ms: i64) {
        let client = entry.client.clone().unwrap_or_default();
        self.note_as(client, entry, now_ms);
    }

    /// Counts one refusal under `who` (a client, or a key and its limit
    /// for rate-limited requests: `key_…/burst`), per minute and status.
    pub fn note_as(&self, who: String, entry: AuditEntry, now_ms: i64) {
        let minute = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let status = entry.status.unwrap_or(0);
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = (who, minute, status, entry.action.clone());
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
            let (who, minute, _, _) = key;
            // A keyed tally (rate limits) keeps its sample's client; an
            // anonymous one is by client.
            let client = if t.sample.key_id.is_some() {
                t.sample.client.clone()
            } else {
                (who != OTHER_CLIENTS).then_some(who)
            };
            out.push(keyward_app::tally_entry(
                t.sample, client, minute, t.count, now_ms,
            ));
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
