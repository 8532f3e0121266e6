//! keyward's own endpoints. `POST /v1/verify`, `GET /v1/whoami`, `GET
//! /healthz` and `GET /metrics` are written by hand here, because verify and
//! whoami sit on integrations' hot paths; everything else under `/v1`, and
//! `/openapi.json`, goes to the routed rooms ([`Routes`]: [`crate::admin`]
//! and [`crate::console`]).

use crate::auth::{Asked, caller};
use crate::body::Body;
use crate::error::ApiError;
use crate::state::State;
use crate::telemetry::X_REQUEST_ID;
use crate::web::{Client, Ctx, json_response, method_not_allowed, not_found, wrong_method};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

/// Whether `path` belongs to keyward rather than the gateway.
pub(crate) fn is_own_path(path: &str) -> bool {
    path == "/healthz"
        || path == "/metrics"
        || path == "/openapi.json"
        || path == "/v1"
        || path.starts_with("/v1/")
        || path == "/console"
        || path.starts_with("/console/")
}

/// Handles one request to keyward's own endpoints.
pub(crate) async fn handle(
    state: Arc<State>,
    client: Client,
    admin: &Routes,
    req: Request<Incoming>,
) -> Response<Body> {
    let request_id = state.request_ids.next();
    const READ: &[Method] = &[Method::GET, Method::HEAD];
    let (endpoint, allowed): (Endpoint, &[Method]) = match req.uri().path() {
        "/healthz" => (Endpoint::Healthz, READ),
        "/metrics" => (Endpoint::Metrics, READ),
        "/v1/whoami" => (Endpoint::Whoami, READ),
        "/v1/verify" => (Endpoint::Verify, &[Method::POST]),
        // Every standard method: Envoy's form asks with the original
        // request's (the document lists each).
        p if p == crate::authorize::PATH
            || p.starts_with(crate::authorize::PATH)
                && p.as_bytes().get(crate::authorize::PATH.len()) == Some(&b'/') =>
        {
            const ANY: &[Method] = &[
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
                Method::TRACE,
            ];
            if !ANY.contains(req.method()) {
                return method_not_allowed(req.method(), req.uri().path(), ANY, &request_id);
            }
            return crate::authorize::authorize(&state, &client, req, &request_id).await;
        }
        // Boxed: the admin router's future is large, and inline it would make
        // every request's future (the gateway's too) as large.
        _ => return Box::pin(admin.call(req, client, request_id)).await,
    };
    if !allowed.contains(req.method()) {
        return method_not_allowed(req.method(), req.uri().path(), allowed, &request_id);
    }
    match endpoint {
        Endpoint::Healthz => healthz(&state, &request_id),
        Endpoint::Metrics => metrics(&state, &request_id),
        Endpoint::Whoami => whoami(&state, &client, req, &request_id).await,
        Endpoint::Verify => crate::verify::verify(&state, &client, req, &request_id).await,
    }
}

/// The routed rooms, the admin API and the console, as one router built
/// once per server: siblings that share only [`crate::web`]'s plumbing and
/// [`crate::auth`]'s decision.
pub(crate) struct Routes {
    router: axum::Router,
    /// The catalog's key prefix, to redact keys from logged paths.
    key_prefix: String,
}

impl Routes {
    /// Builds the routers over `state`. They hold the state, so the server
    /// drops this before waiting for the audit writer to finish.
    pub(crate) fn new(state: &Arc<State>) -> Self {
        let key_prefix = state.app.catalog().key_prefix().to_owned();
        let console = crate::console::router().with_state(state.clone());
        let router = crate::admin::router(state.clone())
            .merge(console)
            .fallback(not_found)
            .method_not_allowed_fallback(wrong_method);
        Routes { router, key_prefix }
    }

    /// Serves one request.
    pub(crate) async fn call(
        &self,
        mut req: Request<Incoming>,
        client: Client,
        request_id: HeaderValue,
    ) -> Response<Body> {
        req.extensions_mut().insert(Ctx {
            client,
            request_id: request_id.clone(),
        });
        let method = req.method().clone();
        // Client text: bounded and with keys redacted before it is logged.
        let path =
            keyward_core::text::recorded_path(req.uri().path(), &self.key_prefix).into_owned();
        let mut router = self.router.clone();
        let res = match tower_service::Service::call(&mut router, req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        tracing::info!(
            request_id = ?request_id,
            %method,
            path,
            status = res.status().as_u16(),
            "admin request"
        );
        let mut res = res.map(Body::Admin);
        res.headers_mut()
            .entry(X_REQUEST_ID.clone())
            .or_insert(request_id);
        res
    }
}

/// The endpoints written by hand in this module.
enum Endpoint {
    Healthz,
    Metrics,
    Whoami,
    Verify,
}

fn healthz(state: &State, request_id: &HeaderValue) -> Response<Body> {
    let error = state.database_error();
    let stale = state.stale().is_some();
    let body = serde_json::json!({
        "status": if stale { "stale" } else { "ok" },
        "database": if error.is_some() { "unreachable" } else { "reachable" },
        "database_error": error,
        // Whether writes are being forwarded (they are refused while audit
        // records cannot be committed).
        "audit": if state.audit.healthy() { "ok" } else { "failing" },
        "snapshot": {
            "keys": state.snapshot.len(),
            "version": state.snapshot.version(),
            "age_ms": state.snapshot_age_ms(),
            "max_staleness_ms": u64::try_from(state.config.max_staleness.as_millis()).unwrap_or(u64::MAX),
        },
        "upstream": state.config.upstream.as_ref().map(ToString::to_string),
        // The catalog deciding here (SPEC §13): two nodes with different
        // digests decide differently. `version` is the published version
        // in force; null while the catalog comes from a file or is built in.
        "catalog": {
            "name": state.app.catalog().name(),
            "version": serde_json::Value::Null,
            "sha256": state.app.catalog().sha256_hex(),
        },
        // How keys' limits are enforced: "this node only" (one node),
        // "shared" (leases exchanged through the database), or "local
        // share" (cut off: this node's share of each limit, never more).
        "limits": {
            "mode": crate::background::limits_mode(state),
            "nodes": state.snapshot.sharing().nodes(),
            "exchange_age_ms": state.snapshot.sharing().is_shared()
                .then(|| state.app.now() - state.snapshot.sharing().last_ok_ms()),
        },
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
    crate::background::limits_gauges(state);
    let mut res = Response::new(Body::full(state.metrics.render()));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    res
}

async fn whoami(
    state: &State,
    client: &Client,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let entry = match caller(state, &Asked::of(state, &req, client, request_id), false).await {
        Ok(e) => e,
        Err(res) => return res,
    };
    match state.app.key_of_request(&entry.org_id, &entry.key_id).await {
        Ok(view) => json_response(StatusCode::OK, &view, request_id),
        Err(e) => ApiError::from(e).into_response(Some(request_id)),
    }
}
