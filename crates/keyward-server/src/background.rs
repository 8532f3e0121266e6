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
    let mut retry_usage: Vec<keyward_app::UsageRow> = Vec::new();
    let (uses, anonymous) = flush_outages();
    let usage = usage_outage();
    let pruning = Outage::new("pruning old usage counts", "they are pruned later");
    let mut pruned_at = 0;
    loop {
        flush.tick().await;
        flush_uses(&state, &mut retry, &uses).await;
        flush_usage(&state, &mut retry_usage, &usage).await;
        flush_anonymous(&state, &mut retry_anonymous, false, &anonymous).await;
        state.metrics.upkeep();
        let now = state.app.now();
        if now - pruned_at >= keyward_app::usage::HOUR_MS {
            pruned_at = now;
            let retention =
                i64::try_from(state.config.usage_retention.as_millis()).unwrap_or(i64::MAX);
            match state.app.prune_usage(retention).await {
                Ok(_) => pruning.recovered(),
                Err(e) => pruning.failed(&e, 0),
            }
        }
    }
}

/// The log line of the usage flush.
pub(crate) fn usage_outage() -> Outage {
    Outage::new(
        "writing usage counts",
        "they are kept (up to a bound) and retried",
    )
}

/// Adds this node's usage counts since the last flush to the database;
/// keeps them for the next attempt if storage fails, up to a bound.
pub(crate) async fn flush_usage(
    state: &State,
    retry: &mut Vec<keyward_app::UsageRow>,
    outage: &Outage,
) {
    retry.extend(state.usage.take(state.app.catalog(), state.app.now()));
    if retry.is_empty() {
        return;
    }
    match state.app.flush_usage(retry).await {
        Ok(()) => outage.recovered(),
        Err(e) => {
            // `retry` holds what was not written, one row per cell; kept
            // for the next flush within a bound.
            outage.failed(&e, retry.len());
            let excess = retry.len().saturating_sub(100_000);
            retry.drain(..excess);
        }
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

/// Exchanges limit leases with the other nodes, until aborted (only where
/// limits are shared: several nodes on PostgreSQL). Alone in its task, so
/// neither the sync nor a slow flush delays it; each exchange is bounded by
/// the store's deadline, and while none succeeds the node keeps enforcing
/// its leases and its share of each new window.
pub(crate) async fn limits_loop(state: Arc<State>) {
    let sharing = state.snapshot.sharing();
    if !sharing.is_shared() {
        return;
    }
    let mut tick = tokio::time::interval(state.config.limit_exchange_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outage = Outage::new(
        "exchanging limit leases",
        "each key's limits are enforced with this node's share until it is back",
    );
    let forget = Outage::new("forgetting ended limit windows", "they are forgotten later");
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        match state
            .app
            .exchange_limits(sharing, &state.node, limits_alive_ms(&state.config))
            .await
        {
            Ok(_) => outage.recovered(),
            Err(e) => outage.failed(&e, 0),
        }
        limits_gauges(&state);
        ticks = ticks.wrapping_add(1);
        // About once a minute at the default interval.
        if ticks.is_multiple_of(600) {
            match state.app.forget_leases().await {
                Ok(()) => forget.recovered(),
                Err(e) => forget.failed(&e, 0),
            }
        }
    }
}

/// How long the other nodes count this one present after an exchange: as
/// long as it may go on deciding alone (its `--max-staleness`), with a
/// margin for clocks and a slow exchange.
pub(crate) fn limits_alive_ms(config: &crate::config::Config) -> i64 {
    let staleness = i64::try_from(config.max_staleness.as_millis()).unwrap_or(i64::MAX);
    staleness.saturating_add(10_000)
}

/// How this node's limits are enforced now ([`keyward_app::Sharing::mode`]),
/// for `/healthz` and `/metrics`.
pub(crate) fn limits_mode(state: &State) -> &'static str {
    state.snapshot.sharing().mode(state.app.now())
}

/// Sets the limit-sharing gauges: after each exchange, and when scraped
/// (an exchange waiting on a silent database must not hide that).
pub(crate) fn limits_gauges(state: &State) {
    if !state.snapshot.sharing().is_shared() {
        return;
    }
    let sharing = state.snapshot.sharing();
    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
    state.metrics.limit_nodes.set(sharing.nodes() as f64);
    state
        .metrics
        .limit_sharing
        .set(if limits_mode(state) == "shared" {
            1.0
        } else {
            0.0
        });
    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
    state
        .metrics
        .limit_exchange_age
        .set((state.app.now() - sharing.last_ok_ms()) as f64 / 1000.0);
}

/// Hands this node's unused leases back and leaves (a clean shutdown), so
/// the other nodes may admit what it held at once.
pub(crate) async fn leave_limits(state: &State) {
    let sharing = state.snapshot.sharing();
    if !sharing.is_shared() {
        return;
    }
    if let Err(e) = state.app.leave_limits(sharing, &state.node).await {
        tracing::warn!(error = %e, "could not hand back limit leases; other nodes count this one present until its time passes");
    }
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

/// Applies every organization's key policy each `--policy-interval`, when
/// this node holds the policy duty (one node at a time; held for two
/// intervals, so a node that stops is replaced within them), until aborted.
pub(crate) async fn policy_loop(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.config.policy_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hold = i64::try_from(state.config.policy_interval.as_millis())
        .unwrap_or(i64::MAX / 4)
        .saturating_mul(2);
    let outage = Outage::new("applying the key policy", "it is applied again next time");
    // The first run one interval after start, not during it: a starting
    // node has its snapshot to load and its first requests to audit.
    tick.tick().await;
    loop {
        tick.tick().await;
        match state.app.apply_policies(&state.node, hold).await {
            Ok(None) => outage.recovered(),
            Ok(Some(runs)) => {
                outage.recovered();
                for (org, run) in runs {
                    if !run.revoked.is_empty() || !run.flagged.is_empty() {
                        tracing::info!(
                            org = %org.id,
                            flagged = run.flagged.len(),
                            revoked = run.revoked.len(),
                            "key policy applied"
                        );
                    }
                }
            }
            Err(e) => outage.failed(&e, 0),
        }
    }
}

/// The end of a node, served or embedded: its background work stopped,
/// then what is pending written (last uses, usage, anonymous counts, limit
/// leases handed back) and the audit writer drained.
pub(crate) async fn finish(
    state: Arc<State>,
    background: Vec<tokio::task::JoinHandle<()>>,
    audit_task: tokio::task::JoinHandle<()>,
) {
    for task in background {
        task.abort();
        let _ = task.await;
    }
    let (uses, anonymous) = flush_outages();
    flush_uses(&state, &mut Vec::new(), &uses).await;
    flush_usage(&state, &mut Vec::new(), &usage_outage()).await;
    flush_anonymous(&state, &mut Vec::new(), true, &anonymous).await;
    leave_limits(&state).await;
    // The last reference to the audit writer goes with the state; the
    // writer then commits what is queued and stops.
    drop(state);
    if tokio::time::timeout(std::time::Duration::from_secs(10), audit_task)
        .await
        .is_err()
    {
        tracing::error!("audit writer did not finish within 10s");
    }
}
