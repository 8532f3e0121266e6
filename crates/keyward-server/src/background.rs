//! The node's background work, in two tasks: the snapshot sync alone in
//! one (nothing may delay what keeps the node fresh), the flushes of
//! last-use times and anonymous counts and the metrics upkeep in the other.

use crate::state::State;
use crate::telemetry::Outage;
use keyward_core::audit::AuditEntry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

/// Snapshot sync, until aborted. Where the store notifies of changes
/// (PostgreSQL), a notification triggers a sync at once; the timed sync
/// stays, so a missed notification costs at most one interval. Alone in
/// its task: no other background work (flushes that may wait on a lock)
/// can delay the sync that keeps this node fresh.
pub(crate) async fn sync_loop(state: Arc<State>) {
    let mut sync = tokio::time::interval(state.config.sync_interval);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let listening = Outage::new("listening for change notifications", "polling only");
    let mut notifier = listen(&state, &listening).await;
    let mut ticks: u32 = 0;
    let outage = Outage::new(
        "reading the change log",
        "serving from the snapshot until it is older than --max-staleness",
    );
    loop {
        tokio::select! {
            _ = sync.tick() => {
                sync_once(&state, &outage).await;
                ticks = ticks.wrapping_add(1);
                // Re-listen now and then after a failure (never on SQLite,
                // which has nothing to listen to and answers at once).
                if notifier.is_none() && ticks.is_multiple_of(20) {
                    notifier = listen(&state, &listening).await;
                }
            }
            woke = notified(&mut notifier) => match woke {
                Ok(()) => sync_once(&state, &outage).await,
                Err(e) => {
                    tracing::warn!(error = %e, "change notifications lost; polling until they are back");
                    notifier = None;
                }
            },
        }
    }
}

/// Last-use and anonymous-count flushes and metrics upkeep, until aborted.
pub(crate) async fn flush_loop(state: Arc<State>) {
    let mut flush = tokio::time::interval(state.config.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry: Vec<(String, i64)> = Vec::new();
    let mut retry_anonymous: Vec<AuditEntry> = Vec::new();
    let (uses, anonymous) = flush_outages();
    loop {
        flush.tick().await;
        flush_uses(&state, &mut retry, &uses).await;
        flush_anonymous(&state, &mut retry_anonymous, false, &anonymous).await;
        state.metrics.upkeep();
    }
}

async fn listen(state: &State, outage: &Outage) -> Option<keyward_app::ChangeNotifier> {
    match state.app.change_notifier().await {
        Ok(n) => {
            outage.recovered();
            n
        }
        Err(e) => {
            outage.failed(&e, 0);
            None
        }
    }
}

async fn notified(
    notifier: &mut Option<keyward_app::ChangeNotifier>,
) -> Result<(), keyward_app::StoreError> {
    match notifier {
        Some(n) => n.wait().await,
        None => std::future::pending().await,
    }
}

async fn sync_once(state: &State, outage: &Outage) {
    let started = state.app.now();
    state
        .sync_answers
        .store(state.snapshot.answers(), Ordering::Release);
    state.sync_started_ms.store(started, Ordering::Release);
    let result = state.app.sync_snapshot(&state.snapshot).await;
    state.sync_started_ms.store(0, Ordering::Release);
    let mut error = state
        .sync_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match result {
        Ok(n) => {
            state.note_sync_ok(started);
            state.sync_failed.store(false, Ordering::Release);
            *error = None;
            outage.recovered();
            if n > 0 {
                tracing::debug!(
                    changes = n,
                    version = state.snapshot.version(),
                    "snapshot synced"
                );
            }
        }
        Err(e) => {
            state.sync_failed.store(true, Ordering::Release);
            outage.failed(&e, 0);
            *error = Some(e.to_string());
        }
    }
    drop(error);
    #[expect(clippy::cast_precision_loss, reason = "a gauge; exact to 2^53 keys")]
    state.metrics.snapshot_keys.set(state.snapshot.len() as f64);
    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
    state
        .metrics
        .snapshot_version
        .set(state.snapshot.version() as f64);
    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
    state
        .metrics
        .sync_lag
        .set(state.snapshot_age_ms() as f64 / 1000.0);
}

/// The log lines of the two flushes.
pub(crate) fn flush_outages() -> (Outage, Outage) {
    (
        Outage::new("writing last-use times", "they are kept and retried"),
        Outage::new(
            "writing counts of unauthenticated requests",
            "they are kept (up to a bound) and retried",
        ),
    )
}

/// Writes last-use times; keeps them for the next attempt if storage fails.
pub(crate) async fn flush_uses(state: &State, retry: &mut Vec<(String, i64)>, outage: &Outage) {
    retry.extend(state.snapshot.take_uses());
    if retry.is_empty() {
        return;
    }
    match state.app.flush_uses(retry).await {
        Ok(()) => {
            retry.clear();
            outage.recovered();
        }
        Err(e) => {
            outage.failed(&e, retry.len());
            // Bound memory while storage is down: keep the latest per key.
            if retry.len() > 100_000 {
                retry.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                retry.dedup_by(|a, b| a.0 == b.0);
            }
        }
    }
}

/// Writes the counts of unauthenticated refusals whose minute has passed
/// (all of them at shutdown); keeps them for the next attempt if storage
/// fails, up to a bound.
pub(crate) async fn flush_anonymous(
    state: &State,
    retry: &mut Vec<AuditEntry>,
    all: bool,
    outage: &Outage,
) {
    retry.extend(state.anonymous.take(state.app.now(), all));
    if retry.is_empty() {
        return;
    }
    match state.app.record(retry).await {
        Ok(()) => {
            retry.clear();
            outage.recovered();
        }
        Err(e) => {
            outage.failed(&e, retry.len());
            let excess = retry.len().saturating_sub(crate::audit::MAX_TALLIES);
            retry.drain(..excess);
        }
    }
}
