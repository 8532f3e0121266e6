//! Limits on a key (SPEC §8): named rate limits and quotas, and the networks
//! a key may be used from. The rules only: what a valid limit or network is,
//! and how requests are counted against limits. Where the counts live, and
//! how several nodes share them, is the server's.
//!
//! **Windows.** A limit of `requests` per `per` counts in fixed windows
//! aligned to the Unix epoch (window *n* covers `[n·per, (n+1)·per)`), as
//! GitHub's API counts: at most `requests` are admitted in each window, all
//! of them at once if they come at once, and the count restarts at the
//! window's end. Per limit the state is one window number and one count
//! (16 bytes), and the counts of several nodes for the same window simply
//! add up, which is what lets nodes share a limit without a round trip per
//! request (docs/design.md, "Limits"). The price, known and documented: a
//! client may spend a full window's `requests` just before a boundary and
//! again just after it.

use std::net::IpAddr;
use thiserror::Error;

/// Limits a key may carry.
pub const MAX_LIMITS: usize = 10;
/// Networks a key may carry.
pub const MAX_NETWORKS: usize = 100;
/// The shortest window: one second.
pub const MIN_WINDOW_MS: i64 = 1_000;
/// The longest window: thirty days (a quota).
pub const MAX_WINDOW_MS: i64 = 30 * 86_400_000;
/// The longest limit name.
pub const MAX_NAME_CHARS: usize = 32;
/// The most requests a limit may admit per window: structured-field
/// integers (the `RateLimit` headers' `q` and `r`) have at most 15 digits.
pub const MAX_REQUESTS: u64 = 999_999_999_999_999;

/// A named limit: at most `requests` per window of `per_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Unique within a key, `^[a-z][a-z0-9-]{0,31}$`.
    pub name: String,
    /// Requests admitted per window; at least 1.
    pub requests: u64,
    /// The window, in whole seconds from [`MIN_WINDOW_MS`] to
    /// [`MAX_WINDOW_MS`].
    pub per_ms: i64,
}

/// Why a limit or a network is refused, with the field it names (for the
/// API's 422 `details.field` and the CLI's message).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct LimitError {
    /// The field at fault, e.g. `limits[1].per` or `allowed_cidrs[0]`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl LimitError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        LimitError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Whether `name` is a valid limit name.
#[must_use]
pub fn is_limit_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && name.len() <= MAX_NAME_CHARS
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Limit {
    /// A limit from its parts as a client sends them (`per` as `1m`, `30d`);
    /// `field` names it in errors (`limits[0]`).
    ///
    /// # Errors
    /// [`LimitError`] naming `field.name`, `field.requests` or `field.per`.
    pub fn new(field: &str, name: &str, requests: u64, per: &str) -> Result<Self, LimitError> {
        if !is_limit_name(name) {
            return Err(LimitError::new(
                format!("{field}.name"),
                format!(
                    "`{}` is not a limit name: a lowercase letter, then up to 31 lowercase letters, digits or `-`",
                    crate::text::clip(name, 64)
                ),
            ));
        }
        if requests == 0 {
            return Err(LimitError::new(
                format!("{field}.requests"),
                "must be at least 1",
            ));
        }
        if requests > MAX_REQUESTS {
            return Err(LimitError::new(
                format!("{field}.requests"),
                format!(
                    "must be at most {MAX_REQUESTS} (15 digits, what `RateLimit` headers carry)"
                ),
            ));
        }
        let per_ms = crate::parse_duration_ms(per)
            .map_err(|e| LimitError::new(format!("{field}.per"), e.to_string()))?;
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&per_ms) || per_ms % 1000 != 0 {
            return Err(LimitError::new(
                format!("{field}.per"),
                format!("`{per}` is not a window: whole seconds from 1s to 30d"),
            ));
        }
        Ok(Limit {
            name: name.to_owned(),
            requests,
            per_ms,
        })
    }

    /// Parses the CLI's `NAME=REQUESTS/PER` (`burst=100/1m`).
    ///
    /// # Errors
    /// [`LimitError`] naming `field` when the shape is wrong, or the part at
    /// fault as [`Limit::new`] does.
    pub fn parse_flag(field: &str, text: &str) -> Result<Self, LimitError> {
        let shape = || {
            LimitError::new(
                field,
                format!(
                    "`{}` is not a limit: expected NAME=REQUESTS/PER, such as burst=100/1m",
                    crate::text::clip(text, 64)
                ),
            )
        };
        let (name, rest) = text.split_once('=').ok_or_else(shape)?;
        let (requests, per) = rest.split_once('/').ok_or_else(shape)?;
        let requests: u64 = requests.trim().parse().map_err(|_| shape())?;
        Limit::new(field, name.trim(), requests, per.trim())
    }

    /// The window as a client writes it, in the largest unit that divides
    /// it (`60s` reads back as `1m`).
    #[must_use]
    pub fn per(&self) -> String {
        let s = self.per_ms / 1000;
        for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s % secs == 0 {
                return format!("{}{unit}", s / secs);
            }
        }
        format!("{s}s")
    }

    /// The window in whole seconds (`RateLimit-Policy`'s `w`).
    #[must_use]
    pub fn window_secs(&self) -> i64 {
        self.per_ms / 1000
    }
}

/// Checks a key's limits as a whole: at most [`MAX_LIMITS`], names unique.
/// Each limit was checked when it was built.
///
/// # Errors
/// [`LimitError`] naming `limits` or the repeated name's field.
pub fn check_limits(limits: &[Limit]) -> Result<(), LimitError> {
    if limits.len() > MAX_LIMITS {
        return Err(LimitError::new(
            "limits",
            format!("at most {MAX_LIMITS} limits per key, got {}", limits.len()),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(LimitError::new(
                format!("limits[{i}].name"),
                format!("`{}` is named twice", l.name),
            ));
        }
    }
    Ok(())
}

/// An IPv4 or IPv6 network a key may be used from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    /// The network's address (no host bits).
    addr: IpAddr,
    /// Prefix length: 0..=32 (IPv4) or 0..=128 (IPv6).
    prefix: u8,
}

impl Network {
    /// Parses `203.0.113.0/24`, `2001:db8::/32` or a single address (a /32
    /// or /128). Host bits below the prefix are refused (`203.0.113.7/24`:
    /// one address or the network?), as are IPv4-mapped IPv6 networks,
    /// which no client would match (IPv4 clients are matched as IPv4).
    ///
    /// # Errors
    /// [`LimitError`] naming `field` for an unparsable address or a prefix
    /// length out of range.
    pub fn parse(field: &str, text: &str) -> Result<Self, LimitError> {
        let shown = crate::text::clip(text, 64);
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.trim().parse().map_err(|_| {
            LimitError::new(
                field,
                format!("`{shown}` is not a network: expected an address or ADDRESS/PREFIX"),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                let p = p.trim();
                match p.parse::<u8>() {
                    Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => {
                        return Err(LimitError::new(
                            field,
                            format!("`{shown}`: the prefix length must be 0 to {max}"),
                        ));
                    }
                }
            }
        };
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(LimitError::new(
                field,
                format!("`{shown}`: write IPv4 networks as IPv4 (`203.0.113.0/24`)"),
            ));
        }
        if mask(addr, prefix) != addr {
            // Host bits below the prefix: one address or a network was
            // meant, and guessing which could open a key to a whole network.
            return Err(LimitError::new(
                field,
                format!(
                    "`{shown}` has host bits set: write {} for the network or {addr} for one address",
                    Network {
                        addr: mask(addr, prefix),
                        prefix
                    }
                ),
            ));
        }
        Ok(Network { addr, prefix })
    }

    /// Whether `client` is inside this network. An IPv4 client seen as an
    /// IPv4-mapped IPv6 address (`::ffff:203.0.113.7`, from a dual-stack
    /// listener) is matched as the IPv4 address it is.
    #[must_use]
    pub fn contains(&self, client: IpAddr) -> bool {
        let client = canonical(client);
        client.is_ipv4() == self.addr.is_ipv4() && mask(client, self.prefix) == self.addr
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `ip` with the bits below `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

/// Whether `client` may use a key restricted to `networks` (an empty list
/// restricts nothing).
#[must_use]
pub fn network_allows(networks: &[Network], client: IpAddr) -> bool {
    networks.is_empty() || networks.iter().any(|n| n.contains(client))
}

/// The window `now_ms` falls in, for a limit of `per_ms`.
#[must_use]
pub fn window_of(now_ms: i64, per_ms: i64) -> i64 {
    now_ms.div_euclid(per_ms.max(1))
}

/// One limit's count in its current window: 16 bytes, no log of requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// The window counted ([`window_of`]).
    pub window: i64,
    /// Requests admitted in it here.
    pub used: u64,
}

impl Counter {
    /// The count for the window of `now_ms` (zero once a window has
    /// passed). A clock that steps back keeps counting the newer window.
    #[must_use]
    pub fn at(self, limit: &Limit, now_ms: i64) -> Counter {
        let window = window_of(now_ms, limit.per_ms);
        if window > self.window {
            Counter { window, used: 0 }
        } else {
            self
        }
    }
}

/// What the limits of a key say of one more request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Admitted and counted. `tightest` is the limit with the fewest
    /// requests left (then the soonest reset), for the `RateLimit` headers.
    Allowed {
        /// Index of the tightest limit, if the key has any.
        tightest: Option<usize>,
        /// Requests it still admits in this window.
        remaining: u64,
        /// Milliseconds until its window ends.
        reset_ms: i64,
    },
    /// Refused by limit `index`; nothing was counted.
    Refused {
        /// Index of the refusing limit (the one that frees up last).
        index: usize,
        /// Milliseconds until it admits again.
        retry_after_ms: i64,
    },
}

/// Decides one request against every limit of a key at `now_ms`: admitted
/// only if every limit has room, counting `others(i)` requests admitted
/// elsewhere (other nodes) in limit `i`'s current window; then counted in
/// all of them at once. A refused request counts in none. One division per
/// limit: it runs on every request of a limited key.
pub fn admit(
    limits: &[Limit],
    counters: &mut [Counter],
    now_ms: i64,
    others: impl Fn(usize) -> u64,
) -> Admission {
    let n = limits.len().min(counters.len()).min(MAX_LIMITS);
    let mut current = [Counter::default(); MAX_LIMITS];
    let mut refused: Option<(usize, i64)> = None;
    let mut tightest: Option<(usize, u64, i64)> = None;
    for i in 0..n {
        let (limit, counter) = (&limits[i], counters[i]);
        let window = window_of(now_ms, limit.per_ms);
        let c = if window > counter.window {
            Counter { window, used: 0 }
        } else {
            counter
        };
        current[i] = c;
        let used = c.used.saturating_add(others(i));
        // To the end of the counted window (the newer one, if the clock
        // stepped back).
        let reset_ms = (c.window.max(window) + 1) * limit.per_ms - now_ms;
        if used >= limit.requests {
            // Of several exhausted limits, the one that frees up last
            // decides when to come back.
            if refused.is_none_or(|(_, r)| reset_ms > r) {
                refused = Some((i, reset_ms));
            }
            continue;
        }
        let remaining = limit.requests - used - 1;
        if tightest.is_none_or(|(_, r, t)| (remaining, reset_ms) < (r, t)) {
            tightest = Some((i, remaining, reset_ms));
        }
    }
    if let Some((index, retry_after_ms)) = refused {
        return Admission::Refused {
            index,
            retry_after_ms,
        };
    }
    for i in 0..n {
        counters[i] = Counter {
            used: current[i].used.saturating_add(1),
            ..current[i]
        };
    }
    match tightest {
        Some((i, remaining, reset_ms)) => Admission::Allowed {
            tightest: Some(i),
            remaining,
            reset_ms,
        },
        None => Admission::Allowed {
            tightest: None,
            remaining: 0,
            reset_ms: 0,
        },
    }
}

/// Whole seconds for a `Retry-After` or `RateLimit` `t` of `ms`, rounded
/// up: a client that waits that long is admitted.
#[must_use]
pub fn ceil_secs(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

#[cfg(test)]
mod tests;
