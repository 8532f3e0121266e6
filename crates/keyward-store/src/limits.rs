//! Limits on keys in storage (SPEC §8): how a key's limits and networks are
//! stored, and the leases by which several nodes share them (docs/design.md,
//! "Limits across nodes"): the values the app layer exchanges with storage,
//! and the per-row rule both backends apply atomically.
//!
//! One row per key, limit and window holds `claimed`, the requests of that
//! window leased to nodes, and `nodes`, how many nodes have turned their
//! share into a lease there. A node that has not yet asked in a window may
//! admit a small share unasked ([`unasked_share`]: a twentieth of the limit
//! split among the `n` nodes present), so the rows hold that much back for
//! every present node that has not asked:
//!
//! ```text
//! share = unasked_share(requests, n)
//! held  = (n - nodes) * share                 when n > nodes, else 0
//! room  = max(requests - claimed - held, 0)
//! first ask:  granted = max(floor, min(want, own + room)), nodes + 1
//!             (own = share when n > nodes: its own share was held)
//! otherwise:  granted = min(want, room), claimed - release
//!             (and nodes - 1 when the node is leaving)
//! claimed    += granted
//! ```
//!
//! Each row changes in one statement that reads its newest version (a
//! concurrent change is waited for, then re-read), so `claimed` stays at
//! most `requests` while the nodes agree on `n`, whatever the interleaving.
//! A lost answer (a timeout after the commit) leaves more claimed than the
//! node uses: fewer requests admitted, never more.

use crate::{Result, StoreError};

/// Limits as stored: `NAME=REQUESTS/PER`, space-separated, in the order
/// given ([`keyward_core::limits::Limit::parse_flag`] reads each back).
#[must_use]
pub fn limits_text(limits: &[keyward_core::limits::Limit]) -> String {
    let parts: Vec<String> = limits
        .iter()
        .map(|l| format!("{}={}/{}", l.name, l.requests, l.per()))
        .collect();
    parts.join(" ")
}

/// Networks as stored: CIDRs, space-separated, in the order given.
#[must_use]
pub fn cidrs_text(networks: &[keyward_core::limits::Network]) -> String {
    let parts: Vec<String> = networks.iter().map(ToString::to_string).collect();
    parts.join(" ")
}

/// Reads [`limits_text`] back.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the key when the text is not what this
/// crate writes.
pub fn parse_limits(key_id: &str, text: &str) -> Result<Vec<keyward_core::limits::Limit>> {
    text.split_ascii_whitespace()
        .map(|part| {
            keyward_core::limits::Limit::parse_flag("limits", part)
                .map_err(|e| StoreError::Corrupt(format!("key `{key_id}` has a bad limit: {e}")))
        })
        .collect()
}

/// Reads [`cidrs_text`] back.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the key when the text is not what this
/// crate writes.
pub fn parse_cidrs(key_id: &str, text: &str) -> Result<Vec<keyward_core::limits::Network>> {
    text.split_ascii_whitespace()
        .map(|part| {
            keyward_core::limits::Network::parse("allowed_cidrs", part)
                .map_err(|e| StoreError::Corrupt(format!("key `{key_id}` has a bad network: {e}")))
        })
        .collect()
}

/// Of the limit, the part all present nodes may admit unasked, together
/// (as a divisor): small, since a node that never sees the key holds its
/// part back all window long.
pub const UNASKED_DIVISOR: u64 = 20;

/// What a node may admit in a window before it has asked for a lease:
/// `requests / (20 n)`, rounded down. The nodes hold it back for one
/// another, so they may admit it at once, without waiting for the database,
/// and a node cut off from it enforces this share alone. However many nodes
/// never see the key, the window loses at most a twentieth to them; below
/// 20 n requests the share is 0, and a node's first request of a window
/// waits for its first lease instead.
#[must_use]
pub fn unasked_share(requests: u64, nodes: u64) -> u64 {
    requests / UNASKED_DIVISOR.saturating_mul(nodes.max(1))
}

/// A node's request about its lease on one window of one limit of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAsk {
    /// The key (`key_…`).
    pub key_id: String,
    /// The limit's name.
    pub limit: String,
    /// The window's number (`keyward_core::limits::window_of`).
    pub window: i64,
    /// The limit's `requests` per window.
    pub requests: u64,
    /// When the window ends (unix milliseconds): its row may be forgotten
    /// after that.
    pub ends_at: i64,
    /// The node's first ask in this window: it turns the share it has been
    /// admitting from unasked into a lease.
    pub first: bool,
    /// First ask: the whole lease wanted. Otherwise: how much more.
    pub want: u64,
    /// First ask: the least it must be granted (what it has admitted, or
    /// may admit while it waits for the answer).
    pub floor: u64,
    /// Otherwise: unused lease handed back.
    pub release: u64,
    /// The node is shutting down: it no longer holds a lease here.
    pub leaving: bool,
}

/// What one [`LeaseAsk`] got, and the row as it left it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseAnswer {
    /// Added to the node's lease (first ask: the whole lease).
    pub granted: u64,
    /// Leased to all nodes in the window, after this ask.
    pub claimed: u64,
    /// Nodes holding a lease in the window, after this ask.
    pub nodes: u64,
}

impl LeaseAnswer {
    /// Requests of the window neither leased nor held back for a present
    /// node that has not asked, with `n` nodes present.
    #[must_use]
    pub fn room(&self, requests: u64, n: u64) -> u64 {
        let held = n
            .max(1)
            .saturating_sub(self.nodes)
            .saturating_mul(unasked_share(requests, n));
        requests.saturating_sub(self.claimed).saturating_sub(held)
    }
}

/// An `i64` column from a `u64` (limits stay below 10^15).
pub(crate) fn col(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A `u64` from an `i64` column (negative reads as 0).
pub(crate) fn uncol(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Answers in ask order from rows returned in any order; an ask whose row
/// was gone (forgotten after its window) gets nothing.
pub(crate) fn in_order(
    asks: &[LeaseAsk],
    rows: Vec<(String, String, i64, i64, i64, i64)>,
) -> Vec<LeaseAnswer> {
    let mut by_row: std::collections::HashMap<(String, String, i64), LeaseAnswer> = rows
        .into_iter()
        .map(|(key, limit, window, granted, claimed, nodes)| {
            (
                (key, limit, window),
                LeaseAnswer {
                    granted: uncol(granted),
                    claimed: uncol(claimed),
                    nodes: uncol(nodes),
                },
            )
        })
        .collect();
    asks.iter()
        .map(|a| {
            by_row
                .remove(&(a.key_id.clone(), a.limit.clone(), a.window))
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_holds_back_the_share_of_every_node_that_has_not_asked() {
        let a = LeaseAnswer {
            granted: 0,
            claimed: 30,
            nodes: 1,
        };
        // 3 nodes, 100 requests: two shares of 1 held, 30 claimed.
        assert_eq!(a.room(100, 3), 68);
        // Everyone asked: nothing held.
        assert_eq!(LeaseAnswer { nodes: 3, ..a }.room(100, 3), 70);
        // Over-claimed (nodes disagreed on n): no room, no underflow.
        assert_eq!(unasked_share(100, 3), 1);
        assert_eq!(unasked_share(1, 3), 0);
        assert_eq!(unasked_share(39, 2), 0);
        assert_eq!(unasked_share(40, 2), 1);
        assert_eq!(unasked_share(1000, 2), 25);
        assert_eq!(LeaseAnswer { claimed: 120, ..a }.room(100, 3), 0);
    }
}
