//! What each key did (SPEC §9): hourly counts per key, route and outcome,
//! flushed by every node in batches and added up here.

/// One hour of one key's requests to one route with one outcome: what a
/// node flushes (the requests since its last flush) and what a read
/// returns (every node's, added up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// The key (`key_…`).
    pub key_id: String,
    /// The hour's first unix millisecond.
    pub hour: i64,
    /// The request method.
    pub method: String,
    /// The catalog's route template; empty when no route matched.
    pub route: String,
    /// `allowed`, `forbidden`, `not_found`, `rate_limited` or
    /// `ip_not_allowed`.
    pub outcome: String,
    /// Requests counted.
    pub count: u64,
    /// The latest of them (unix milliseconds).
    pub last_seen: i64,
}

/// A row as both backends read it.
pub(crate) type UsageTuple = (String, i64, String, String, String, i64, i64);

impl UsageRow {
    pub(crate) fn from_tuple(t: UsageTuple) -> Self {
        let (key_id, hour, method, route, outcome, count, last_seen) = t;
        UsageRow {
            key_id,
            hour,
            method,
            route,
            outcome,
            count: crate::limits::uncol(count),
            last_seen,
        }
    }
}
