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
use std::sync::Arc;
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
