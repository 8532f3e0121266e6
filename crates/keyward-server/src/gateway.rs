//! The gateway: [`admit`] (check the path, authenticate, match the route,
//! check scopes, through [`crate::auth`]), then [`forward`] (rewrite, send,
//! audit writes). Keyward's own endpoints never reach this module.
//!
//! The hot path (a valid key, an allowed read) reads one map and the compiled
//! catalog, takes no lock and writes nothing but two relaxed atomics (last
//! use) and the metrics handles.

use crate::auth::{
    Exchange, LimitRefusal, Question, RateLimitNote, audit_unavailable, authenticate, check_limits,
    decide, is_write, refuse, required_names,
};
use crate::body::Body;
use crate::error::ApiError;
use crate::proxy::{ProxyError, strip_hop_by_hop, strip_spoofable_headers};
use crate::state::State;
use crate::telemetry::{X_REQUEST_ID, monotonic};
use crate::web::Client;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Limited;
use hyper::body::Incoming;
use keyward_app::KeyEntry;
use keyward_core::{AuthFailure, Decision, Outcome, path};
use std::sync::Arc;

static X_KEYWARD_KEY_ID: HeaderName = HeaderName::from_static("x-keyward-key-id");
static X_KEYWARD_ORG_ID: HeaderName = HeaderName::from_static("x-keyward-org-id");
static X_KEYWARD_SCOPES: HeaderName = HeaderName::from_static("x-keyward-scopes");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Handles one gateway request: [`admit`] decides, [`forward`] sends it on.
pub(crate) async fn handle(
    state: Arc<State>,
    peer: Client,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = monotonic();
    let request_id = state.request_ids.next();
    let client_request_id =
        crate::telemetry::client_request_id(req.headers().get(&X_REQUEST_ID)).cloned();
    let (parts, body) = req.into_parts();
    // Cheap clones (no allocation for standard methods; the URI shares its
    // bytes) so the request can move upstream while these stay for the audit.
    let method = &parts.method.clone();
    let uri = parts.uri.clone();
    let write = is_write(method);
    let ex = Exchange {
        method,
        path: uri.path(),
        client: &peer,
        request_id: &request_id,
        client_request_id: client_request_id.as_ref(),
        key: None,
    };
    let (key, decision, limited) =
        match admit(&state, ex, &parts.headers, write, Some(started)).await {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
    let ex = Exchange {
        key: Some(&key),
        ..ex
    };
    let mut res = forward(&state, ex, &key, &uri, &decision, parts, body).await;
    if let Some(note) = limited {
        note.write(res.headers_mut());
    }
    res
}

/// Everything decided before the upstream is involved: the request's shape,
/// the snapshot's age, the key, the route and its scopes. Answers with the
/// key and its decision, or with the refusal (audited where it must be).
/// Forward authentication ([`crate::authorize`]) decides through here too,
/// for the request a proxy describes, and the embedded layer. `started`
/// times the decision for `/metrics`; an embedded node serves no metrics,
/// so it passes `None` and reads no clock for it.
pub(crate) async fn admit(
    state: &State,
    mut ex: Exchange<'_>,
    headers: &HeaderMap,
    write: bool,
    started: Option<std::time::Instant>,
) -> Result<(Arc<KeyEntry>, Decision, Option<RateLimitNote>), Response<Body>> {
    if let Some(e) = state.check_headers(headers) {
        return Err(refuse(state, &ex, write, e, Vec::new(), "headers_too_large").await);
    }
    let raw_path = ex.path;
    if let Err(e) = path::check_normal(raw_path) {
        let e = ApiError::bad_request(format!("Path is not in normal form: {e}"));
        return Err(refuse(state, &ex, write, e, Vec::new(), "path_not_normal").await);
    }
    let now = state.app.now();
    if let Some(e) = state.stale_at(now) {
        return Err(refuse(state, &ex, false, e, Vec::new(), "stale").await);
    }
    let found = match authenticate(state, headers).await {
        Ok(found) => found,
        Err(e) => return Err(refuse(state, &ex, false, e, Vec::new(), "store_unreachable").await),
    };
    let catalog = state.app.catalog();
    let access = found.as_ref().map(|e| e.access()).map_err(|f| *f);
    let question = match path::strip_gateway_prefix(catalog.gateway_prefix(), raw_path) {
        Some(route_path) => Question::Route(ex.method.as_str(), route_path),
        None => Question::Outside,
    };
    let decision = decide(catalog, access.as_ref().map_err(|f| *f), now, &question);
    if let Some(started) = started {
        state
            .metrics
            .decision
            .record(started.elapsed().as_secs_f64());
    }
    let entry = found.ok();
    ex.key = entry.as_deref();
    if let Some(e) = &entry
        && !matches!(decision.outcome, Outcome::Unauthenticated(_))
    {
        state.snapshot.record_use(e, now);
    }
    // Limits, for an authenticated key, before its route and scopes.
    let mut limited = None;
    if let Some(limits) = entry.as_deref().and_then(|e| e.limits.as_deref())
        && !matches!(decision.outcome, Outcome::Unauthenticated(_))
    {
        match check_limits(state, limits, ex.client.addr, now).await {
            Ok(note) => limited = note,
            Err(refused) => {
                let LimitRefusal {
                    error,
                    reason,
                    note,
                } = *refused;
                let audited = reason == "ip_not_allowed";
                if let Some(key) = ex.key {
                    crate::auth::count_use(
                        state,
                        key,
                        &decision,
                        ex.method.as_str(),
                        Some(reason),
                        now,
                    );
                }
                let limit_name = note
                    .as_ref()
                    .and_then(|n| limits.limits.get(n.index))
                    .map(|l| l.name.as_str());
                if let (Some(name), Some(key)) = (limit_name, ex.key) {
                    // Counted once per key, limit and minute, not chained
                    // each time: a key hammering its limit must not flood
                    // the log.
                    let mut entry = ex.audit(
                        state.app.catalog().key_prefix(),
                        &state.default_org,
                        429,
                        Vec::new(),
                        reason,
                    );
                    entry.details =
                        serde_json::json!({"reason": reason, "limit": name}).to_string();
                    entry.at_ms = now;
                    let who = format!("{}/{}", key.key_id, name);
                    state.anonymous.note_as(who, entry, now);
                }
                let mut res = refuse(state, &ex, audited, error, Vec::new(), reason).await;
                if let Some(note) = note {
                    note.write(res.headers_mut());
                }
                return Err(res);
            }
        }
    }

    if let Some(key) = ex.key {
        crate::auth::count_use(state, key, &decision, ex.method.as_str(), None, now);
    }
    let (error, audited, required, reason) = match decision.outcome {
        Outcome::Allowed => match entry {
            Some(key) => return Ok((key, decision, limited)),
            None => (
                ApiError::unauthorized(AuthFailure::Unknown),
                write,
                Vec::new(),
                "unknown",
            ),
        },
        Outcome::Unauthenticated(f) => (ApiError::unauthorized(f), write, Vec::new(), f.reason()),
        Outcome::NoRoute => (
            ApiError::no_route(ex.method.as_str(), raw_path),
            write,
            Vec::new(),
            "no_route",
        ),
        Outcome::MissingScopes => {
            let missing = catalog.names(decision.missing);
            let required: Vec<String> = missing.iter().map(|s| (*s).to_owned()).collect();
            let e = ApiError::forbidden(missing, catalog.names(decision.granted));
            (e, true, required, "missing_scopes")
        }
    };
    Err(refuse(state, &ex, audited, error, required, reason).await)
}

/// Sends an admitted request upstream and relays the answer; audits a
/// write once the upstream has answered.
async fn forward(
    state: &State,
    ex: Exchange<'_>,
    key: &KeyEntry,
    uri: &Uri,
    decision: &Decision,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Response<Body> {
    let request_id = ex.request_id;
    let write = is_write(ex.method);
    let Some(upstream) = &state.upstream else {
        let e = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_NOT_CONFIGURED",
            "The request is allowed, but keyward has no upstream to forward it to (start it with --upstream URL)",
        );
        let required = required_names(state, decision);
        return refuse(state, &ex, write, e, required, "no_upstream").await;
    };
    if let Some(len) = content_length(&parts.headers)
        && len > state.config.max_body_bytes
    {
        let e = ApiError::payload_too_large(state.config.max_body_bytes);
        let required = required_names(state, decision);
        return refuse(state, &ex, write, e, required, "body_too_large").await;
    }

    if write && let Some(refused) = write_gate(state, request_id) {
        return refused;
    }

    rewrite_request(
        &mut parts.headers,
        key,
        request_id,
        &ex.client.ip,
        upstream.host(),
        uri.authority(),
        state.config.allow_underscore_headers,
    );
    parts.uri = origin_form(uri);
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
            let required = required_names(state, decision);
            return refuse(state, &ex, write, err, required, reason).await;
        }
    };
    let status = res.status().as_u16();
    if write {
        let entry = ex.audit(
            state.app.catalog().key_prefix(),
            &state.default_org,
            status,
            required_names(state, decision),
            "allowed",
        );
        if state.record(entry).await.is_err() {
            return audit_unavailable(state, request_id, Some(status));
        }
    }
    state.metrics.forwarded(status);
    strip_hop_by_hop(res.headers_mut());
    res.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    res
}

/// The caller's identity as the upstream reads it (SPEC §4): the gateway's
/// forwarded request, and forward authentication's 200.
pub(crate) fn put_identity(headers: &mut HeaderMap, entry: &KeyEntry, request_id: &HeaderValue) {
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(X_KEYWARD_KEY_ID.clone(), value(&entry.key_id));
    headers.insert(X_KEYWARD_ORG_ID.clone(), value(&entry.org_id));
    // Shared bytes: no copy of the (long) scope list per request.
    let scopes = HeaderValue::from_maybe_shared(entry.grants.effective_text.clone())
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(X_KEYWARD_SCOPES.clone(), scopes);
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
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

/// 503 for an allowed write while audit records cannot be committed (or the
/// database looks unreachable): refused before the upstream sees it, so
/// that once audit writes fail only the writes already in flight can reach
/// the upstream unrecorded.
pub(crate) fn write_gate(state: &State, request_id: &HeaderValue) -> Option<Response<Body>> {
    if state.audit.healthy() && !state.database_down() {
        return None;
    }
    state.audit.note_refused();
    Some(audit_failing(state, request_id))
}

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
    put_identity(headers, entry, request_id);
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
