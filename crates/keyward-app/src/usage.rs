//! What each key really does (SPEC §9): counted on the hot path in memory,
//! written off it in batches, read back as a report and a least-privilege
//! suggestion.
//!
//! A node counts each authenticated request in a cell per key, hour, route,
//! method and outcome: an atomic add in a lock-free map, no allocation once
//! the cell exists. The flush (every `--flush-interval`, at most 10 s, and
//! at shutdown) takes every cell's count since the last one and adds it to
//! the database, where the nodes' counts add up. Cells are bounded per key
//! and hour by the catalog (its routes, 8 methods, 5 outcomes), so no
//! client can grow them at will; cells of past hours are dropped once
//! flushed. A node killed with `kill -9` loses at most the counts since its
//! last flush.

use crate::{App, AppError};
use keyward_core::route::RouteId;
use keyward_core::{Catalog, ScopeSet};
use keyward_store::{Org, Store, UsageRow};
use serde::Serialize;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use utoipa::ToSchema;

/// One hour, in milliseconds: the counting bucket.
pub const HOUR_MS: i64 = 3_600_000;
/// One day, in milliseconds.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The longest range a report or a suggestion covers.
pub const MAX_RANGE_MS: i64 = 400 * DAY_MS;
/// Hourly buckets cover at most this much (about 750 buckets).
pub const MAX_HOURLY_MS: i64 = 31 * DAY_MS;
/// Usage rows written per transaction by [`App::flush_usage`].
pub const FLUSH_CHUNK: usize = 2_000;

/// How a counted request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageOutcome {
    /// Allowed (forwarded, or verify said yes).
    Allowed,
    /// The key lacks a required scope.
    Forbidden,
    /// No route of the catalog matched.
    NotFound,
    /// A limit of the key was spent.
    RateLimited,
    /// From outside the key's networks.
    IpNotAllowed,
}

impl UsageOutcome {
    /// As stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UsageOutcome::Allowed => "allowed",
            UsageOutcome::Forbidden => "forbidden",
            UsageOutcome::NotFound => "not_found",
            UsageOutcome::RateLimited => "rate_limited",
            UsageOutcome::IpNotAllowed => "ip_not_allowed",
        }
    }
}

/// The route a row of keyward's own endpoints (the admin API, verify) is
/// stored under: this prefix and the scopes the endpoint required, space
/// separated (`keyward:keyward-api-keys:read`). Catalog routes start with
/// `/`, so the two never meet.
pub const OWN_ROUTE_PREFIX: &str = "keyward:";

/// A cell's route at and above this marks one of keyward's own endpoints:
/// the low 30 bits hold up to three scope indexes, 10 bits each, plus one
/// (0: none).
const OWN: u32 = 1 << 31;
/// A cell's route when no route matched (or none was asked: verify by
/// scopes).
const NO_ROUTE: u32 = u32::MAX;

/// The route field of an own endpoint requiring `required`.
fn own_route(required: ScopeSet) -> u32 {
    let mut route = OWN;
    for (slot, id) in required.iter().take(3).enumerate() {
        let code = u32::try_from(id.index() + 1).unwrap_or(0) & 0x3ff;
        route |= code << (10 * slot);
    }
    route
}

/// The stored route text of an own-endpoint cell.
fn own_route_text(catalog: &Catalog, route: u32) -> String {
    let names: Vec<&str> = (0..3)
        .map(|slot| (route >> (10 * slot)) & 0x3ff)
        .filter(|code| *code != 0)
        .filter_map(|code| usize::try_from(code - 1).ok())
        .filter_map(|i| catalog.scopes().get(i))
        .map(keyward_core::Scope::name)
        .collect();
    format!("{OWN_ROUTE_PREFIX}{}", names.join(" "))
}

/// Methods counted by name; any other is counted as `OTHER` (a client may
/// send any token as a method, and must not grow the cells with them).
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn method_index(method: &str) -> u8 {
    METHODS
        .iter()
        .position(|m| *m == method)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

fn method_name(index: u8) -> &'static str {
    METHODS.get(usize::from(index)).copied().unwrap_or("OTHER")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CellKey {
    key: u64,
    hour: i64,
    route: u32,
    method: u8,
    outcome: UsageOutcome,
}

#[derive(Debug)]
struct Cell {
    key_id: Box<str>,
    count: AtomicU64,
    last_seen: AtomicI64,
}

/// Hashes a cell key with FxHash's multiply-rotate: keys are made of
/// server-chosen values (a key's hash, an hour, a route index), never of
/// attacker-chosen bytes, so a fast hash is safe.
#[derive(Default)]
struct CellHasher(u64);

impl Hasher for CellHasher {
    fn finish(&self) -> u64 {
        // A multiply leaves the low bits, which pick the table slot, the
        // weakest; rotating brings the well-mixed high bits down (as
        // rustc-hash 2 does).
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n.cast_unsigned());
    }
    fn write_isize(&mut self, n: isize) {
        // An enum's discriminant: one round, not eight.
        self.write_u64(n.cast_unsigned() as u64);
    }
}

/// This node's counts since its last flush.
pub struct Usage {
    cells: papaya::HashMap<CellKey, Cell, BuildHasherDefault<CellHasher>>,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            // Blocking resizes: an incremental one leaves every later
            // lookup walking the old table too until inserts finish moving
            // it, and counting mostly looks up cells that exist (measured:
            // 578 ns a count over 10 000 keys' cells, against 13 ns for a
            // hot one; bench `usage`). A resize now costs the one insert
            // that triggers it a copy of the cells.
            cells: papaya::HashMap::builder()
                .hasher(BuildHasherDefault::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
        }
    }
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage")
            .field("cells", &self.cells.len())
            .finish()
    }
}

/// A key's identity for counting: a hash of its id, computed once per key.
#[must_use]
pub fn usage_id(key_id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key_id.hash(&mut h);
    h.finish()
}

impl Usage {
    /// Counts one request of the key (`usage_id`, `key_id`) at `now`.
    pub fn count(
        &self,
        usage_id: u64,
        key_id: &str,
        route: Option<RouteId>,
        method: &str,
        outcome: UsageOutcome,
        now: i64,
    ) {
        let route = route.map_or(NO_ROUTE, |r| {
            u32::try_from(r)
                .ok()
                .filter(|r| *r < OWN)
                .unwrap_or(NO_ROUTE)
        });
        self.count_route(usage_id, key_id, route, method, outcome, now);
    }

    fn count_route(
        &self,
        usage_id: u64,
        key_id: &str,
        route: u32,
        method: &str,
        outcome: UsageOutcome,
        now: i64,
    ) {
        let key = CellKey {
            key: usage_id,
            hour: now.div_euclid(HOUR_MS) * HOUR_MS,
            route,
            method: method_index(method),
            outcome,
        };
        let cells = self.cells.pin();
        let cell = match cells.get(&key) {
            Some(c) => c,
            None => cells.get_or_insert_with(key, || Cell {
                key_id: key_id.into(),
                count: AtomicU64::new(0),
                last_seen: AtomicI64::new(0),
            }),
        };
        cell.count.fetch_add(1, Ordering::Relaxed);
        cell.last_seen.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts one request of the key to one of keyward's own endpoints
    /// (admin API, verify) requiring `required`: its use of keyward's own
    /// scopes, which the suggestion must see as much as its catalog routes.
    pub fn count_own(
        &self,
        usage_id: u64,
        key_id: &str,
        required: ScopeSet,
        method: &str,
        outcome: UsageOutcome,
        now: i64,
    ) {
        self.count_route(usage_id, key_id, own_route(required), method, outcome, now);
    }

    /// Every count since the last call, as rows to add, and the cells of
    /// hours that ended before the last one dropped.
    pub fn take(&self, catalog: &Catalog, now: i64) -> Vec<UsageRow> {
        let row = |k: &CellKey, cell: &Cell, count: u64| UsageRow {
            key_id: cell.key_id.to_string(),
            hour: k.hour,
            method: method_name(k.method).to_owned(),
            route: if k.route == NO_ROUTE {
                String::new()
            } else if k.route & OWN != 0 {
                own_route_text(catalog, k.route)
            } else {
                usize::try_from(k.route)
                    .ok()
                    .and_then(|i| catalog.routes().get(i))
                    .map_or_else(String::new, |r| r.template().to_owned())
            },
            outcome: k.outcome.as_str().to_owned(),
            count,
            last_seen: cell.last_seen.load(Ordering::Relaxed),
        };
        let cells = self.cells.pin();
        let mut rows = Vec::new();
        let mut old = Vec::new();
        let current = now.div_euclid(HOUR_MS) * HOUR_MS;
        for (k, cell) in &cells {
            let n = cell.count.swap(0, Ordering::AcqRel);
            if n > 0 {
                rows.push(row(k, cell, n));
            }
            if k.hour < current - HOUR_MS {
                old.push(*k);
            }
        }
        for k in old {
            // Nothing counts into an hour that ended over an hour ago; what
            // came in since the swap above is taken with the cell.
            if let Some(cell) = cells.remove(&k) {
                let n = cell.count.swap(0, Ordering::AcqRel);
                if n > 0 {
                    rows.push(row(&k, cell, n));
                }
            }
        }
        rows
    }

    /// Cells held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether no cell is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `GET /v1/keys/{id}/usage`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// The key.
    pub key_id: String,
    /// RFC 3339, inclusive.
    pub since: String,
    /// RFC 3339, exclusive.
    pub until: String,
    /// `hour` or `day`.
    pub granularity: String,
    /// Every bucket of the range, oldest first.
    pub buckets: Vec<UsageBucket>,
    /// Per route and method, busiest first.
    pub routes: Vec<RouteUsage>,
}

/// Requests of one hour or day.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsageBucket {
    /// RFC 3339.
    pub start: String,
    /// Requests allowed.
    pub allowed: u64,
    /// Requests refused after authentication (scopes, route, limits,
    /// networks).
    pub denied: u64,
}

/// One route's requests over the range.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RouteUsage {
    /// The request method.
    pub method: String,
    /// The catalog's route template; empty when no route matched.
    pub route: String,
    /// Scopes the route requires.
    pub required: Vec<String>,
    /// Requests allowed.
    pub allowed: u64,
    /// Requests refused.
    pub denied: u64,
    /// RFC 3339.
    pub last_seen: String,
}

/// `GET /v1/keys/{id}/suggestion`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SuggestionView {
    /// The key.
    pub key_id: String,
    /// The window looked at, as asked (`30d`).
    pub window: String,
    /// Requests counted in the window, allowed or not.
    pub requests: u64,
    /// Scopes the allowed requests required.
    pub used_scopes: Vec<String>,
    /// The key's grants the suggestion drops.
    pub unused_grants: Vec<String>,
    /// The smallest grant list allowing every allowed request.
    pub suggested: SuggestedGrants,
    /// `narrow`, `already_minimal` or `unused`.
    pub verdict: String,
}

/// A grant list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SuggestedGrants {
    /// Scope names.
    pub scopes: Vec<String>,
    /// Permission set ids.
    pub permission_sets: Vec<String>,
}

/// A time as a usage range gives it, from the API's query or the CLI's
/// flag: a duration back from `now` (`30d`), or an RFC 3339 time.
#[must_use]
pub fn point_in_time(text: &str, now: i64) -> Option<i64> {
    match keyward_core::parse_duration_ms(text) {
        Ok(ms) => Some(now.saturating_sub(ms)),
        Err(_) => text
            .parse::<jiff::Timestamp>()
            .ok()
            .map(jiff::Timestamp::as_millisecond),
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// What a stored row's requests required: the scopes of its catalog route
/// (if it still exists), or those an own endpoint names.
fn required_of(catalog: &Catalog, method: &str, route: &str) -> Option<ScopeSet> {
    if let Some(names) = route.strip_prefix(OWN_ROUTE_PREFIX) {
        let names: Vec<&str> = names.split(' ').filter(|n| !n.is_empty()).collect();
        return catalog.scope_set(&names);
    }
    route_of(catalog, method, route).map(keyward_core::catalog::Route::required)
}

/// The catalog route a stored row names, if it still exists.
fn route_of<'c>(
    catalog: &'c Catalog,
    method: &str,
    template: &str,
) -> Option<&'c keyward_core::catalog::Route> {
    catalog
        .routes()
        .iter()
        .find(|r| r.template() == template && r.methods().iter().any(|m| m == method))
}

impl<S: Store> App<S> {
    /// Adds a node's counts to the database, [`FLUSH_CHUNK`] rows per
    /// transaction (so no flush holds SQLite's write lock, or PostgreSQL's
    /// row locks, for long), removing from `rows` what each commit wrote.
    ///
    /// # Errors
    /// Storage failures: `rows` then holds exactly what was not written
    /// (merged), for the caller to retry; nothing is counted twice.
    pub async fn flush_usage(&self, rows: &mut Vec<UsageRow>) -> Result<(), AppError> {
        // One row per cell: a batch may repeat one (kept from a failed
        // flush, or taken twice as its hour closed), and a statement may
        // change a row only once.
        let mut merged =
            std::collections::BTreeMap::<(String, i64, String, String, String), (u64, i64)>::new();
        for r in rows.drain(..) {
            let m = merged
                .entry((r.key_id, r.hour, r.method, r.route, r.outcome))
                .or_default();
            m.0 = m.0.saturating_add(r.count);
            m.1 = m.1.max(r.last_seen);
        }
        rows.extend(merged.into_iter().map(
            |((key_id, hour, method, route, outcome), (count, last_seen))| UsageRow {
                key_id,
                hour,
                method,
                route,
                outcome,
                count,
                last_seen,
            },
        ));
        while !rows.is_empty() {
            let n = rows.len().min(FLUSH_CHUNK);
            self.store.add_usage(&rows[..n]).await?;
            rows.drain(..n);
        }
        Ok(())
    }

    /// Forgets counts older than `retention_ms`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn prune_usage(&self, retention_ms: i64) -> Result<u64, AppError> {
        let before = (self.now() - retention_ms).div_euclid(HOUR_MS) * HOUR_MS;
        Ok(self.store.prune_usage(before).await?)
    }

    /// One key's requests in `[since, until)`, by hour or day
    /// (`day == true`), and by route.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for a key of another organization or none;
    /// storage failures.
    pub async fn key_usage(
        &self,
        org: &Org,
        key_id: &str,
        since: i64,
        until: i64,
        day: bool,
    ) -> Result<UsageReport, AppError> {
        if since >= until {
            return Err(AppError::validation("since", "must be before `until`"));
        }
        if until - since > MAX_RANGE_MS {
            return Err(AppError::validation(
                "since",
                "a report covers at most 400 days",
            ));
        }
        if !day && until - since > MAX_HOURLY_MS {
            return Err(AppError::validation(
                "granularity",
                "hourly buckets cover at most 31 days: ask for `day`",
            ));
        }
        self.show_key(org, key_id).await?;
        let step = if day { DAY_MS } else { HOUR_MS };
        let since = since.div_euclid(step) * step;
        let rows = self.store.key_usage(key_id, since, until).await?;
        let mut buckets: Vec<UsageBucket> = Vec::new();
        let mut start = since;
        let mut totals = std::collections::BTreeMap::<i64, (u64, u64)>::new();
        let mut routes = std::collections::BTreeMap::<(String, String), (u64, u64, i64)>::new();
        for r in &rows {
            let allowed = r.outcome == UsageOutcome::Allowed.as_str();
            let t = totals.entry(r.hour.div_euclid(step) * step).or_default();
            let rt = routes
                .entry((r.method.clone(), r.route.clone()))
                .or_default();
            if allowed {
                t.0 += r.count;
                rt.0 += r.count;
            } else {
                t.1 += r.count;
                rt.1 += r.count;
            }
            rt.2 = rt.2.max(r.last_seen);
        }
        while start < until {
            let (allowed, denied) = totals.get(&start).copied().unwrap_or_default();
            buckets.push(UsageBucket {
                start: rfc3339(start),
                allowed,
                denied,
            });
            start += step;
        }
        let mut routes: Vec<RouteUsage> = routes
            .into_iter()
            .map(|((method, route), (allowed, denied, last))| RouteUsage {
                required: required_of(&self.catalog, &method, &route)
                    .map(|set| {
                        self.catalog
                            .names(set)
                            .into_iter()
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                method,
                route,
                allowed,
                denied,
                last_seen: rfc3339(last),
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.allowed + r.denied));
        Ok(UsageReport {
            key_id: key_id.to_owned(),
            since: rfc3339(since),
            until: rfc3339(until),
            granularity: if day { "day" } else { "hour" }.to_owned(),
            buckets,
            routes,
        })
    }

    /// The least-privilege suggestion for a key from its use in the last
    /// `window_ms` ([`keyward_core::Catalog::suggest`]).
    ///
    /// # Errors
    /// [`AppError::NotFound`]; storage failures.
    pub async fn key_suggestion(
        &self,
        org: &Org,
        key_id: &str,
        window: &str,
        window_ms: i64,
    ) -> Result<SuggestionView, AppError> {
        if !(1_000..=MAX_RANGE_MS).contains(&window_ms) {
            return Err(AppError::validation(
                "window",
                "must be between 1 s and 400 days",
            ));
        }
        let key = self
            .store
            .get_key(&org.id, key_id)
            .await?
            .ok_or_else(|| AppError::NotFound {
                what: "key",
                id: key_id.to_owned(),
            })?;
        let now = self.now();
        // From the start of the hour the window starts in: counts are by
        // the hour.
        let since = (now - window_ms).div_euclid(HOUR_MS) * HOUR_MS;
        let rows = self.store.key_usage(key_id, since, now + HOUR_MS).await?;
        let requests = rows.iter().map(|r| r.count).sum();
        let allowed = || {
            rows.iter()
                .filter(|r| r.outcome == UsageOutcome::Allowed.as_str())
        };
        let mut observed: Vec<ScopeSet> = allowed()
            .filter_map(|r| required_of(&self.catalog, &r.method, &r.route))
            .collect();
        // Use whose scopes are not known keeps every grant: a verify by
        // scopes (no route), or use the counts missed (last used in the
        // window, nothing counted: counts lost to a kill -9, or made before
        // counting began). Never suggest dropping what may be in use.
        let unknown_use = allowed().any(|r| r.route.is_empty())
            || (requests == 0 && key.last_used_at.is_some_and(|at| at >= since));
        if unknown_use {
            let (_, holds, _) = self.catalog.key_holdings(
                key.legacy,
                key.scopes.iter().map(String::as_str),
                key.permission_sets.iter().map(String::as_str),
            );
            observed.push(holds);
        }
        let s = self
            .catalog
            .suggest(key.legacy, &key.scopes, &key.permission_sets, observed);
        let names = |set: ScopeSet| -> Vec<String> {
            self.catalog
                .names(set)
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        Ok(SuggestionView {
            key_id: key_id.to_owned(),
            window: window.to_owned(),
            requests,
            used_scopes: names(s.used),
            unused_grants: s.unused_grants,
            suggested: SuggestedGrants {
                scopes: names(s.scopes),
                permission_sets: s.permission_sets,
            },
            verdict: s.verdict.as_str().to_owned(),
        })
    }
}
