//! Authentication and the decision, once for every room: the gateway, the
//! verify service and the admin API find a key with [`find_key`], decide
//! with [`decide`], and answer and audit a refusal with [`refuse`]; the
//! admin API and the console check the same scope requirements ([`Need`],
//! [`holds`]).

use crate::body::Body;
use crate::error::ApiError;
use crate::state::State;
use crate::web::Client;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use keyward_app::{KeyEntry, KeyLimits, RequestFacts, request_entry};
use keyward_core::audit::AuditEntry;
use keyward_core::catalog::reserved;
use keyward_core::limits::{Admission, ceil_secs};
use keyward_core::{AuthFailure, Catalog, Decision, KeyAccess, Outcome, ScopeSet, key, text};
use std::sync::Arc;
use std::time::Duration;

/// Scopes an admin endpoint or console page requires, as a type, so the
/// requirement is checked by the room's extractor before the body is read.
/// One list for both rooms: an endpoint and the page doing the same thing
/// cannot require different scopes. `SECTION` is the console's tab.
pub(crate) trait Need: Send + Sync + 'static {
    const SCOPES: &'static [&'static str];
    const SECTION: &'static str;
}

macro_rules! need {
    ($($name:ident => $section:literal [$($scope:expr),*];)*) => {$(
        pub(crate) struct $name;
        impl Need for $name {
            const SCOPES: &'static [&'static str] = &[$($scope),*];
            const SECTION: &'static str = $section;
        }
    )*};
}

need! {
    Anyone => "" [];
    KeysRead => "keys" [reserved::API_KEYS_READ];
    KeysWrite => "keys" [reserved::API_KEYS_WRITE];
    GroupsRead => "groups" [reserved::GROUPS_READ];
    GroupUsersRead => "groups" [reserved::GROUPS_READ, reserved::USERS_READ];
    GroupKeysRead => "groups" [reserved::GROUPS_READ, reserved::API_KEYS_READ];
    GroupsWrite => "groups" [reserved::GROUPS_WRITE];
    AuditRead => "audit" [reserved::AUDIT_READ];
    SettingsRead => "settings" [reserved::SETTINGS_READ];
    SettingsWrite => "settings" [reserved::SETTINGS_WRITE];
}

/// Whether `effective` holds every scope named; false when the catalog
/// lacks one of them.
pub(crate) fn holds(catalog: &Catalog, effective: &ScopeSet, names: &[&str]) -> bool {
    catalog
        .scope_set(names)
        .is_some_and(|s| s.difference(effective).is_empty())
}

/// What is to be decided for a key.
pub(crate) enum Question<'a> {
    /// A request to a route: the method as sent and the path with the
    /// gateway prefix removed.
    Route(&'a str, &'a str),
    /// A request outside the gateway prefix: authenticated, then no route.
    Outside,
    /// Whether the key holds these scopes.
    Scopes(ScopeSet),
}

/// The one decision for a key (or the reason there is none) at `now`.
pub(crate) fn decide(
    catalog: &Catalog,
    access: Result<&KeyAccess, AuthFailure>,
    now: i64,
    question: &Question<'_>,
) -> Decision {
    match *question {
        Question::Route(method, path) => catalog.authorize(access, now, method, path),
        Question::Scopes(required) => catalog.authorize_scopes(access, now, required),
        Question::Outside => outside_prefix(catalog.authorize_scopes(access, now, ScopeSet::EMPTY)),
    }
}

/// Longest credential looked at; longer ones are malformed.
const MAX_KEY_CHARS: usize = 512;

/// Whether a method changes state (and so is always audited).
pub(crate) fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The `Authorization: Bearer` credential, or why there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let text = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthFailure::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Missing);
    }
    check_token(token)
}

/// A credential worth looking up: non-empty, bounded, no whitespace.
///
/// # Errors
/// [`AuthFailure::Missing`] when empty, [`AuthFailure::Malformed`] otherwise.
pub(crate) fn check_token(token: &str) -> Result<&str, AuthFailure> {
    if token.is_empty() {
        return Err(AuthFailure::Missing);
    }
    if token.len() > MAX_KEY_CHARS || token.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

/// Finds the key a request presents. Answers from memory except for a
/// well-formed key the snapshot does not hold, which triggers one coalesced
/// catch-up with the change log (a key created elsewhere moments ago).
///
/// # Errors
/// The authentication failure, or 503 when storage cannot be reached to
/// look for a well-formed unknown key.
pub(crate) async fn authenticate(
    state: &State,
    headers: &HeaderMap,
) -> Result<Result<Arc<KeyEntry>, AuthFailure>, ApiError> {
    find_key(state, bearer(headers)).await
}

/// [`authenticate`] for a credential taken from anywhere (`/v1/verify`'s body).
///
/// # Errors
/// 503 when storage cannot be reached to look for a well-formed unknown key.
pub(crate) async fn find_key(
    state: &State,
    token: Result<&str, AuthFailure>,
) -> Result<Result<Arc<KeyEntry>, AuthFailure>, ApiError> {
    let token = match token {
        Ok(t) => t,
        Err(f) => return Ok(Err(f)),
    };
    let digest = state.app.digester().digest(token);
    if let Some(entry) = state.snapshot.get(&digest) {
        return Ok(Ok(entry));
    }
    // Only a miss needs the shape and checksum: garbage is refused here,
    // from memory, and only a well-formed key costs a look at the store.
    let well_formed =
        key::parse(token).is_ok_and(|k| k.prefix() == state.app.catalog().key_prefix());
    if !well_formed {
        // Legacy keys have any shape; they were found above if they exist.
        return Ok(Err(AuthFailure::Malformed));
    }
    // Boxed: the store's lookup is a large future, and this rare path must
    // not make every request's future as large.
    let asked = state.app.now();
    let caught_up = Box::pin(tokio::time::timeout(
        CATCH_UP_TIMEOUT,
        state.app.catch_up_snapshot(&state.snapshot),
    ))
    .await;
    match caught_up {
        Ok(Ok(())) => {
            state.note_sync_ok(asked);
            state.lookups.recovered();
            Ok(state.snapshot.get(&digest).ok_or(AuthFailure::Unknown))
        }
        Ok(Err(e)) => {
            state.lookups.failed(&e, 1);
            Err(ApiError::unavailable(
                "The key store cannot be reached; try again shortly",
            ))
        }
        Err(_) => Err(ApiError::unavailable(
            "The key store did not answer in time; try again shortly",
        )),
    }
}

/// How long a request waits for the guarded lookup of an unknown key.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Facts about one gateway request, for its audit record and log line.
#[derive(Clone, Copy)]
pub(crate) struct Exchange<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) client: &'a Client,
    pub(crate) request_id: &'a HeaderValue,
    /// The client's own `X-Request-Id`, when clean enough to keep beside
    /// keyward's (never instead of it).
    pub(crate) client_request_id: Option<&'a HeaderValue>,
    pub(crate) key: Option<&'a KeyEntry>,
}

impl Exchange<'_> {
    pub(crate) fn audit(
        &self,
        key_prefix: &str,
        state_default_org: &str,
        status: u16,
        required: Vec<String>,
        reason: &str,
    ) -> AuditEntry {
        let facts = RequestFacts {
            org_id: self.key.map_or(state_default_org, |k| &*k.org_id),
            key_id: self.key.map(|k| &*k.key_id),
            method: self.method.as_str(),
            path: self.path,
            client: self.client.ip_text(),
            request_id: self.request_id.to_str().ok(),
            client_request_id: self.client_request_id.and_then(|v| v.to_str().ok()),
            status,
            required,
            reason,
        };
        request_entry(facts, key_prefix)
    }
}

/// Answers a refusal; audits it first when `audited`.
pub(crate) async fn refuse(
    state: &State,
    ex: &Exchange<'_>,
    audited: bool,
    error: ApiError,
    required: Vec<String>,
    reason: &str,
) -> Response<Body> {
    let status = error.status.as_u16();
    tracing::info!(
        request_id = ?ex.request_id,
        method = %ex.method,
        path = &*text::recorded_path(ex.path, state.app.catalog().key_prefix()),
        status,
        code = error.code,
        reason,
        key_id = ex.key.map(|k| &*k.key_id),
        "refused"
    );
    if audited {
        let entry = ex.audit(
            state.app.catalog().key_prefix(),
            &state.default_org,
            status,
            required,
            reason,
        );
        if ex.key.is_none() {
            // Nobody authenticated: counted per client and minute, with a
            // sample, rather than one chained record each (a flood of
            // anonymous writes must not grow the log at will).
            state.anonymous.note(entry, state.app.now());
        } else if state.record(entry).await.is_err() {
            return audit_unavailable(state, ex.request_id, None);
        }
    }
    state.metrics.refused(status, error.code);
    error.into_response(Some(ex.request_id))
}

pub(crate) fn required_names(state: &State, decision: &Decision) -> Vec<String> {
    state
        .app
        .catalog()
        .name_iter(decision.required)
        .map(str::to_owned)
        .collect()
}

/// A path outside the gateway prefix: authenticated like any other, then 404.
fn outside_prefix(authenticated: Decision) -> Decision {
    if matches!(authenticated.outcome, Outcome::Unauthenticated(_)) {
        return authenticated;
    }
    Decision {
        outcome: Outcome::NoRoute,
        ..authenticated
    }
}

/// 503 after the upstream answered but the audit record could not be
/// committed: the client must not take silence for success, nor retry blindly.
pub(crate) fn audit_unavailable(
    state: &State,
    request_id: &HeaderValue,
    upstream_status: Option<u16>,
) -> Response<Body> {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "AUDIT_UNAVAILABLE",
        "The request could not be recorded in the audit log",
    );
    if let Some(s) = upstream_status {
        e = e.detail("upstream_status", s).detail(
            "note",
            "the upstream processed the request before recording failed",
        );
    }
    state.metrics.refused(503, "AUDIT_UNAVAILABLE");
    e.into_response(Some(request_id))
}

/// What an own endpoint knows of its request before reading the body.
pub(crate) struct Asked<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) client: &'a Client,
    pub(crate) request_id: &'a HeaderValue,
    /// The clock, read once for the whole request.
    pub(crate) now: i64,
}

impl<'a> Asked<'a> {
    pub(crate) fn of(
        state: &State,
        req: &'a Request<Incoming>,
        client: &'a Client,
        request_id: &'a HeaderValue,
    ) -> Self {
        Asked {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
            client,
            request_id,
            now: state.app.now(),
        }
    }

    fn exchange(&self, key: Option<&'a keyward_app::KeyEntry>) -> Exchange<'a> {
        Exchange {
            method: self.method,
            path: self.path,
            client: self.client,
            request_id: self.request_id,
            client_request_id: None,
            key,
        }
    }
}

/// Authenticates the caller of an own endpoint: any usable key. Refusals of
/// write requests are audited, like the gateway's (`audit_writes`); the
/// verify service is a read in all but its method and is not.
pub(crate) async fn caller(
    state: &State,
    asked: &Asked<'_>,
    audit_writes: bool,
) -> Result<Arc<keyward_app::KeyEntry>, Response<Body>> {
    let ex = asked.exchange(None);
    let audited = audit_writes && is_write(asked.method);
    if let Some(e) = state.stale_at(asked.now) {
        return Err(refuse(state, &ex, false, e, Vec::new(), "stale").await);
    }
    let found = match authenticate(state, asked.headers).await {
        Ok(f) => f,
        Err(e) => return Err(refuse(state, &ex, false, e, Vec::new(), "store_unreachable").await),
    };
    let now = asked.now;
    let checked = found.and_then(|e| keyward_core::check_key_state(&e.access(), now).map(|()| e));
    match checked {
        Ok(entry) => {
            state.snapshot.record_use(&entry, now);
            // A key's networks and limits hold on keyward's own endpoints
            // too: a key bound to a network is not usable from elsewhere
            // against the admin API either (refusals audited as a 403 is).
            if let Some(limits) = entry.limits.as_deref()
                && let Err(refused) = check_limits(state, limits, asked.client.addr, now).await
            {
                let with_key = asked.exchange(Some(&entry));
                let LimitRefusal {
                    error,
                    reason,
                    note,
                } = *refused;
                let audited = audited || reason == "ip_not_allowed";
                let mut res = refuse(state, &with_key, audited, error, Vec::new(), reason).await;
                if let Some(note) = note {
                    note.write(res.headers_mut());
                }
                return Err(res);
            }
            Ok(entry)
        }
        Err(f) => Err(refuse(
            state,
            &ex,
            audited,
            ApiError::unauthorized(f),
            Vec::new(),
            f.reason(),
        )
        .await),
    }
}

/// 403 (audited) unless the caller's key holds every scope in `required`.
pub(crate) async fn require(
    state: &State,
    asked: &Asked<'_>,
    caller_entry: &keyward_app::KeyEntry,
    required: keyward_core::ScopeSet,
) -> Result<(), Response<Body>> {
    let catalog = state.app.catalog();
    let held = decide(
        catalog,
        Ok(&caller_entry.access()),
        asked.now,
        &Question::Scopes(required),
    );
    // The key's use of keyward's own scopes, counted like its requests to
    // the catalog's routes, so the suggestion never drops them unseen.
    state.usage.count_own(
        caller_entry.usage_id,
        &caller_entry.key_id,
        required,
        asked.method.as_str(),
        if held.is_allowed() {
            keyward_app::usage::UsageOutcome::Allowed
        } else {
            keyward_app::usage::UsageOutcome::Forbidden
        },
        asked.now,
    );
    if held.is_allowed() {
        return Ok(());
    }
    let ex = asked.exchange(Some(caller_entry));
    let missing = catalog.names(held.missing);
    let names = missing.iter().map(|s| (*s).to_owned()).collect();
    let e = ApiError::forbidden(missing, catalog.names(held.granted));
    Err(refuse(state, &ex, true, e, names, "missing_scopes").await)
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit` headers of a limited key's answer (SPEC §8, after the
/// IETF draft): the policy and state of one limit.
pub(crate) struct RateLimitNote {
    /// Which of the key's limits.
    pub(crate) index: usize,
    /// `RateLimit-Policy`, shared with every answer of the key.
    policy: bytes::Bytes,
    /// `RateLimit`.
    state: bytes::Bytes,
    /// Seconds until the limit admits again (`Retry-After`, `t`).
    pub(crate) reset_secs: i64,
}

impl RateLimitNote {
    /// `RateLimit: "burst";r=0;t=12` written by hand (limit names need no
    /// escaping: `[a-z0-9-]`): it goes on every answer of a limited key.
    fn new(limits: &KeyLimits, index: usize, remaining: u64, reset_ms: i64) -> Option<Self> {
        let limit = limits.limits.get(index)?;
        let reset_secs = ceil_secs(reset_ms);
        let mut state = Vec::with_capacity(limit.name.len() + 32);
        state.push(b'"');
        state.extend_from_slice(limit.name.as_bytes());
        state.extend_from_slice(b"\";r=");
        push_decimal(&mut state, remaining);
        state.extend_from_slice(b";t=");
        push_decimal(&mut state, u64::try_from(reset_secs).unwrap_or(0));
        Some(RateLimitNote {
            index,
            policy: limits.policies.get(index)?.clone(),
            state: bytes::Bytes::from(state),
            reset_secs,
        })
    }

    /// Adds `RateLimit-Policy` and `RateLimit` to an answer.
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        if let (Ok(p), Ok(s)) = (
            HeaderValue::from_maybe_shared(self.policy.clone()),
            HeaderValue::from_maybe_shared(self.state.clone()),
        ) {
            headers.insert(RATELIMIT_POLICY.clone(), p);
            headers.insert(RATELIMIT.clone(), s);
        }
    }
}

/// `n` in decimal, without the formatting machinery (a tenth of the cost
/// of `to_string` here, on every answer of a limited key).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // n % 10 < 10: the cast keeps every bit.
        digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Why a key's limits refused a request (boxed: the rare path).
pub(crate) struct LimitRefusal {
    /// The answer.
    pub(crate) error: ApiError,
    /// `ip_not_allowed` or `rate_limited`.
    pub(crate) reason: &'static str,
    /// The `RateLimit` headers of the limit that refused, if one did.
    pub(crate) note: Option<RateLimitNote>,
}

/// The longest a request refused by its node's lease, while the limit may
/// still have room, waits for exchanges to grant it: some exchanges at the
/// default 100 ms interval, and below any client's patience.
const LEASE_WAIT_MS: i64 = 1_000;

/// A key's networks and limits, after authentication and before the route
/// and scopes (SPEC §8): 403 `IP_NOT_ALLOWED` (audited like a 403), 429
/// `RATE_LIMITED` with `Retry-After` and the `RateLimit` headers, or the
/// headers an admitted request's answer carries.
pub(crate) async fn check_limits(
    state: &State,
    limits: &KeyLimits,
    client: std::net::IpAddr,
    now: i64,
) -> Result<Option<RateLimitNote>, Box<LimitRefusal>> {
    let sharing = state.snapshot.sharing();
    if !limits.allows(client) {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "IP_NOT_ALLOWED",
            format!("This key may not be used from {client}"),
        );
        return Err(Box::new(LimitRefusal {
            error: e,
            reason: "ip_not_allowed",
            note: None,
        }));
    }
    let mut admission = limits.admit(now, sharing);
    // Shared between nodes, a refusal by this node's lease while the limit
    // may still have room waits for the next exchange and is decided
    // again: a burst at a window's start, or a node's first request of a
    // window, is not refused for want of a lease. The exchange that wakes
    // it may have planned its asks before this request was counted, and a
    // loaded database may be slow to answer, so it waits for exchanges
    // until one grants it or leaves no room, for at most LEASE_WAIT_MS.
    let give_up_at = now.saturating_add(LEASE_WAIT_MS);
    loop {
        let decided_at = state.app.now().max(now);
        match admission {
            Admission::Refused { index, .. }
                if decided_at < give_up_at && limits.lease_may_grow(index, sharing, decided_at) =>
            {
                Box::pin(sharing.next_exchange()).await;
                admission = limits.admit(state.app.now().max(now), sharing);
            }
            _ => break,
        }
    }
    match admission {
        Admission::Allowed {
            tightest: Some(i),
            remaining,
            reset_ms,
        } => Ok(RateLimitNote::new(limits, i, remaining, reset_ms)),
        Admission::Allowed { tightest: None, .. } => Ok(None),
        Admission::Refused {
            index,
            retry_after_ms,
        } => {
            let Some(limit) = limits.limits.get(index) else {
                return Ok(None);
            };
            let secs = ceil_secs(retry_after_ms);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!(
                    "Limit `{}` ({} per {}) is used up; try again in {secs} s",
                    limit.name,
                    limit.requests,
                    limit.per()
                ),
            )
            .detail("limit", limit.name.clone())
            .detail("retry_after", secs);
            e.retry_after = u64::try_from(secs).ok();
            Err(Box::new(LimitRefusal {
                error: e,
                reason: "rate_limited",
                note: RateLimitNote::new(limits, index, 0, retry_after_ms),
            }))
        }
    }
}

/// Counts one authenticated request of `key` for its usage (SPEC §9):
/// `refused_by` is the limit refusal's reason, if a limit refused it.
/// Unauthenticated requests are not a key's use and are not counted.
pub(crate) fn count_use(
    state: &State,
    key: &KeyEntry,
    decision: &keyward_core::Decision,
    method: &str,
    refused_by: Option<&str>,
    now: i64,
) {
    use keyward_app::usage::UsageOutcome;
    let outcome = match (refused_by, decision.outcome) {
        (Some("ip_not_allowed"), _) => UsageOutcome::IpNotAllowed,
        (Some(_), _) => UsageOutcome::RateLimited,
        (None, Outcome::Allowed) => UsageOutcome::Allowed,
        (None, Outcome::NoRoute) => UsageOutcome::NotFound,
        (None, Outcome::MissingScopes) => UsageOutcome::Forbidden,
        (None, Outcome::Unauthenticated(_)) => return,
    };
    state.usage.count(
        key.usage_id,
        &key.key_id,
        decision.route,
        method,
        outcome,
        now,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_are_written_as_to_string_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = Vec::new();
            super::push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
