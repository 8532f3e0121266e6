//! Metrics, request ids and the monotonic clock.
//!
//! Metrics use the `metrics` crate's handles registered once on a private
//! Prometheus recorder (no global recorder, so several servers can run in one
//! test process), rendered by keyward's own `/metrics`. Recording is a handle
//! call: no name lookup, no lock. Labels are fixed strings chosen here (status,
//! code, outcome): never a key, a path or anything a client chose.

use http::{HeaderName, HeaderValue};
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// `X-Request-Id`, echoed on every response and forwarded upstream.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Now, on the monotonic clock (latency measurement only).
#[expect(
    clippy::disallowed_methods,
    reason = "the server's one monotonic clock edge, for latency histograms"
)]
pub fn monotonic() -> Instant {
    Instant::now()
}

/// Buckets, in seconds, for keyward's own decision time.
const DECISION_BUCKETS: &[f64] = &[
    0.000_000_5,
    0.000_001,
    0.000_002,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.001,
    0.01,
    0.1,
];
/// Buckets, in seconds, for upstream latency.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Status and code pairs keyward answers itself.
const OUTCOMES: &[(u16, &str)] = &[
    (400, "BAD_REQUEST"),
    (401, "UNAUTHORIZED"),
    (403, "FORBIDDEN"),
    (404, "NOT_FOUND"),
    (405, "METHOD_NOT_ALLOWED"),
    (408, "REQUEST_TIMEOUT"),
    (413, "PAYLOAD_TOO_LARGE"),
    (414, "URI_TOO_LONG"),
    (422, "VALIDATION_FAILED"),
    (431, "REQUEST_HEADER_FIELDS_TOO_LARGE"),
    (500, "INTERNAL"),
    (502, "BAD_GATEWAY"),
    (502, "UPSTREAM_NOT_CONFIGURED"),
    (503, "UNAVAILABLE"),
    (503, "AUDIT_UNAVAILABLE"),
    (503, "BUSY"),
    (504, "GATEWAY_TIMEOUT"),
];

/// Every metric keyward exports.
pub struct Metrics {
    handle: PrometheusHandle,
    /// Time from request arrival to decision, in seconds.
    pub decision: Histogram,
    /// Time from forwarding to the upstream's response head, in seconds.
    pub upstream: Histogram,
    /// Keys in the snapshot.
    pub snapshot_keys: Gauge,
    /// Seconds since the snapshot last caught up with the change log.
    pub sync_lag: Gauge,
    /// Change-log version the snapshot reflects.
    pub snapshot_version: Gauge,
    /// Nodes sharing limits, as of the last exchange.
    pub limit_nodes: Gauge,
    /// 1 while limits are shared through the database, 0 while this node
    /// enforces its share alone (cut off), absent on one node.
    pub limit_sharing: Gauge,
    /// Seconds since the last exchange of limit leases that reached the
    /// database.
    pub limit_exchange_age: Gauge,
    /// Audit records written.
    pub audit_records: Counter,
    /// Audit transactions (records per transaction = group commit factor).
    pub audit_batches: Counter,
    /// GitHub secret scanning reports whose signature verified.
    pub scanning_reports: Counter,
    /// Reports refused for their signature: GitHub's own refused here mean
    /// the key file is out of date.
    pub scanning_unsigned: Counter,
    refused: Vec<((u16, &'static str), Counter)>,
    forwarded: [Counter; 5],
}

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

impl Metrics {
    /// Registers every metric on a fresh recorder.
    ///
    /// # Errors
    /// Invalid bucket configuration (a programming error, reported at start).
    pub fn new() -> Result<Self, String> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("keyward_decision_seconds".into()),
                DECISION_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("keyward_upstream_seconds".into()),
                    UPSTREAM_BUCKETS,
                )
            })
            .map_err(|e| e.to_string())?
            .build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, unit: Unit, text: &'static str| {
            recorder.describe_histogram(KeyName::from(name), Some(unit), SharedString::from(text));
        };
        describe(
            "keyward_decision_seconds",
            Unit::Seconds,
            "Time from request arrival to keyward's decision",
        );
        describe(
            "keyward_upstream_seconds",
            Unit::Seconds,
            "Time from forwarding to the upstream's response head",
        );
        let m = meta();
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &m)
        };
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &m);
        let refused = OUTCOMES
            .iter()
            .map(|&(status, code)| {
                let labels = vec![
                    Label::new("status", status.to_string()),
                    Label::new("code", code),
                ];
                ((status, code), counter("keyward_requests_total", labels))
            })
            .collect();
        let forwarded = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            counter(
                "keyward_requests_total",
                vec![Label::new("status", class), Label::new("code", "FORWARDED")],
            )
        });
        Ok(Metrics {
            decision: recorder
                .register_histogram(&Key::from_static_name("keyward_decision_seconds"), &m),
            upstream: recorder
                .register_histogram(&Key::from_static_name("keyward_upstream_seconds"), &m),
            snapshot_keys: gauge("keyward_snapshot_keys"),
            sync_lag: gauge("keyward_snapshot_sync_lag_seconds"),
            snapshot_version: gauge("keyward_snapshot_version"),
            limit_nodes: gauge("keyward_limit_nodes"),
            limit_sharing: gauge("keyward_limit_sharing"),
            limit_exchange_age: gauge("keyward_limit_exchange_age_seconds"),
            audit_records: counter("keyward_audit_records_total", Vec::new()),
            audit_batches: counter("keyward_audit_transactions_total", Vec::new()),
            scanning_reports: counter(
                "keyward_secret_scanning_reports_total",
                vec![Label::new("signature", "verified")],
            ),
            scanning_unsigned: counter(
                "keyward_secret_scanning_reports_total",
                vec![Label::new("signature", "refused")],
            ),
            refused,
            forwarded,
            handle,
        })
    }

    /// Counts a request keyward answered itself.
    pub fn refused(&self, status: u16, code: &str) {
        if let Some((_, c)) = self
            .refused
            .iter()
            .find(|((s, k), _)| *s == status && *k == code)
        {
            c.increment(1);
        }
    }

    /// Counts a request forwarded upstream, by the upstream's status class.
    pub fn forwarded(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(c) = self.forwarded.get(class) {
            c.increment(1);
        }
    }

    /// Drains histogram samples into their buckets; call every few seconds so
    /// memory stays bounded when nobody scrapes `/metrics`.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// The log lines of one thing that can fail repeatedly (audit writes, the
/// change-log sync, last-use flushes): the first failure is logged as it
/// happens, repeats are only counted (a database outage must not write one
/// line per failed batch), a reminder with the count comes once a minute,
/// and recovery is logged with the count and how long it lasted.
pub struct Outage {
    what: &'static str,
    consequence: &'static str,
    state: std::sync::Mutex<Option<Failing>>,
}

struct Failing {
    since: Instant,
    failures: u64,
    items: u64,
    reminded: Instant,
}

/// How often a continuing outage is logged again.
const REMIND_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Outage {
    /// `what` names the operation ("audit writes"); `consequence` says
    /// what its failure means for requests, in the first line.
    pub fn new(what: &'static str, consequence: &'static str) -> Self {
        Outage {
            what,
            consequence,
            state: std::sync::Mutex::new(None),
        }
    }

    /// One more failure, of an attempt covering `items` things (records,
    /// keys); logged if it is the first of an outage or a minute has passed.
    pub fn failed(&self, error: &dyn std::fmt::Display, items: usize) {
        let now = monotonic();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let items = items as u64;
        match &mut *state {
            None => {
                tracing::error!(error = %error, items, "{} failed; {}", self.what, self.consequence);
                *state = Some(Failing {
                    since: now,
                    failures: 1,
                    items,
                    reminded: now,
                });
            }
            Some(f) => {
                f.failures += 1;
                f.items += items;
                if now.duration_since(f.reminded) >= REMIND_EVERY {
                    f.reminded = now;
                    tracing::error!(
                        error = %error,
                        failures = f.failures,
                        items = f.items,
                        failing_for_s = f.since.elapsed().as_secs(),
                        "{} still failing",
                        self.what
                    );
                }
            }
        }
    }

    /// The operation succeeded; ends (and logs the end of) any outage.
    pub fn recovered(&self) {
        let ended = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(f) = ended {
            tracing::warn!(
                failures = f.failures,
                items = f.items,
                failed_for_ms = u64::try_from(f.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "{} working again",
                self.what
            );
        }
    }
}

/// Request ids, always keyward's own: `<node>-<counter>`, unique per node
/// without randomness per request. A client's `X-Request-Id` never becomes
/// the id an audit record is filed under (it could collide with another
/// request's or impersonate one); the gateway keeps a clean one beside it,
/// as [`client_request_id`].
pub struct RequestIds {
    node: String,
    next: AtomicU64,
}

/// Longest client request id kept.
const MAX_CLIENT_ID: usize = 64;

/// A client's `X-Request-Id`, when short and plain enough to keep beside
/// keyward's own id in an audit record, and nothing like a key: no run of
/// 38 letters and digits (a key's secret part, pasted bare or with its
/// separators changed). A W3C trace id (32 hex digits) or a UUID is kept.
pub fn client_request_id(given: Option<&HeaderValue>) -> Option<&HeaderValue> {
    let v = given?;
    let bytes = v.as_bytes();
    let plain = (1..=MAX_CLIENT_ID).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    let secret_like = bytes
        .split(|b| !b.is_ascii_alphanumeric())
        .any(|run| run.len() >= SECRET_RUN);
    (plain && !secret_like).then_some(v)
}

/// A key's random part and checksum, in letters and digits.
const SECRET_RUN: usize = keyward_core::key::RANDOM_LEN + keyward_core::key::CHECKSUM_LEN;

impl RequestIds {
    /// Ids prefixed by `node` (random per start).
    pub fn new(node: String) -> Self {
        RequestIds {
            node,
            next: AtomicU64::new(1),
        }
    }

    /// A new id.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // `{node}-{n:x}` without the formatting machinery (this runs for every
        // request that brings no id of its own), sized exactly so `Bytes`
        // takes the buffer without allocating a shared header.
        let mut id = Vec::with_capacity(self.node.len() + 1 + hex_len(n));
        id.extend_from_slice(self.node.as_bytes());
        id.push(b'-');
        push_hex(&mut id, n);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .unwrap_or_else(|_| HeaderValue::from_static("keyward"))
    }
}

/// Digits of `n` in hex.
fn hex_len(n: u64) -> usize {
    (64 - n.leading_zeros()).div_ceil(4).max(1) as usize
}

/// Lower-case hex of `n`, no leading zeros (as `{n:x}`).
fn push_hex(out: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..hex_len(n)).rev() {
        out.push(DIGITS[((n >> (i * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::{RequestIds, client_request_id, push_hex};
    use http::HeaderValue;

    #[test]
    fn hex_matches_format() {
        for n in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            0xdead_beef,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).expect("ascii"), format!("{n:x}"));
        }
    }

    #[test]
    fn request_ids_are_always_node_dash_counter() {
        let ids = RequestIds::new("n0de".into());
        assert_eq!(ids.next(), "n0de-1");
        assert_eq!(ids.next(), "n0de-2");
    }

    #[test]
    fn client_ids_are_kept_only_when_short_and_plain() {
        let clean = HeaderValue::from_static("client-id_1.2:3");
        assert_eq!(client_request_id(Some(&clean)), Some(&clean));
        let long = HeaderValue::from_str(&"a".repeat(65)).expect("ascii");
        let secret =
            HeaderValue::from_str(&format!("insp-live-{}", "A1".repeat(19))).expect("ascii");
        let trace = HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(client_request_id(Some(&trace)), Some(&trace));
        for dirty in [
            HeaderValue::from_static("has space"),
            HeaderValue::from_static(""),
            HeaderValue::from_static("a\"b"),
            long,
            secret,
        ] {
            assert_eq!(client_request_id(Some(&dirty)), None, "{dirty:?}");
        }
        assert_eq!(client_request_id(None), None);
    }
}
