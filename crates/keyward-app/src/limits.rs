//! A key's limits on this node, and how several nodes share them (SPEC §8;
//! docs/design.md, "Limits across nodes").
//!
//! On one node (SQLite, or PostgreSQL with sharing off) a limit is counted
//! here exactly: [`keyward_core::limits::admit`] over this node's count.
//!
//! Shared, each node admits a window's requests from a *lease*: at a
//! window's start a small share ([`keyward_store::unasked_share`]: a
//! twentieth of the limit split among the nodes present), which the other
//! nodes hold back for it; then whatever [`App::exchange_limits`]
//! gets it, every exchange interval, from the key's row of leases in the
//! database ([`keyward_store::LeaseAsk`]'s rule): more when its clients ask
//! for more, less when they do not. No request waits for the database.
//! While the database answers, the leases of one window never add up to
//! more than the limit, so the nodes never admit more together; a node cut
//! off keeps admitting from its lease and its share, never more.

use crate::{App, AppError};
use keyward_core::limits::{Admission, Counter, Limit, MAX_LIMITS, Network, window_of};
use keyward_store::{LeaseAnswer, LeaseAsk, Store};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A key's limits and networks, with this node's state of each limit.
#[derive(Debug)]
pub struct KeyLimits {
    /// Named limits, in the order given.
    pub limits: Box<[Limit]>,
    /// Networks the key may be used from; empty: anywhere.
    pub networks: Box<[Network]>,
    /// Each limit's `RateLimit-Policy` value (`"burst";q=100;w=60`), made
    /// once per key rather than on every answer.
    pub policies: Box<[bytes::Bytes]>,
    /// Kept across snapshot updates of the key, so a sync never restarts
    /// its counts.
    pub(crate) state: Arc<LimitState>,
}

/// This node's counts and leases of one key's limits.
#[derive(Debug)]
pub(crate) struct LimitState {
    key_id: Box<str>,
    limits: Box<[Limit]>,
    /// Held only for the few instructions of a count, or of an exchange's
    /// look at the key (never across a database call).
    inner: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    slots: Box<[Slot]>,
    /// Waiting in [`Sharing`]'s queue, or in the exchange's working set.
    queued: bool,
}

/// One limit on this node: 48 bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Admitted here in the current window.
    counter: Counter,
    /// How many of the window's requests this node may admit.
    lease: u64,
    /// The lease is the database's (this node asked in this window); else
    /// it is the share held back for it.
    asked: bool,
    /// An answer to this window's asks has arrived, so `room` is known;
    /// until then (a first ask in flight) the window may have any room.
    answered: bool,
    /// Requests that reached this limit since the last exchange.
    attempts: u64,
    /// Requests of the window no node held, at the last answer.
    room: u64,
}

impl Slot {
    /// Whether the next exchange may grow this lease: the window's room is
    /// not known yet, or some was left at the last answer.
    fn may_grow(&self) -> bool {
        !self.answered || self.room > 0
    }
}

impl KeyLimits {
    pub(crate) fn of(
        key_id: &str,
        limits: &[Limit],
        networks: &[Network],
        kept: Option<&KeyLimits>,
    ) -> Option<Box<Self>> {
        if limits.is_empty() && networks.is_empty() {
            return None;
        }
        let state = match kept {
            Some(k) if *k.limits == *limits => k.state.clone(),
            _ => Arc::new(LimitState {
                key_id: key_id.into(),
                limits: limits.into(),
                inner: Mutex::new(Slots {
                    slots: vec![Slot::default(); limits.len()].into(),
                    queued: false,
                }),
            }),
        };
        Some(Box::new(KeyLimits {
            limits: limits.into(),
            networks: networks.into(),
            policies: limits
                .iter()
                .map(|l| {
                    bytes::Bytes::from(format!(
                        "\"{}\";q={};w={}",
                        l.name,
                        l.requests,
                        l.window_secs()
                    ))
                })
                .collect(),
            state,
        }))
    }

    /// Whether limit `index`, having refused a request, may admit it after
    /// the next exchange: no answer has come yet in this window (the node
    /// has not asked, or its first ask is in flight), or some of the window
    /// was left unleased at the last answer. The server then
    /// waits for that exchange ([`Sharing::next_exchange`]) rather than
    /// refuse what the limit still allows.
    pub fn lease_may_grow(&self, index: usize, sharing: &Sharing, now: i64) -> bool {
        // Cut off, the lease will not grow: refuse at once.
        if sharing.mode(now) != "shared" {
            return false;
        }
        let inner = self
            .state
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        inner.slots.get(index).is_some_and(Slot::may_grow)
    }

    /// Whether a request from `client` may use the key.
    pub fn allows(&self, client: std::net::IpAddr) -> bool {
        keyward_core::limits::network_allows(&self.networks, client)
    }

    /// Decides and counts one request at `now` against every limit
    /// ([`keyward_core::limits::admit`]): on this node's count alone, or,
    /// shared, within this node's lease. `remaining` then adds what no node
    /// held at the last exchange, and a refusal while some was left says to
    /// come back after the next exchange.
    pub fn admit(&self, now: i64, sharing: &Sharing) -> Admission {
        let shared = sharing.shared.load(Ordering::Relaxed);
        let nodes = sharing.nodes.load(Ordering::Relaxed).max(1);
        // Past the time the other nodes count this one present, they no
        // longer hold its unasked share back: it admits from leases only.
        let present = now < sharing.present_until_ms.load(Ordering::Relaxed);
        let mut counters = [Counter::default(); MAX_LIMITS];
        let mut leases = [0u64; MAX_LIMITS];
        let mut inner = self
            .state
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = inner.slots.len().min(self.limits.len()).min(MAX_LIMITS);
        for i in 0..n {
            let limit = &self.limits[i];
            let slot = &mut inner.slots[i];
            let window = window_of(now, limit.per_ms);
            if window > slot.counter.window {
                *slot = Slot {
                    counter: Counter { window, used: 0 },
                    lease: keyward_store::unasked_share(limit.requests, nodes),
                    ..Slot::default()
                };
            }
            counters[i] = slot.counter;
            leases[i] = if !shared {
                limit.requests
            } else if slot.asked || present {
                slot.lease.min(limit.requests)
            } else {
                slot.counter.used.min(limit.requests)
            };
        }
        let admission =
            keyward_core::limits::admit(&self.limits[..n], &mut counters[..n], now, |i| {
                self.limits[i].requests - leases[i]
            });
        for (slot, counter) in inner.slots.iter_mut().zip(&counters[..n]) {
            slot.counter = *counter;
        }
        if !shared {
            return admission;
        }
        // Demand, for the next exchange: on every limit, unless a limit with
        // nothing left anywhere refused it (then more of the others would
        // not have let it pass, and asking for them would starve the other
        // nodes).
        let spent = match admission {
            Admission::Refused { index, .. } => {
                let s = &inner.slots[index];
                (!s.may_grow()).then_some(index)
            }
            Admission::Allowed { .. } => None,
        };
        for (i, slot) in inner.slots.iter_mut().enumerate().take(n) {
            if spent.is_none_or(|s| s == i) {
                slot.attempts = slot.attempts.saturating_add(1);
            }
        }
        let queue = !std::mem::replace(&mut inner.queued, true);
        let admission = match admission {
            Admission::Allowed {
                tightest: Some(i),
                remaining,
                reset_ms,
            } => Admission::Allowed {
                tightest: Some(i),
                remaining: remaining
                    .saturating_add(inner.slots[i].room)
                    .min(self.limits[i].requests),
                reset_ms,
            },
            Admission::Refused {
                index,
                retry_after_ms,
            } if inner.slots[index].may_grow() => Admission::Refused {
                index,
                retry_after_ms: retry_after_ms.min(sharing.interval_ms.load(Ordering::Relaxed)),
            },
            other => other,
        };
        drop(inner);
        if queue {
            sharing
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.state.clone());
        }
        admission
    }
}

/// Whether and how this node shares limits with others, and the keys whose
/// leases the next exchange looks at.
#[derive(Debug, Default)]
pub struct Sharing {
    shared: AtomicBool,
    /// Nodes present at the last exchange.
    nodes: AtomicU64,
    interval_ms: AtomicI64,
    /// Keys used since they were last looked at.
    queue: Mutex<Vec<Arc<LimitState>>>,
    /// Keys the exchange keeps looking at (owned by the exchange).
    working: tokio::sync::Mutex<Vec<Arc<LimitState>>>,
    /// When an exchange last reached the database, for `/healthz` and
    /// `/metrics`.
    last_ok_ms: AtomicI64,
    /// When this node last said it was present.
    last_beat_ms: AtomicI64,
    /// Woken after each exchange, for requests waiting for a lease.
    exchanged: tokio::sync::Notify,
    /// Until when the other nodes surely count this one present (its last
    /// heartbeat, plus the time it asked to be counted, less a margin).
    present_until_ms: AtomicI64,
}

/// Taken off the time a node asked to be counted present, for clocks that
/// differ and a heartbeat that took long.
const PRESENCE_MARGIN_MS: i64 = 5_000;

/// How often a node says it is present: far more often than the others
/// need (it counts as present for `--max-staleness` and more), seldom
/// enough that an idle node's exchanges cost the database almost nothing.
pub const HEARTBEAT_MS: i64 = 1_000;

impl Sharing {
    /// From now on, limits are shared with the nodes of the database,
    /// exchanged every `interval`.
    pub fn share(&self, interval: std::time::Duration) {
        let ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        self.interval_ms.store(ms.max(1), Ordering::Relaxed);
        self.nodes.fetch_max(1, Ordering::Relaxed);
        self.shared.store(true, Ordering::Release);
    }

    /// Whether limits are shared with other nodes.
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Acquire)
    }

    /// Nodes sharing limits, as of the last exchange that reached the
    /// database (1 before any).
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed).max(1)
    }

    /// How this node's limits are enforced at `now`: `"this node only"`
    /// (not shared), `"shared"` (an exchange reached the database within
    /// three intervals and two heartbeats), or `"local share"` (cut off:
    /// its leases and its unasked share, never more).
    pub fn mode(&self, now: i64) -> &'static str {
        if !self.is_shared() {
            return "this node only";
        }
        let interval = self.interval_ms.load(Ordering::Relaxed);
        if now - self.last_ok_ms() <= 3 * interval + 2 * HEARTBEAT_MS {
            "shared"
        } else {
            "local share"
        }
    }

    /// When an exchange last reached the database (unix ms; 0: never).
    pub fn last_ok_ms(&self) -> i64 {
        self.last_ok_ms.load(Ordering::Relaxed)
    }

    /// Waits for the next exchange to end (successful or not), at most two
    /// intervals and 100 ms: how long a request refused by a lease that may
    /// grow waits before it is decided again.
    pub async fn next_exchange(&self) {
        let ms = self.interval_ms.load(Ordering::Relaxed).saturating_mul(2) + 100;
        let wait = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(300));
        let _ = tokio::time::timeout(wait, self.exchanged.notified()).await;
    }
}

/// What one exchange did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchanged {
    /// Nodes present.
    pub nodes: u64,
    /// Keys looked at.
    pub keys: usize,
    /// Asks sent.
    pub asks: usize,
}

/// Where an ask came from, to apply its answer.
struct Asked {
    state: Arc<LimitState>,
    slot: usize,
    first: bool,
}

impl<S: Store> App<S> {
    /// One exchange of this node's leases with the database: says the node
    /// is present (until `alive_ms` from now; every [`HEARTBEAT_MS`]),
    /// learns how many are, and asks
    /// for each key used lately what its clients need until the next
    /// exchange, or hands back what they do not.
    ///
    /// # Errors
    /// Storage failures: the node keeps its leases, and its share of each
    /// new window, until an exchange succeeds.
    pub async fn exchange_limits(
        &self,
        sharing: &Sharing,
        node: &str,
        alive_ms: i64,
    ) -> Result<Exchanged, AppError> {
        let now = self.now();
        // A failed heartbeat does not stop the asks: what this node admitted
        // unasked is claimed by its first ask, so the others may stop
        // holding its share without the window going over.
        let mut beat_failed = None;
        if now - sharing.last_beat_ms.load(Ordering::Relaxed) >= HEARTBEAT_MS {
            match self.store.limit_heartbeat(node, now, alive_ms).await {
                Ok(nodes) => {
                    sharing.nodes.store(nodes, Ordering::Relaxed);
                    sharing.last_beat_ms.store(now, Ordering::Relaxed);
                    sharing.present_until_ms.store(
                        now.saturating_add(alive_ms - PRESENCE_MARGIN_MS),
                        Ordering::Relaxed,
                    );
                    sharing.last_ok_ms.store(now, Ordering::Relaxed);
                }
                Err(e) => beat_failed = Some(e),
            }
        }
        let nodes = sharing.nodes();
        let mut working = sharing.working.lock().await;
        working.append(&mut sharing.queue.lock().unwrap_or_else(PoisonError::into_inner));
        let mut asks = Vec::new();
        let mut asked = Vec::new();
        working.retain(|state| plan(state, now, nodes, &mut asks, &mut asked));
        let keys = working.len();
        drop(working);
        let answers = self.store.claim_leases(nodes, &asks).await;
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                // A first ask may or may not have committed: ask again as a
                // first (counted twice at worst: fewer admitted, never more).
                for (a, ask) in asked.iter().zip(&asks) {
                    if a.first {
                        a.state.with_slot(a.slot, ask.window, |s| s.asked = false);
                    }
                }
                sharing.exchanged.notify_waiters();
                return Err(e.into());
            }
        };
        for ((a, ask), answer) in asked.iter().zip(&asks).zip(&answers) {
            apply(a, ask, answer, nodes);
        }
        sharing.exchanged.notify_waiters();
        if let Some(e) = beat_failed {
            return Err(e.into());
        }
        if !asks.is_empty() {
            sharing.last_ok_ms.store(now, Ordering::Relaxed);
        }
        Ok(Exchanged {
            nodes,
            keys,
            asks: asks.len(),
        })
    }

    /// Hands back this node's unused leases and stops counting it present
    /// (a clean shutdown), so the other nodes may admit what it held.
    ///
    /// # Errors
    /// Storage failures (the rows then count it until its time passes).
    pub async fn leave_limits(&self, sharing: &Sharing, node: &str) -> Result<(), AppError> {
        let mut working = sharing.working.lock().await;
        working.append(&mut sharing.queue.lock().unwrap_or_else(PoisonError::into_inner));
        let now = self.now();
        let mut asks = Vec::new();
        for state in working.iter() {
            let inner = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
            for (limit, slot) in state.limits.iter().zip(inner.slots.iter()) {
                if slot.asked && slot.counter.window == window_of(now, limit.per_ms) {
                    asks.push(LeaseAsk {
                        release: slot.lease.saturating_sub(slot.counter.used),
                        leaving: true,
                        ..ask_of(state, limit, slot, false)
                    });
                }
            }
        }
        working.clear();
        drop(working);
        self.store.claim_leases(sharing.nodes(), &asks).await?;
        self.store.limit_leave(node).await?;
        Ok(())
    }

    /// Forgets lease rows of windows that ended a minute ago or more.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn forget_leases(&self) -> Result<(), AppError> {
        Ok(self.store.forget_leases(self.now() - 60_000).await?)
    }
}

impl LimitState {
    /// Runs `f` on slot `i` if it still counts `window`.
    fn with_slot(&self, i: usize, window: i64, f: impl FnOnce(&mut Slot)) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = inner.slots.get_mut(i)
            && slot.counter.window == window
        {
            f(slot);
        }
    }
}

fn ask_of(state: &LimitState, limit: &Limit, slot: &Slot, first: bool) -> LeaseAsk {
    LeaseAsk {
        key_id: state.key_id.to_string(),
        limit: limit.name.clone(),
        window: slot.counter.window,
        requests: limit.requests,
        ends_at: (slot.counter.window + 1).saturating_mul(limit.per_ms),
        first,
        want: 0,
        floor: 0,
        release: 0,
        leaving: false,
    }
}

/// What to ask for one key's limits; whether to keep looking at the key.
/// The lease is lowered here at once when the node hands some back, and
/// capped at what a first ask is sure to be granted.
fn plan(
    state: &Arc<LimitState>,
    now: i64,
    nodes: u64,
    asks: &mut Vec<LeaseAsk>,
    asked: &mut Vec<Asked>,
) -> bool {
    let mut inner = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
    let mut keep = false;
    for (i, limit) in state.limits.iter().enumerate() {
        let Some(slot) = inner.slots.get_mut(i) else {
            break;
        };
        if slot.counter.window != window_of(now, limit.per_ms) {
            // Not used in this window yet: nothing to ask.
            continue;
        }
        let attempts = std::mem::take(&mut slot.attempts);
        let used = slot.counter.used;
        // Enough for twice the last interval's demand, and a part of what
        // no node holds so that a burst after a quiet spell is not refused.
        let headroom = (attempts.saturating_mul(2) + 1).max(slot.room / (2 * nodes));
        let target = used.saturating_add(headroom).min(limit.requests);
        let ask = if slot.asked {
            if target > slot.lease {
                Some(LeaseAsk {
                    want: target - slot.lease,
                    ..ask_of(state, limit, slot, false)
                })
            } else if slot.lease > target {
                let release = slot.lease - target;
                slot.lease = target;
                Some(LeaseAsk {
                    release,
                    ..ask_of(state, limit, slot, false)
                })
            } else {
                None
            }
        } else {
            // Until the answer, admit no more than the answer is sure to
            // grant.
            slot.lease = used.max(slot.lease.min(target));
            slot.asked = true;
            Some(LeaseAsk {
                want: target,
                floor: slot.lease,
                ..ask_of(state, limit, slot, true)
            })
        };
        keep |= attempts > 0 || slot.asked;
        if let Some(ask) = ask {
            asked.push(Asked {
                state: state.clone(),
                slot: i,
                first: ask.first,
            });
            asks.push(ask);
        }
    }
    if !keep {
        inner.queued = false;
    }
    keep
}

/// Applies one answer to the slot that asked, if its window is still on.
fn apply(a: &Asked, ask: &LeaseAsk, answer: &LeaseAnswer, nodes: u64) {
    a.state.with_slot(a.slot, ask.window, |slot| {
        if a.first {
            slot.lease = answer.granted.max(slot.counter.used);
        } else {
            slot.lease = slot.lease.saturating_add(answer.granted);
        }
        slot.room = answer.room(ask.requests, nodes);
        slot.answered = true;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst at a window's start: the first request takes the unasked
    /// share, the exchange plans its first ask, and a request refused while
    /// that ask is in flight must wait for its answer rather than be
    /// refused as if the window had no room (the flaw a loaded CI found).
    #[test]
    fn a_refusal_while_the_first_ask_is_in_flight_waits_for_its_answer() {
        let limit = Limit::new("limits[0]", "burst", 60, "5s").unwrap();
        let limits = KeyLimits::of("key_1", std::slice::from_ref(&limit), &[], None).unwrap();
        let sharing = Sharing::default();
        sharing.share(std::time::Duration::from_millis(100));
        sharing.nodes.store(2, Ordering::Relaxed);
        let now = 1_000_000_i64;
        sharing.last_ok_ms.store(now, Ordering::Relaxed);
        sharing
            .present_until_ms
            .store(now + 60_000, Ordering::Relaxed);
        // 60 / 20 / 2 nodes: one admitted unasked, the next refused.
        assert!(matches!(
            limits.admit(now, &sharing),
            Admission::Allowed { .. }
        ));
        assert!(matches!(
            limits.admit(now, &sharing),
            Admission::Refused { .. }
        ));
        assert!(limits.lease_may_grow(0, &sharing, now), "nothing asked yet");
        // The exchange plans its first ask; the answer is not back.
        let (mut asks, mut asked) = (Vec::new(), Vec::new());
        assert!(plan(&limits.state, now, 2, &mut asks, &mut asked));
        assert_eq!(asks.len(), 1);
        assert!(matches!(
            limits.admit(now, &sharing),
            Admission::Refused { .. }
        ));
        assert!(
            limits.lease_may_grow(0, &sharing, now),
            "the window's room is unknown until the answer"
        );
        // The answer: 14 granted, all the rest leased elsewhere.
        let answer = LeaseAnswer {
            granted: 14,
            claimed: 60,
            nodes: 2,
        };
        apply(&asked[0], &asks[0], &answer, 2);
        assert!(matches!(
            limits.admit(now, &sharing),
            Admission::Allowed { .. }
        ));
        for _ in 2..14 {
            let _ = limits.admit(now, &sharing);
        }
        assert!(matches!(
            limits.admit(now, &sharing),
            Admission::Refused { .. }
        ));
        assert!(
            !limits.lease_may_grow(0, &sharing, now),
            "no room left: refused at once"
        );
    }
}
