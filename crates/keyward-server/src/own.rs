//! keyward's own endpoints. `POST /v1/verify`, `GET /v1/whoami`, `GET
//! /healthz` and `GET /metrics` are written by hand here, because verify and
//! whoami sit on integrations' hot paths; everything else under `/v1`, and
//! `/openapi.json`, goes to the admin API's router ([`crate::admin`]).

use crate::body::Body;
use crate::error::ApiError;
use crate::gateway::{Exchange, authenticate, check_token, find_key, refuse};
use crate::{State, X_REQUEST_ID, json_response};
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use keyward_core::{AuthFailure, Decision, GrantRequest, Outcome, path};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest JSON body keyward's own endpoints read.
pub(crate) const MAX_JSON_BYTES: usize = 64 * 1024;

/// Whether `path` belongs to keyward rather than the gateway.
pub fn is_own_path(path: &str) -> bool {
    path == "/healthz"
        || path == "/metrics"
        || path == "/openapi.json"
        || path == "/v1"
        || path.starts_with("/v1/")
        || path == "/console"
        || path.starts_with("/console/")
}

/// Handles one request to keyward's own endpoints.
pub async fn handle(
    state: Arc<State>,
    client: SocketAddr,
    admin: &crate::admin::Admin,
    req: Request<Incoming>,
) -> Response<Body> {
    let request_id = state
        .request_ids
        .for_request(req.headers().get(&X_REQUEST_ID));
    let path = req.uri().path().to_owned();
    let allowed: &[Method] = match path.as_str() {
        "/healthz" | "/metrics" | "/v1/whoami" => &[Method::GET, Method::HEAD],
        "/v1/verify" => &[Method::POST],
        // Boxed: the admin router's future is large, and inline it would make
        // every request's future (the gateway's too) as large.
        _ => return Box::pin(admin.call(req, client, request_id)).await,
    };
    if !allowed.contains(req.method()) {
        return method_not_allowed(req.method(), &path, allowed, &request_id);
    }
    match req.uri().path() {
        "/healthz" => healthz(&state, &request_id),
        "/metrics" => metrics(&state, &request_id),
        "/v1/whoami" => whoami(&state, client, req, &request_id).await,
        _ => verify(&state, client, req, &request_id).await,
    }
}

pub(crate) fn method_not_allowed(
    method: &Method,
    path: &str,
    allowed: &[Method],
    request_id: &HeaderValue,
) -> Response<Body> {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!(
            "{method} {path} is not supported; use {}",
            names.join(" or ")
        ),
    );
    let mut res = e.into_response(Some(request_id));
    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
        res.headers_mut().insert(ALLOW, v);
    }
    res
}

fn healthz(state: &State, request_id: &HeaderValue) -> Response<Body> {
    let error = state
        .sync_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let stale = state.stale().is_some();
    let body = serde_json::json!({
        "status": if stale { "stale" } else { "ok" },
        "database": if error.is_some() { "unreachable" } else { "reachable" },
        "database_error": error,
        "snapshot": {
            "keys": state.snapshot.len(),
            "version": state.snapshot.version(),
            "age_ms": state.snapshot_age_ms(),
            "max_staleness_ms": u64::try_from(state.config.max_staleness.as_millis()).unwrap_or(u64::MAX),
        },
        "upstream": state.config.upstream.as_ref().map(ToString::to_string),
    });
    let status = if stale {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut res = json_response(status, &body, request_id);
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn metrics(state: &State, request_id: &HeaderValue) -> Response<Body> {
    let mut res = Response::new(Body::full(state.metrics.render()));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    res
}

/// What an own endpoint knows of its request before reading the body.
pub(crate) struct Asked<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) client: SocketAddr,
    pub(crate) request_id: &'a HeaderValue,
}

impl<'a> Asked<'a> {
    fn of(req: &'a Request<Incoming>, client: SocketAddr, request_id: &'a HeaderValue) -> Self {
        Asked {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
            client,
            request_id,
        }
    }

    fn exchange(&self, key: Option<&'a keyward_app::KeyEntry>) -> Exchange<'a> {
        Exchange {
            method: self.method,
            path: self.path,
            client: self.client,
            request_id: self.request_id,
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
    let audited = audit_writes && crate::gateway::is_write(asked.method);
    if let Some(e) = state.stale() {
        return Err(refuse(state, &ex, false, e, Vec::new(), "stale").await);
    }
    let found = match authenticate(state, asked.headers).await {
        Ok(f) => f,
        Err(e) => return Err(refuse(state, &ex, false, e, Vec::new(), "store_unreachable").await),
    };
    let now = state.app.now();
    let checked = found.and_then(|e| keyward_core::check_key_state(&e.access(), now).map(|()| e));
    match checked {
        Ok(entry) => {
            state.snapshot.record_use(&entry, now);
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
    let held = catalog.authorize_scopes(Ok(&caller_entry.access()), state.app.now(), required);
    if held.is_allowed() {
        return Ok(());
    }
    let ex = asked.exchange(Some(caller_entry));
    let missing = catalog.names(held.missing);
    let names = missing.iter().map(|s| (*s).to_owned()).collect();
    let e = ApiError::forbidden(missing, catalog.names(held.granted));
    Err(refuse(state, &ex, true, e, names, "missing_scopes").await)
}

async fn whoami(
    state: &State,
    client: SocketAddr,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let entry = match caller(state, &Asked::of(&req, client, request_id), false).await {
        Ok(e) => e,
        Err(res) => return res,
    };
    match state.app.key_of_request(&entry.org_id, &entry.key_id).await {
        Ok(view) => json_response(StatusCode::OK, &view, request_id),
        Err(e) => ApiError::from(e).into_response(Some(request_id)),
    }
}

/// `POST /v1/verify` body. Unknown fields are refused so a typo in `scopes`
/// cannot silently verify nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Serialize)]
struct VerifyResponse<'a> {
    valid: bool,
    allowed: bool,
    key_id: Option<&'a str>,
    org_id: Option<&'a str>,
    scopes: Vec<&'a str>,
    required: Vec<&'a str>,
    missing: Vec<&'a str>,
    reason: &'static str,
}

/// Reads a JSON body of at most [`MAX_JSON_BYTES`].
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    let mut body = Limited::new(body, MAX_JSON_BYTES);
    // The common case is one data frame: take it without collecting.
    let first = match body.frame().await {
        None => return Ok(Bytes::new()),
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        Some(Err(e)) => return Err(body_error(&*e)),
    };
    if http_body::Body::is_end_stream(&body) {
        return Ok(first);
    }
    match body.collect().await {
        Ok(rest) => {
            let mut all = first.to_vec();
            all.extend_from_slice(&rest.to_bytes());
            Ok(Bytes::from(all))
        }
        Err(e) => Err(body_error(&*e)),
    }
}

pub(crate) fn body_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ApiError {
    if e.is::<http_body_util::LengthLimitError>() {
        ApiError::payload_too_large(MAX_JSON_BYTES as u64)
    } else {
        ApiError::bad_request(format!("Could not read the request body: {e}"))
    }
}

/// Parses a JSON body; syntax errors are 400, wrong shapes 422.
fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let message = format!("Invalid JSON body: {e}");
        match e.classify() {
            serde_json::error::Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "VALIDATION_FAILED",
                message,
            ),
            _ => ApiError::bad_request(message),
        }
    })
}

async fn verify(
    state: &State,
    client: SocketAddr,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let asked = Asked::of(&req, client, request_id);
    let caller_entry = match caller(state, &asked, false).await {
        Ok(e) => e,
        Err(res) => return res,
    };
    if let Err(res) = require(state, &asked, &caller_entry, state.verify_scope).await {
        return res;
    }
    let catalog = state.app.catalog();
    let now = state.app.now();
    let bytes = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return e.into_response(Some(request_id)),
    };
    let body: VerifyRequest<'_> = match parse_json(&bytes) {
        Ok(b) => b,
        Err(e) => return e.into_response(Some(request_id)),
    };
    let question = match (&body.method, &body.path, &body.scopes) {
        (Some(m), Some(p), None) => {
            let route_path = p.split('?').next().unwrap_or(p);
            if let Err(e) = path::check_normal(route_path) {
                return ApiError::validation(
                    "path",
                    format!("path `{p}` is not in normal form: {e}"),
                )
                .into_response(Some(request_id));
            }
            let route_path = path::strip_gateway_prefix(catalog.gateway_prefix(), route_path)
                .unwrap_or(route_path);
            Question::Route(m.to_ascii_uppercase(), route_path)
        }
        (None, None, Some(scopes)) => {
            let req = GrantRequest {
                scopes: scopes.clone(),
                ..GrantRequest::default()
            };
            match catalog.resolve_grants(&req) {
                Ok(r) => Question::Scopes(r.granted),
                Err(e) => {
                    return ApiError::validation("scopes", e.to_string())
                        .into_response(Some(request_id));
                }
            }
        }
        _ => {
            return ApiError::validation("method", "send either `method` and `path`, or `scopes`")
                .into_response(Some(request_id));
        }
    };
    let found = match find_key(state, check_token(&body.key)).await {
        Ok(f) => f,
        Err(e) => return e.into_response(Some(request_id)),
    };
    // Another organization's key is unknown here.
    let found = found.and_then(|e| {
        if e.org_id == caller_entry.org_id {
            Ok(e)
        } else {
            Err(AuthFailure::Unknown)
        }
    });
    let access = found.as_ref().map(|e| e.access()).map_err(|f| *f);
    let decision: Decision = match &question {
        Question::Route(m, p) => catalog.authorize(access.as_ref().map_err(|f| *f), now, m, p),
        Question::Scopes(required) => {
            catalog.authorize_scopes(access.as_ref().map_err(|f| *f), now, *required)
        }
    };
    let entry = found.as_ref().ok();
    let valid = !matches!(decision.outcome, Outcome::Unauthenticated(_));
    let answer = VerifyResponse {
        valid,
        allowed: decision.is_allowed(),
        key_id: entry.filter(|_| valid).map(|e| &*e.key_id),
        org_id: entry.filter(|_| valid).map(|e| &*e.org_id),
        scopes: if valid {
            catalog.names(decision.effective)
        } else {
            Vec::new()
        },
        required: catalog.names(decision.required),
        missing: catalog.names(decision.missing),
        reason: decision.reason(),
    };
    json_response(StatusCode::OK, &answer, request_id)
}

enum Question<'a> {
    Route(String, &'a str),
    Scopes(keyward_core::ScopeSet),
}
