//! The state every request shares: the snapshot, the app, the audit writer,
//! and what the node knows of its database's health.

use crate::audit::{self, AnonymousTally, AuditWriter};
use crate::config::Config;
use crate::error::ApiError;
use crate::proxy;
use crate::telemetry::{Metrics, Outage, RequestIds};
use http::StatusCode;
use http::header::HeaderMap;
use keyward_app::{AnyStore, App, AppError, Snapshot};
use keyward_core::ScopeSet;
use keyward_core::audit::AuditEntry;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// State shared by every request.
pub(crate) struct State {
    pub(crate) app: Arc<App<AnyStore>>,
    pub(crate) snapshot: Snapshot,
    pub(crate) config: Config,
    pub(crate) upstream: Option<Arc<proxy::Upstream>>,
    pub(crate) audit: AuditWriter,
    /// Refusals of unauthenticated requests, counted instead of chained.
    pub(crate) anonymous: AnonymousTally,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) request_ids: RequestIds,
    /// This node's counts of each key's requests since the last flush.
    pub(crate) usage: keyward_app::usage::Usage,
    /// This process's id: request ids start with it, and it is the node
    /// other nodes see sharing limits.
    pub(crate) node: String,
    pub(crate) default_org: String,
    pub(crate) verify_scope: ScopeSet,
    /// When the snapshot was last known to hold everything committed (the
    /// start of the last sync that caught up): its age is how far behind
    /// the change log this node may be.
    pub(crate) last_sync_ms: AtomicI64,
    /// When the database last answered the sync now running (its start, or
    /// its latest page; 0: none is running): a sync that has heard nothing
    /// for long means the database is not answering.
    pub(crate) sync_started_ms: AtomicI64,
    /// `Snapshot::answers` when `sync_started_ms` was set.
    pub(crate) sync_answers: std::sync::atomic::AtomicU64,
    pub(crate) sync_error: Mutex<Option<String>>,
    /// The last sync failed (what `sync_error` says, readable without a lock
    /// on the write path).
    pub(crate) sync_failed: std::sync::atomic::AtomicBool,
    /// Lookups of unknown keys that could not reach the database, logged
    /// once per outage.
    pub(crate) lookups: Outage,
    /// When the audit chain was last verified, and whether it held.
    pub(crate) chain_check: tokio::sync::Mutex<Option<(i64, bool)>>,
    /// GitHub's secret scanning keys (`--github-scanning-keys`); without
    /// them the partner endpoint is not served.
    pub(crate) github: Option<crate::github::GithubKeyFile>,
}

impl State {
    /// 431 when the request's headers are larger than configured.
    pub(crate) fn check_headers(&self, headers: &HeaderMap) -> Option<ApiError> {
        let total: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        (total > self.config.max_header_bytes).then(|| {
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "REQUEST_HEADER_FIELDS_TOO_LARGE",
                format!(
                    "Request headers total {total} bytes; the limit is {}",
                    self.config.max_header_bytes
                ),
            )
            .detail("limit_bytes", self.config.max_header_bytes)
        })
    }

    /// Milliseconds since the snapshot last caught up with the change log.
    pub(crate) fn snapshot_age_ms(&self) -> i64 {
        self.snapshot_age_ms_at(self.app.now())
    }

    pub(crate) fn snapshot_age_ms_at(&self, now: i64) -> i64 {
        now - self.last_sync_ms.load(Ordering::Acquire)
    }

    /// 503 when the snapshot is too old to trust (revocations may be missed).
    pub(crate) fn stale(&self) -> Option<ApiError> {
        self.stale_at(self.app.now())
    }

    /// [`State::stale`] at `now`, for a request that has read the clock.
    pub(crate) fn stale_at(&self, now: i64) -> Option<ApiError> {
        let age = self.snapshot_age_ms_at(now);
        let max = i64::try_from(self.config.max_staleness.as_millis()).unwrap_or(i64::MAX);
        (age > max).then(|| {
            ApiError::unavailable(format!(
                "This node has not reached the database for {}s and will not decide on possibly revoked keys",
                age / 1000
            ))
            .detail("snapshot_age_ms", age)
        })
    }

    /// Whether the audit chain verifies, checked at most once a minute per
    /// node: verification reads the whole log, and the console's audit page
    /// must not let anyone make the node do that on every request.
    pub(crate) async fn chain_verified(&self) -> Result<bool, AppError> {
        let mut last = self.chain_check.lock().await;
        let now = self.app.now();
        if let Some((at, ok)) = *last
            && now - at < 60_000
        {
            return Ok(ok);
        }
        let ok = self
            .app
            .verify_audit(&mut |_| {})
            .await?
            .first_broken
            .is_none();
        *last = Some((now, ok));
        Ok(ok)
    }

    /// The snapshot holds everything committed before `as_of` (the time a
    /// sync that has now caught up started).
    pub(crate) fn note_sync_ok(&self, as_of: i64) {
        self.last_sync_ms.fetch_max(as_of, Ordering::AcqRel);
    }

    /// Whether the database looks unreachable from here: the last sync
    /// failed, or the one running has had no answer for [`UNANSWERED`].
    /// Writes are then refused before they are forwarded, as when the audit
    /// fails: their records would not be written either.
    pub(crate) fn database_down(&self) -> bool {
        self.sync_failed.load(Ordering::Acquire) || self.sync_silent().is_some()
    }

    /// How long the running sync has waited for a first or next answer, if
    /// that is at least [`UNANSWERED`].
    pub(crate) fn sync_silent(&self) -> Option<i64> {
        let started = self.sync_started_ms.load(Ordering::Acquire);
        if started == 0 {
            return None;
        }
        let now = self.app.now();
        // A long sync that keeps getting pages is catching up, not stuck:
        // restart the count from now.
        let answers = self.snapshot.answers();
        if self.sync_answers.swap(answers, Ordering::AcqRel) != answers {
            // Unless the sync ended meanwhile (then it stays 0).
            let _ = self.sync_started_ms.compare_exchange(
                started,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return None;
        }
        let waited = now - started;
        let unanswered = i64::try_from(UNANSWERED.as_millis()).unwrap_or(i64::MAX);
        (waited >= unanswered).then_some(waited)
    }

    /// Why the database looks unreachable from here, if it does: the last
    /// sync failed, or the one running has had no answer for
    /// [`UNANSWERED`] (a black-holed database never fails, it just does
    /// not answer, and the deadline is longer).
    pub(crate) fn database_error(&self) -> Option<String> {
        if let Some(e) = self
            .sync_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Some(e);
        }
        self.sync_silent()
            .map(|waited| format!("the change log has not answered for {waited} ms"))
    }

    /// Boxed: the wait for the group commit is large, and inline it would
    /// grow every request's future (moved by hyper on each request), audited
    /// or not, to its size.
    pub(crate) fn record(
        &self,
        mut entry: AuditEntry,
    ) -> Pin<Box<dyn Future<Output = Result<(), audit::AuditUnavailable>> + Send + '_>> {
        entry.at_ms = self.app.now();
        Box::pin(self.audit.record(entry))
    }
}

/// How long a sync may wait for the database before `/healthz` reports it
/// unreachable.
pub(crate) const UNANSWERED: Duration = Duration::from_millis(500);
