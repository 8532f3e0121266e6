//! The gateway: authenticate, check the path, match the route, check scopes,
//! audit, forward. Keyward's own endpoints never reach this module.
//!
//! The hot path (a valid key, an allowed read) reads one map and the compiled
//! catalog, takes no lock and writes nothing but two relaxed atomics (last
//! use) and the metrics handles.

use crate::body::Body;
use crate::error::ApiError;
use crate::proxy::{ProxyError, strip_hop_by_hop, strip_spoofable_headers};
use crate::telemetry::monotonic;
use crate::state::State;
use crate::telemetry::X_REQUEST_ID;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Limited;
use hyper::body::Incoming;
use keyward_app::KeyEntry;
use keyward_core::audit::AuditEntry;
use keyward_core::{AuthFailure, Decision, Outcome, ScopeSet, key, path, text};
use std::sync::Arc;
use std::time::Duration;

/// Longest credential looked at; longer ones are malformed.
const MAX_KEY_CHARS: usize = 512;

static X_KEYWARD_KEY_ID: HeaderName = HeaderName::from_static("x-keyward-key-id");
static X_KEYWARD_ORG_ID: HeaderName = HeaderName::from_static("x-keyward-org-id");
static X_KEYWARD_SCOPES: HeaderName = HeaderName::from_static("x-keyward-scopes");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a method changes state (and so is always audited).
pub fn is_write(method: &Method) -> bool {
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
pub fn check_token(token: &str) -> Result<&str, AuthFailure> {
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
pub async fn authenticate(
    state: &State,
    headers: &HeaderMap,
) -> Result<Result<Arc<KeyEntry>, AuthFailure>, ApiError> {
    find_key(state, bearer(headers)).await
}

/// [`authenticate`] for a credential taken from anywhere (`/v1/verify`'s body).
///
/// # Errors
/// 503 when storage cannot be reached to look for a well-formed unknown key.
pub async fn find_key(
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
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub client: &'a crate::web::Client,
    pub request_id: &'a HeaderValue,
    /// The client's own `X-Request-Id`, when clean enough to keep beside
    /// keyward's (never instead of it).
    pub client_request_id: Option<&'a HeaderValue>,
    pub key: Option<&'a KeyEntry>,
}

impl Exchange<'_> {
    pub fn audit(
        &self,
        key_prefix: &str,
        state_default_org: &str,
        status: u16,
        required: Vec<String>,
        reason: &str,
    ) -> AuditEntry {
        // Built without `format!` or a JSON value: this runs for every write
        // and every 403, and the formatting machinery was a third of it.
        AuditEntry {
            at_ms: 0,
            org_id: self
                .key
                .map_or(state_default_org, |k| &*k.org_id)
                .to_owned(),
            actor: self.key.map_or_else(
                || keyward_core::audit::actor::ANONYMOUS.to_owned(),
                |k| keyward_core::audit::actor::key(&k.key_id),
            ),
            action: "gateway.request".to_owned(),
            key_id: self.key.map(|k| String::from(&*k.key_id)),
            method: Some(self.method.as_str().to_owned()),
            path: Some(text::recorded_path(self.path, key_prefix).into_owned()),
            status: Some(status),
            required,
            client: Some(self.client.ip_text().to_owned()),
            request_id: self.request_id.to_str().ok().map(str::to_owned),
            details: reason_details(reason, self.client_request_id.and_then(|v| v.to_str().ok())),
        }
    }
}

/// `{"reason":…}` (and the client's request id, if it sent a clean one),
/// the audit record's details for a gateway request.
fn reason_details(reason: &str, client_request_id: Option<&str>) -> String {
    let mut out = Vec::with_capacity(12 + reason.len());
    out.extend_from_slice(b"{\"reason\":");
    crate::web::push_json_str(&mut out, reason);
    if let Some(id) = client_request_id {
        out.extend_from_slice(b",\"client_request_id\":");
        crate::web::push_json_str(&mut out, id);
    }
    out.push(b'}');
    // Always UTF-8: `reason` is, and the rest is ASCII.
    String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned())
}

/// Handles one gateway request.
pub async fn handle(
    state: Arc<State>,
    peer: crate::web::Client,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = monotonic();
    let request_id = state.request_ids.next();
    let client_request_id =
        crate::telemetry::client_request_id(req.headers().get(&X_REQUEST_ID)).cloned();
    let (mut parts, body) = req.into_parts();
    // Cheap clones (no allocation for standard methods; the URI shares its
    // bytes) so the request can move upstream while these stay for the audit.
    let method = &parts.method.clone();
    let uri = parts.uri.clone();
    let raw_path = uri.path();
    let write = is_write(method);
    let mut ex = Exchange {
        method,
        path: raw_path,
        client: &peer,
        request_id: &request_id,
        client_request_id: client_request_id.as_ref(),
        key: None,
    };

    if let Some(e) = state.check_headers(&parts.headers) {
        return refuse(&state, &ex, write, e, Vec::new(), "headers_too_large").await;
    }
    if let Err(e) = path::check_normal(raw_path) {
        let e = ApiError::bad_request(format!("Path is not in normal form: {e}"));
        return refuse(&state, &ex, write, e, Vec::new(), "path_not_normal").await;
    }
    let now = state.app.now();
    if let Some(e) = state.stale_at(now) {
        return refuse(&state, &ex, false, e, Vec::new(), "stale").await;
    }
    let found = match authenticate(&state, &parts.headers).await {
        Ok(found) => found,
        Err(e) => return refuse(&state, &ex, false, e, Vec::new(), "store_unreachable").await,
    };
    let catalog = state.app.catalog();
    let access = found.as_ref().map(|e| e.access()).map_err(|f| *f);
    let decision = match path::strip_gateway_prefix(catalog.gateway_prefix(), raw_path) {
        Some(route_path) => catalog.authorize(
            access.as_ref().map_err(|f| *f),
            now,
            method.as_str(),
            route_path,
        ),
        None => outside_prefix(catalog.authorize_scopes(
            access.as_ref().map_err(|f| *f),
            now,
            ScopeSet::EMPTY,
        )),
    };
    state
        .metrics
        .decision
        .record(started.elapsed().as_secs_f64());
    let entry = found.ok();
    ex.key = entry.as_deref();
    if let Some(e) = &entry
        && !matches!(decision.outcome, Outcome::Unauthenticated(_))
    {
        state.snapshot.record_use(e, now);
    }

    match decision.outcome {
        Outcome::Allowed => {}
        Outcome::Unauthenticated(f) => {
            return refuse(
                &state,
                &ex,
                write,
                ApiError::unauthorized(f),
                Vec::new(),
                f.reason(),
            )
            .await;
        }
        Outcome::NoRoute => {
            let e = ApiError::no_route(method.as_str(), raw_path);
            return refuse(&state, &ex, write, e, Vec::new(), "no_route").await;
        }
        Outcome::MissingScopes => {
            let missing = catalog.names(decision.missing);
            let required: Vec<String> = missing.iter().map(|s| (*s).to_owned()).collect();
            let e = ApiError::forbidden(missing, catalog.names(decision.granted));
            return refuse(&state, &ex, true, e, required, "missing_scopes").await;
        }
    }
    let Some(key) = entry.as_deref() else {
        return refuse(
            &state,
            &ex,
            write,
            ApiError::unauthorized(AuthFailure::Unknown),
            Vec::new(),
            "unknown",
        )
        .await;
    };
    let Some(upstream) = &state.upstream else {
        let e = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_NOT_CONFIGURED",
            "The request is allowed, but keyward has no upstream to forward it to (start it with --upstream URL)",
        );
        return refuse(
            &state,
            &ex,
            write,
            e,
            required_names(&state, &decision),
            "no_upstream",
        )
        .await;
    };
    if let Some(len) = content_length(&parts.headers)
        && len > state.config.max_body_bytes
    {
        let e = ApiError::payload_too_large(state.config.max_body_bytes);
        return refuse(
            &state,
            &ex,
            write,
            e,
            required_names(&state, &decision),
            "body_too_large",
        )
        .await;
    }

    if write && (!state.audit.healthy() || state.database_down()) {
        // Refused before the upstream sees it: once audit writes fail, only
        // the writes already in flight can reach the upstream unrecorded.
        state.audit.note_refused();
        return audit_failing(&state, &request_id);
    }

    // Forward.
    rewrite_request(
        &mut parts.headers,
        key,
        &request_id,
        &peer.ip,
        upstream.host(),
        uri.authority(),
        state.config.allow_underscore_headers,
    );
    parts.uri = origin_form(&uri);
    parts.version = http::Version::HTTP_11;
    let forwarded = Request::from_parts(
        parts,
        Limited::new(body, limit(state.config.max_body_bytes)),
    );
    let upstream_started = monotonic();
    let sent = upstream.send(forwarded).await;
    state
        .metrics
        .upstream
        .record(upstream_started.elapsed().as_secs_f64());
    let mut res = match sent {
        Ok(res) => res.map(Body::Upstream),
        Err(e) => {
            let (err, reason) = match e {
                ProxyError::Timeout(_) => (
                    ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "GATEWAY_TIMEOUT",
                        e.to_string(),
                    ),
                    "upstream_timeout",
                ),
                ProxyError::BodyTooLarge => (
                    ApiError::payload_too_large(state.config.max_body_bytes),
                    "body_too_large",
                ),
                ProxyError::ClientBody(_) => (
                    ApiError::bad_request(format!("The request body could not be read: {e}")),
                    "bad_body",
                ),
                ProxyError::Unreachable(_) => {
                    tracing::warn!(error = %e, request_id = ?request_id, "upstream failed");
                    (
                        ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "BAD_GATEWAY",
                            "The upstream could not be reached",
                        ),
                        "upstream_unreachable",
                    )
                }
            };
            return refuse(
                &state,
                &ex,
                write,
                err,
                required_names(&state, &decision),
                reason,
            )
            .await;
        }
    };
    let status = res.status().as_u16();
    if write {
        let entry = ex.audit(
            state.app.catalog().key_prefix(),
            &state.default_org,
            status,
            required_names(&state, &decision),
            "allowed",
        );
        if state.record(entry).await.is_err() {
            return audit_unavailable(&state, &request_id, Some(status));
        }
    }
    state.metrics.forwarded(status);
    strip_hop_by_hop(res.headers_mut());
    res.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    res
}

/// Answers a refusal; audits it first when `audited`.
pub async fn refuse(
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

fn required_names(state: &State, decision: &Decision) -> Vec<String> {
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

fn limit(max: u64) -> usize {
    usize::try_from(max).unwrap_or(usize::MAX)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// 503 after the upstream answered but the audit record could not be
/// committed: the client must not take silence for success, nor retry blindly.
pub fn audit_unavailable(
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

/// 503 before forwarding a write while audit records cannot be committed.
fn audit_failing(state: &State, request_id: &HeaderValue) -> Response<Body> {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "AUDIT_UNAVAILABLE",
        "The audit log cannot be written, so writes are refused (not forwarded) until it can; try again shortly",
    );
    e.retry_after = Some(1);
    state.metrics.refused(503, "AUDIT_UNAVAILABLE");
    e.into_response(Some(request_id))
}

/// The request URI as sent upstream: path and query only (origin form).
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// Drops the client's credential, hop-by-hop and `X-Keyward-*` headers, then
/// adds the identity and forwarding headers.
fn rewrite_request(
    headers: &mut HeaderMap,
    entry: &KeyEntry,
    request_id: &HeaderValue,
    client_ip: &HeaderValue,
    upstream_host: &HeaderValue,
    target_authority: Option<&http::uri::Authority>,
    allow_underscore_headers: bool,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    strip_spoofable_headers(headers, allow_underscore_headers);
    // One growth of the map instead of several.
    headers.reserve(8);
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(X_KEYWARD_KEY_ID.clone(), value(&entry.key_id));
    headers.insert(X_KEYWARD_ORG_ID.clone(), value(&entry.org_id));
    // Shared bytes: no copy of the (long) scope list per request.
    let scopes = HeaderValue::from_maybe_shared(entry.grants.effective_text.clone())
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(X_KEYWARD_SCOPES.clone(), scopes);
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    // The client's own `X-Forwarded-*` were dropped above: a back end that
    // trusts the first address would otherwise take the client's word for
    // it. The peer is the client until a trusted proxy is configured.
    headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    // The host the client asked for: an absolute-form target's authority
    // wins over `Host` (RFC 9112 §3.2.2); both were checked at dispatch.
    let asked = headers.remove(header::HOST);
    let asked = target_authority
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or(asked);
    if let Some(host) = asked {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(header::HOST, upstream_host.clone());
}

#[cfg(test)]
mod tests {
    use super::reason_details;

    #[test]
    fn details_are_the_json_of_the_reason() {
        for reason in ["allowed", "missing_scopes", "a \"quoted\"\\ reason\n", ""] {
            assert_eq!(
                reason_details(reason, None),
                serde_json::json!({ "reason": reason }).to_string()
            );
            let with_id: serde_json::Value =
                serde_json::from_str(&reason_details(reason, Some("abc-1"))).expect("JSON");
            assert_eq!(
                with_id,
                serde_json::json!({ "reason": reason, "client_request_id": "abc-1" })
            );
        }
    }
}
