//! The OpenAPI document's frame, its error shape, and the documentation of
//! the endpoints served by hand ([`crate::own`], [`crate::verify`]).

use keyward_app::views::KeyView;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyward",
        description = "Scoped API keys: the admin API, the verify service and operations endpoints. Errors use one shape: `{\"errors\": [{\"code\", \"message\", \"details\"}]}`."
    ),
    paths(doc_verify, doc_whoami, doc_authorize, doc_healthz, doc_metrics),
    modifiers(&BearerAuth, &AnyMethod),
    security(("bearer" = []))
)]
pub(super) struct ApiDoc;

pub(super) struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `/v1/authorize` answers every method (Envoy asks with the original
/// request's): the document says so, one operation per method, so clients
/// and fuzzers expect no 405 there.
pub(super) struct AnyMethod;

impl Modify for AnyMethod {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(item) = openapi.paths.paths.get_mut("/v1/authorize") else {
            return;
        };
        let Some(get) = item.get.clone() else {
            return;
        };
        let with_id = |suffix: &str| {
            let mut op = get.clone();
            op.operation_id = op.operation_id.map(|id| format!("{id}_{suffix}"));
            Some(op)
        };
        item.post = with_id("post");
        item.put = with_id("put");
        item.patch = with_id("patch");
        item.delete = with_id("delete");
        item.head = with_id("head");
        item.options = with_id("options");
        item.trace = with_id("trace");
    }
}

/// Every error: `{"errors": [{"code", "message", "details"}]}`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only: errors are built by ApiError")]
pub(super) struct ErrorDoc {
    errors: Vec<ErrorItemDoc>,
}

#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only")]
pub(super) struct ErrorItemDoc {
    /// `UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `VALIDATION_FAILED`, …
    code: String,
    /// What went wrong, for people.
    message: String,
    /// Machine-readable specifics (`required`, `available`, `field`, …).
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// `POST /v1/verify` body: either `method` and `path`, or `scopes`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code, reason = "documentation only: verify.rs parses the body")]
#[serde(untagged)]
pub(super) enum VerifyRequestDoc {
    Route(VerifyRouteDoc),
    Scopes(VerifyScopesDoc),
}

/// Would this key be allowed this request?
#[derive(Deserialize, ToSchema)]
#[allow(dead_code, reason = "documentation only")]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyRouteDoc {
    /// The key to check.
    key: String,
    /// HTTP method of the request to check.
    method: String,
    /// Path of the request to check, with or without the gateway prefix.
    #[schema(pattern = "^/")]
    path: String,
    /// The address the key was presented from, checked against the key's
    /// allowed networks (required for a key that has any).
    #[schema(required = false)]
    client_ip: Option<String>,
}

/// Does this key hold these scopes?
#[derive(Deserialize, ToSchema)]
#[allow(dead_code, reason = "documentation only")]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyScopesDoc {
    /// The key to check.
    key: String,
    /// Scopes to check.
    #[schema(min_items = 1)]
    scopes: Vec<String>,
    /// The address the key was presented from, checked against the key's
    /// allowed networks (required for a key that has any).
    #[schema(required = false)]
    client_ip: Option<String>,
}

/// `POST /v1/verify` answer, for any key, valid or not.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only: verify.rs renders the answer")]
pub(super) struct VerifyResponseDoc {
    valid: bool,
    allowed: bool,
    key_id: Option<String>,
    org_id: Option<String>,
    /// Effective scopes of a valid key.
    scopes: Vec<String>,
    required: Vec<String>,
    missing: Vec<String>,
    /// `allowed`, `missing_scopes`, `no_route`, `revoked`, `expired`, `unknown`,
    /// `ip_not_allowed`, `rate_limited`, …
    reason: String,
    /// Seconds until the key's limit admits again, when `rate_limited`.
    #[schema(required = false)]
    retry_after: Option<i64>,
}

/// Health of this node.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only: own.rs renders it")]
pub(super) struct HealthDoc {
    /// `ok` or `stale`.
    status: String,
    /// `reachable` or `unreachable`.
    database: String,
    database_error: Option<String>,
    /// Keys, change-log version, age.
    #[schema(value_type = Object)]
    snapshot: serde_json::Value,
    upstream: Option<String>,
    /// The catalog deciding on this node: `name`, `version` (the published
    /// version in force, null while it comes from a file or is built in)
    /// and `sha256` (of its text: nodes with different digests decide
    /// differently).
    #[schema(value_type = Object)]
    catalog: serde_json::Value,
}

#[utoipa::path(
    post, path = "/v1/verify", tag = "verify",
    request_body = VerifyRequestDoc,
    responses(
        (status = 200, description = "The decision", body = VerifyResponseDoc),
        (status = "default", description = "Error (the caller needs `keyward-api-keys:verify`)", body = ErrorDoc),
    )
)]
#[allow(dead_code, reason = "documentation of verify.rs's verify")]
pub(super) fn doc_verify() {}

#[utoipa::path(
    get, path = "/v1/whoami", tag = "verify",
    responses(
        (status = 200, description = "The calling key", body = KeyView),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
#[allow(dead_code, reason = "documentation of own.rs's whoami")]
pub(super) fn doc_whoami() {}

/// Forward authentication for a proxy in front of the API (nginx
/// `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`): may the
/// request described by `X-Forwarded-Method` + `X-Forwarded-Uri` (or
/// `X-Original-Method` + `X-Original-URI`, never both) pass, judged by the
/// client's own `Authorization` header as the gateway would judge it? Any
/// method is answered; Envoy's `ext_authz` asks with
/// `/v1/authorize/<original path>` and the original method instead.
#[utoipa::path(
    get, path = "/v1/authorize", tag = "verify",
    // The caller is the proxy, which holds no key: the `Authorization`
    // judged is the described request's, passed on by the proxy.
    security(()),
    params(
        ("X-Forwarded-Method" = String, Header, description = "The method of the request to authorize (Traefik, Caddy)"),
        ("X-Forwarded-Uri" = String, Header, description = "Its path and query (Traefik, Caddy)"),
    ),
    responses(
        (status = 200, description = "Allowed; the identity to pass on",
            headers(
                ("X-Keyward-Key-Id" = String, description = "The key's id"),
                ("X-Keyward-Org-Id" = String, description = "Its organization"),
                ("X-Keyward-Scopes" = String, description = "Its effective scopes, space-separated"),
                ("X-Request-Id" = String, description = "keyward's request id"),
            )),
        (status = "default", description = "Refused, with the gateway's status and error document (400 for a request not described once)", body = ErrorDoc),
    )
)]
#[allow(dead_code, reason = "documentation of authorize.rs")]
pub(super) fn doc_authorize() {}

#[utoipa::path(
    get, path = "/healthz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Healthy", body = HealthDoc),
        (status = 503, description = "Stale: the database has not been reached for too long", body = HealthDoc),
    )
)]
#[allow(dead_code, reason = "documentation of own.rs's healthz")]
pub(super) fn doc_healthz() {}

#[utoipa::path(
    get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
#[allow(dead_code, reason = "documentation of own.rs's metrics")]
pub(super) fn doc_metrics() {}
