//! The admin API (SPEC §6): keys, groups, audit queries, the catalog, and
//! `/openapi.json`.
//!
//! Routes are registered with `utoipa_axum::routes!`, which takes each
//! handler's `#[utoipa::path]` for both the route and its OpenAPI operation:
//! a route cannot exist without its spec. The four endpoints served by hand
//! in [`crate::own`] (verify, whoami, healthz, metrics) are documented by
//! the stubs at the end of this file, and a test checks the two lists agree.
//!
//! Every handler does four things only: authorize (the [`Authorized`]
//! extractor, before the body is read, so a caller without the scope learns
//! nothing from validation errors), read the input (our own extractors,
//! whose rejections are the SPEC error shape, never axum's plain text), call
//! the one use case of [`keyward_app::App`] the CLI also calls, and render.

use crate::auth::{
    Anyone, Asked, AuditRead, GroupKeysRead, GroupUsersRead, GroupsRead, GroupsWrite, KeysRead,
    KeysWrite, Need, caller, require,
};
use crate::body::Body;
use crate::error::ApiError;
use crate::state::State;
use crate::web::{
    Answer, Ctx, JsonBody, OptionalJsonBody, PathArgs, QueryArgs, Reply, ctx, fail, ok, reply,
};
use axum::extract::FromRequestParts;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use keyward_app::people::{AuditView, GroupView, UserView};
use keyward_app::views::{CatalogView, CreatedKey, KeyView};
use keyward_app::{Actor, CreateKey, KeyEntry};
use keyward_app::{AuditQuery, KeyFilter, Org};
use keyward_core::{Environment, GrantRequest};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Shared = Arc<State>;

/// Default and largest page of `GET /v1/keys` and `GET /v1/audit`.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// The admin API's routes over `state`, `/openapi.json` included, for
/// [`crate::own::Routes`] to serve beside the console's.
pub(crate) fn router(state: Shared) -> axum::Router {
    let mut spec = serde_json::to_value(openapi()).unwrap_or_default();
    describe_catalog(&mut spec, state.app.catalog());
    let spec = bytes::Bytes::from(serde_json::to_vec(&spec).unwrap_or_default());
    api_router().with_state(state).split_for_parts().0.route(
        "/openapi.json",
        axum::routing::get(move || {
            let spec = spec.clone();
            async move {
                let mut res = Response::new(Body::full(spec));
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                reply(res)
            }
        }),
    )
}

/// The OpenAPI document, for tests and tools.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// Narrows the served document to the catalog in force: the grants a key
/// may be created with are this catalog's names, and one list must be
/// non-empty. Generic clients (and fuzzers) then send what the server takes.
fn describe_catalog(spec: &mut serde_json::Value, catalog: &keyward_core::Catalog) {
    if !spec["components"]["schemas"]["CreateKeyBody"].is_object() {
        return;
    }
    let scopes: Vec<&str> = catalog
        .scopes()
        .iter()
        .filter(|s| s.status() == keyward_core::ScopeStatus::Available)
        .map(keyward_core::Scope::name)
        .collect();
    let sets: Vec<&str> = catalog.permission_sets().iter().map(|p| p.id()).collect();
    let presets: Vec<&str> = catalog.presets().iter().map(|p| p.id()).collect();
    for (field, names) in [
        ("scopes", scopes),
        ("permission_sets", sets),
        ("presets", presets),
    ] {
        if field == "scopes" {
            let verify = &mut spec["components"]["schemas"]["VerifyScopesDoc"];
            if verify.is_object() {
                verify["properties"]["scopes"]["items"]["enum"] = serde_json::json!(names);
            }
        }
        let body = &mut spec["components"]["schemas"]["CreateKeyBody"];
        body["properties"][field]["items"]["enum"] = serde_json::json!(names);
        body["properties"][field]["uniqueItems"] = serde_json::Value::Bool(true);
    }
    let body = &mut spec["components"]["schemas"]["CreateKeyBody"];
    body["anyOf"] = serde_json::json!([
        {"required": ["scopes"], "properties": {"scopes": {"minItems": 1}}},
        {"required": ["permission_sets"], "properties": {"permission_sets": {"minItems": 1}}},
        {"required": ["presets"], "properties": {"presets": {"minItems": 1}}},
    ]);
}

fn api_router() -> OpenApiRouter<Shared> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_key, list_keys))
        .routes(routes!(show_key, key_immutable))
        .routes(routes!(revoke_key))
        .routes(routes!(roll_key))
        .routes(routes!(catalog))
        .routes(routes!(list_groups))
        .routes(routes!(group_users))
        .routes(routes!(group_keys))
        .routes(routes!(add_member, remove_member))
        .routes(routes!(audit))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyward",
        description = "Scoped API keys: the admin API, the verify service and operations endpoints. Errors use one shape: `{\"errors\": [{\"code\", \"message\", \"details\"}]}`."
    ),
    paths(doc_verify, doc_whoami, doc_healthz, doc_metrics),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

// ---- plumbing ----------------------------------------------------------

/// The caller, authenticated and holding every scope of `N`. Keys and (with
/// the console) sessions both end up as an [`Actor`] in an [`Org`].
struct Authorized<N: Need> {
    actor: Actor,
    org: Org,
    ctx: Ctx,
    _need: PhantomData<N>,
}

impl<N: Need> FromRequestParts<Shared> for Authorized<N> {
    type Rejection = Reply;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Reply> {
        let ctx = ctx(parts);
        let asked = Asked {
            method: &parts.method,
            path: parts.uri.path(),
            headers: &parts.headers,
            client: &ctx.client,
            request_id: &ctx.request_id,
            now: state.app.now(),
        };
        let entry: Arc<KeyEntry> = caller(state, &asked, true).await.map_err(reply)?;
        let Some(required) = state.app.catalog().scope_set(N::SCOPES) else {
            return Err(fail(
                ApiError::unavailable("the catalog lacks keyward's reserved scopes"),
                &ctx,
            ));
        };
        require(state, &asked, &entry, required)
            .await
            .map_err(reply)?;
        let org = state
            .app
            .org_by_id(&entry.org_id)
            .await
            .map_err(|e| fail(e, &ctx))?;
        let actor = Actor {
            id: keyward_core::audit::actor::key(&entry.key_id),
            effective: entry.access().effective,
            client: Some(ctx.client.ip_text().to_owned()),
            request_id: ctx.request_id_text(),
        };
        Ok(Authorized {
            actor,
            org,
            ctx,
            _need: PhantomData,
        })
    }
}

// ---- documents ---------------------------------------------------------

/// Every error: `{"errors": [{"code", "message", "details"}]}`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only: errors are built by ApiError")]
struct ErrorDoc {
    errors: Vec<ErrorItemDoc>,
}

#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only")]
struct ErrorItemDoc {
    /// `UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `VALIDATION_FAILED`, …
    code: String,
    /// What went wrong, for people.
    message: String,
    /// Machine-readable specifics (`required`, `available`, `field`, …).
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// A page of results; `next_cursor` fetches the next one.
#[derive(Serialize, ToSchema)]
struct Page<T: ToSchema> {
    data: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// A list that is never paged.
#[derive(Serialize, ToSchema)]
struct List<T: ToSchema> {
    data: Vec<T>,
}

// ---- keys --------------------------------------------------------------

/// `POST /v1/keys`. Only `name` and one non-empty grant list are required.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    /// What the key is for; trimmed, at most 100 characters.
    #[schema(min_length = 1, max_length = 100, pattern = r"^\s*\S")]
    name: String,
    /// Scopes to grant.
    #[serde(default)]
    scopes: Vec<String>,
    /// Permission sets to grant.
    #[serde(default)]
    permission_sets: Vec<String>,
    /// Presets to grant.
    #[serde(default)]
    presets: Vec<String>,
    /// RFC 3339 expiry, in the future.
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Free text.
    #[serde(default)]
    description: Option<String>,
    /// `live` (default) or `test`.
    #[serde(default)]
    #[schema(pattern = "^(live|test)$")]
    environment: Option<String>,
    /// Required when more than 10 write-capable permission sets are selected.
    #[serde(default)]
    acknowledge_broad_access: bool,
}

fn parse_time(field: &'static str, text: &str) -> Result<i64, ApiError> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            ApiError::validation(field, format!("`{text}` is not an RFC 3339 timestamp: {e}"))
        })
}

/// Create a key. The full key is in this response and never again.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKeyBody,
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = CreatedKey),
        (status = "default", description = "Error (401, 403, 413, 422 `VALIDATION_FAILED` or `BROAD_ACCESS_UNACKNOWLEDGED`)", body = ErrorDoc),
    )
)]
async fn create_key(
    state: axum::extract::State<Shared>,
    who: Authorized<KeysWrite>,
    JsonBody(body): JsonBody<CreateKeyBody>,
) -> Answer {
    let ctx = &who.ctx;
    for (field, names) in [
        ("scopes", &body.scopes),
        ("permission_sets", &body.permission_sets),
        ("presets", &body.presets),
    ] {
        listed_once(field, names).map_err(|e| fail(e, ctx))?;
    }
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|t| parse_time("expires_at", t))
        .transpose()
        .map_err(|e| fail(e, ctx))?;
    let environment = body
        .environment
        .as_deref()
        .map(|e| {
            Environment::parse(e).map_err(|_| {
                ApiError::validation(
                    "environment",
                    format!("unknown environment `{e}`: expected live or test"),
                )
            })
        })
        .transpose()
        .map_err(|e| fail(e, ctx))?;
    let req = CreateKey {
        name: body.name,
        description: body.description.unwrap_or_default(),
        environment,
        grants: GrantRequest {
            scopes: body.scopes,
            permission_sets: body.permission_sets,
            presets: body.presets,
        },
        expires_at,
        acknowledge_broad_access: body.acknowledge_broad_access,
    };
    let created = state
        .app
        .create_key(&who.actor, &who.org, req)
        .await
        .map_err(|e| fail(e, ctx))?;
    ok(StatusCode::CREATED, &created, ctx)
}

/// The create body's lists are sets (`uniqueItems` in `/openapi.json`): a name
/// given twice is a client's mistake worth hearing about, not something to
/// merge silently.
fn listed_once(field: &str, names: &[String]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    match names.iter().find(|n| !seen.insert(n.as_str())) {
        Some(twice) => Err(ApiError::validation(
            field,
            format!("`{twice}` is listed more than once in {field}"),
        )),
        None => Ok(()),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct KeyListQuery {
    /// `active`, `revoked` or `expired`.
    #[param(pattern = "^(active|revoked|expired)$")]
    status: Option<String>,
    /// Only legacy keys (`true`) or only scoped keys (`false`).
    legacy: Option<bool>,
    /// Only keys not used for this long, e.g. `90d`.
    #[param(pattern = "^[0-9]{1,3}(ms|s|m|h|d|w)$")]
    unused_for: Option<String>,
    /// Only keys holding this permission set.
    permission_set: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]+\..+$")]
    cursor: Option<String>,
}

fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::validation(
            "limit",
            format!("must be between 1 and {MAX_PAGE}, got {n}"),
        )),
    }
}

fn key_cursor(text: &str) -> Result<(i64, String), ApiError> {
    text.split_once('.')
        .and_then(|(at, id)| Some((at.parse().ok()?, id)))
        .filter(|(_, id)| !id.is_empty())
        .map(|(at, id)| (at, id.to_owned()))
        .ok_or_else(|| {
            ApiError::validation(
                "cursor",
                "not a cursor this API returned: start over without it",
            )
        })
}

/// List the organization's keys, newest first.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    params(KeyListQuery),
    responses(
        (status = 200, description = "A page of keys", body = Page<KeyView>),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn list_keys(
    state: axum::extract::State<Shared>,
    who: Authorized<KeysRead>,
    QueryArgs(q): QueryArgs<KeyListQuery>,
) -> Answer {
    let ctx = &who.ctx;
    let filter = key_filter(&state, &q).map_err(|e| fail(e, ctx))?;
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE + 1) - 1;
    let mut keys = state
        .app
        .list_keys(&who.org, &filter)
        .await
        .map_err(|e| fail(e, ctx))?;
    let next_cursor = if keys.len() > limit as usize {
        keys.truncate(limit as usize);
        keys.last().map(|k| format!("{}.{}", k.created_at, k.id))
    } else {
        None
    };
    ok(
        StatusCode::OK,
        &Page {
            data: keys,
            next_cursor,
        },
        ctx,
    )
}

fn key_filter(state: &State, q: &KeyListQuery) -> Result<KeyFilter, ApiError> {
    let now = state.app.now();
    let mut filter = KeyFilter {
        legacy: q.legacy,
        permission_set: q.permission_set.clone(),
        before: q.cursor.as_deref().map(key_cursor).transpose()?,
        // One more than asked tells whether another page follows.
        limit: Some(page_size(q.limit)? + 1),
        ..KeyFilter::default()
    };
    if let Some(d) = &q.unused_for {
        let ms = keyward_core::parse_duration_ms(d)
            .map_err(|e| ApiError::validation("unused_for", e.to_string()))?;
        filter.unused_since = Some(now.saturating_sub(ms));
    }
    if let Some(s) = &q.status {
        keyward_app::filter_status(&mut filter, s, now)?;
    }
    Ok(filter)
}

/// One key: grants, effective scopes, status, last use. Never the secret.
#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = "default", description = "Error (404 also for another organization's key)", body = ErrorDoc),
    )
)]
async fn show_key(
    state: axum::extract::State<Shared>,
    who: Authorized<KeysRead>,
    PathArgs(id): PathArgs<String>,
) -> Answer {
    let key = state
        .app
        .show_key(&who.org, &id)
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::OK, &key, &who.ctx)
}

/// Keys are immutable: every attempt to edit or delete one is refused (and
/// audited), pointing to what to do instead.
#[utoipa::path(
    method(put, patch, delete, post), path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 405, description = "`KEY_IMMUTABLE`: create a new key instead (or revoke this one)", body = ErrorDoc),
        (status = "default", description = "Error (401)", body = ErrorDoc),
    )
)]
async fn key_immutable(
    state: axum::extract::State<Shared>,
    who: Authorized<Anyone>,
    method: Method,
    uri: http::Uri,
    PathArgs(id): PathArgs<String>,
) -> Answer {
    let ctx = &who.ctx;
    let message = if method == Method::DELETE {
        "API keys are not deleted: revoke it with POST /v1/keys/{id}/revoke; its record stays for the audit trail"
    } else {
        "API keys cannot be edited: create a new key with the access you need, then revoke this one"
    };
    let mut entry = keyward_core::audit::AuditEntry {
        org_id: who.org.id.clone(),
        actor: who.actor.id.clone(),
        action: "key.edit_refused".to_owned(),
        // Both are client text: bounded, keys redacted.
        key_id: Some(
            keyward_core::text::recorded_path(&id, state.app.catalog().key_prefix()).into_owned(),
        ),
        method: Some(method.to_string()),
        path: Some(
            keyward_core::text::recorded_path(uri.path(), state.app.catalog().key_prefix())
                .into_owned(),
        ),
        status: Some(405),
        client: who.actor.client.clone(),
        request_id: who.actor.request_id.clone(),
        details: "{}".to_owned(),
        ..keyward_core::audit::AuditEntry::default()
    };
    entry.at_ms = state.app.now();
    if state.record(entry).await.is_err() {
        return Err(fail(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "AUDIT_UNAVAILABLE",
                "The refusal could not be audited; try again",
            ),
            ctx,
        ));
    }
    let mut res = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "KEY_IMMUTABLE", message)
        .detail("key_id", id)
        .into_response(Some(&ctx.request_id));
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    Err(reply(res))
}

/// The revocation answer: the key as it now is, and whether it already was.
#[derive(Serialize, ToSchema)]
struct Revocation {
    #[serde(flatten)]
    key: KeyView,
    /// Revoked earlier; nothing changed.
    already_revoked: bool,
}

/// Revoke a key at once. Revoking twice changes nothing.
#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 200, description = "Revoked", body = Revocation),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn revoke_key(
    state: axum::extract::State<Shared>,
    who: Authorized<KeysWrite>,
    PathArgs(id): PathArgs<String>,
) -> Answer {
    let (key, outcome) = state
        .app
        .revoke_key(&who.actor, &who.org, &id)
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    let already_revoked = matches!(outcome, keyward_app::Revoked::Already(_));
    ok(
        StatusCode::OK,
        &Revocation {
            key,
            already_revoked,
        },
        &who.ctx,
    )
}

/// `POST /v1/keys/{id}/roll`; the body may be empty.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RollBody {
    /// How long the old key keeps working, e.g. `24h` (default) or `0s`.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,3}(ms|s|m|h|d|w)$")]
    grace: Option<String>,
}

/// Replace a key with a new one holding the same grants; the old one keeps
/// working for the grace period, then expires.
#[utoipa::path(
    post, path = "/v1/keys/{id}/roll", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    request_body(content = Option<RollBody>, description = "Optional"),
    responses(
        (status = 201, description = "The new key, shown this once", body = CreatedKey),
        (status = "default", description = "Error (404; 409 for a revoked or expired key)", body = ErrorDoc),
    )
)]
async fn roll_key(
    state: axum::extract::State<Shared>,
    who: Authorized<KeysWrite>,
    PathArgs(id): PathArgs<String>,
    OptionalJsonBody(body): OptionalJsonBody<RollBody>,
) -> Answer {
    let ctx = &who.ctx;
    let grace = body.grace.as_deref().unwrap_or("24h");
    let grace_ms = keyward_core::parse_duration_ms(grace)
        .map_err(|e| fail(ApiError::validation("grace", e.to_string()), ctx))?;
    let created = state
        .app
        .roll_key(&who.actor, &who.org, &id, grace_ms)
        .await
        .map_err(|e| fail(e, ctx))?;
    ok(StatusCode::CREATED, &created, ctx)
}

/// The catalog in force: scopes, permission sets, presets, routes.
#[utoipa::path(
    get, path = "/v1/catalog", tag = "catalog",
    responses(
        (status = 200, description = "The catalog", body = CatalogView),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn catalog(state: axum::extract::State<Shared>, who: Authorized<KeysRead>) -> Answer {
    ok(
        StatusCode::OK,
        &CatalogView::new(state.app.catalog()),
        &who.ctx,
    )
}

// ---- groups ------------------------------------------------------------

/// Every authorization group: `administrators`, then one per permission set.
#[utoipa::path(
    get, path = "/v1/groups", tag = "groups",
    responses(
        (status = 200, description = "The groups", body = List<GroupView>),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn list_groups(state: axum::extract::State<Shared>, who: Authorized<GroupsRead>) -> Answer {
    let data = state
        .app
        .list_groups(&who.org)
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::OK, &List { data }, &who.ctx)
}

/// A group's Users tab: its members, by email.
#[utoipa::path(
    get, path = "/v1/groups/{id}/users", tag = "groups",
    params(("id" = String, Path, description = "Group id: a permission set id, or `administrators`")),
    responses(
        (status = 200, description = "Members", body = List<UserView>),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn group_users(
    state: axum::extract::State<Shared>,
    who: Authorized<GroupUsersRead>,
    PathArgs(id): PathArgs<String>,
) -> Answer {
    let data = state
        .app
        .list_users(&who.org, Some(&id))
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::OK, &List { data }, &who.ctx)
}

/// A group's API Keys tab: keys holding its permission set (fixed at
/// creation); for `administrators`, the legacy keys.
#[utoipa::path(
    get, path = "/v1/groups/{id}/api-keys", tag = "groups",
    params(("id" = String, Path, description = "Group id: a permission set id, or `administrators`")),
    responses(
        (status = 200, description = "Keys", body = List<KeyView>),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn group_keys(
    state: axum::extract::State<Shared>,
    who: Authorized<GroupKeysRead>,
    PathArgs(id): PathArgs<String>,
) -> Answer {
    let data = state
        .app
        .group_keys(&who.org, &id, KeyFilter::default())
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::OK, &List { data }, &who.ctx)
}

/// The answer to a membership change.
#[derive(Serialize, ToSchema)]
struct Membership {
    /// The user as now.
    user: UserView,
    /// The group.
    group: String,
    /// Whether the user is now a member.
    member: bool,
    /// Whether anything changed (repeating a change is harmless).
    changed: bool,
}

async fn membership(
    state: &State,
    who: &Authorized<GroupsWrite>,
    group: String,
    user: &str,
    member: bool,
) -> Answer {
    let (user, changed) = state
        .app
        .set_membership(&who.actor, &who.org, &group, user, member)
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(
        StatusCode::OK,
        &Membership {
            user,
            group,
            member,
            changed,
        },
        &who.ctx,
    )
}

/// A body that must be empty, `null` or `{}`: anything else is refused,
/// so a client that meant to send fields learns they are not read.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// Add a user to a group (audited). The caller must hold the group's scopes.
#[utoipa::path(
    put, path = "/v1/groups/{id}/users/{user}", tag = "groups",
    params(
        ("id" = String, Path, description = "Group id"),
        ("user" = String, Path, description = "User id (`usr_…`) or email"),
    ),
    request_body(content = Option<NoFields>, description = "None, or `{}`"),
    responses(
        (status = 200, description = "Member", body = Membership),
        (status = "default", description = "Error (403 names the scopes the caller lacks)", body = ErrorDoc),
    )
)]
async fn add_member(
    state: axum::extract::State<Shared>,
    who: Authorized<GroupsWrite>,
    PathArgs((group, user)): PathArgs<(String, String)>,
    OptionalJsonBody(NoFields {}): OptionalJsonBody<NoFields>,
) -> Answer {
    membership(&state, &who, group, &user, true).await
}

/// Remove a user from a group (audited).
#[utoipa::path(
    delete, path = "/v1/groups/{id}/users/{user}", tag = "groups",
    params(
        ("id" = String, Path, description = "Group id"),
        ("user" = String, Path, description = "User id (`usr_…`) or email"),
    ),
    request_body(content = Option<NoFields>, description = "None, or `{}`"),
    responses(
        (status = 200, description = "Not a member", body = Membership),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn remove_member(
    state: axum::extract::State<Shared>,
    who: Authorized<GroupsWrite>,
    PathArgs((group, user)): PathArgs<(String, String)>,
    OptionalJsonBody(NoFields {}): OptionalJsonBody<NoFields>,
) -> Answer {
    membership(&state, &who, group, &user, false).await
}

// ---- audit -------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditListQuery {
    /// Only records about this key.
    key_id: Option<String>,
    /// Only records by this actor (`key:…`, `user:…`, `cli:…`).
    actor: Option<String>,
    /// Only this action (`gateway.request`, `key.created`, …).
    action: Option<String>,
    /// Only this HTTP status.
    #[param(minimum = 100, maximum = 599)]
    status: Option<u16>,
    /// RFC 3339: only records at or after.
    #[param(format = DateTime)]
    since: Option<String>,
    /// RFC 3339: only records before.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[1-9][0-9]*$")]
    cursor: Option<String>,
}

/// The organization's audit log, newest first.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditListQuery),
    responses(
        (status = 200, description = "A page of records", body = Page<AuditView>),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn audit(
    state: axum::extract::State<Shared>,
    who: Authorized<AuditRead>,
    QueryArgs(q): QueryArgs<AuditListQuery>,
) -> Answer {
    let ctx = &who.ctx;
    let query = audit_query(&q).map_err(|e| fail(e, ctx))?;
    let (data, next) = state
        .app
        .query_audit(&who.org, &query)
        .await
        .map_err(|e| fail(e, ctx))?;
    let next_cursor = next.map(|seq| seq.to_string());
    ok(StatusCode::OK, &Page { data, next_cursor }, ctx)
}

fn audit_query(q: &AuditListQuery) -> Result<AuditQuery, ApiError> {
    let before_seq = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                ApiError::validation(
                    "cursor",
                    "not a cursor this API returned: start over without it",
                )
            })
        })
        .transpose()?;
    if let Some(s) = q.status
        && !(100..=599).contains(&s)
    {
        return Err(ApiError::validation(
            "status",
            format!("must be an HTTP status (100 to 599), got {s}"),
        ));
    }
    Ok(AuditQuery {
        key_id: q.key_id.clone(),
        actor: q.actor.clone(),
        action: q.action.clone(),
        status: q.status,
        since: q
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
        before_seq,
        limit: page_size(q.limit)?,
    })
}

// ---- documentation of the endpoints served by hand (crate::own) ---------

/// `POST /v1/verify` body: either `method` and `path`, or `scopes`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code, reason = "documentation only: own.rs parses the body")]
#[serde(untagged)]
enum VerifyRequestDoc {
    Route(VerifyRouteDoc),
    Scopes(VerifyScopesDoc),
}

/// Would this key be allowed this request?
#[derive(Deserialize, ToSchema)]
#[allow(dead_code, reason = "documentation only")]
#[serde(deny_unknown_fields)]
struct VerifyRouteDoc {
    /// The key to check.
    key: String,
    /// HTTP method of the request to check.
    method: String,
    /// Path of the request to check, with or without the gateway prefix.
    #[schema(pattern = "^/")]
    path: String,
}

/// Does this key hold these scopes?
#[derive(Deserialize, ToSchema)]
#[allow(dead_code, reason = "documentation only")]
#[serde(deny_unknown_fields)]
struct VerifyScopesDoc {
    /// The key to check.
    key: String,
    /// Scopes to check.
    #[schema(min_items = 1)]
    scopes: Vec<String>,
}

/// `POST /v1/verify` answer, for any key, valid or not.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only: own.rs renders the answer")]
struct VerifyResponseDoc {
    valid: bool,
    allowed: bool,
    key_id: Option<String>,
    org_id: Option<String>,
    /// Effective scopes of a valid key.
    scopes: Vec<String>,
    required: Vec<String>,
    missing: Vec<String>,
    /// `allowed`, `missing_scopes`, `no_route`, `revoked`, `expired`, `unknown`, …
    reason: String,
}

/// Health of this node.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only: own.rs renders it")]
struct HealthDoc {
    /// `ok` or `stale`.
    status: String,
    /// `reachable` or `unreachable`.
    database: String,
    database_error: Option<String>,
    /// Keys, change-log version, age.
    #[schema(value_type = Object)]
    snapshot: serde_json::Value,
    upstream: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/verify", tag = "verify",
    request_body = VerifyRequestDoc,
    responses(
        (status = 200, description = "The decision", body = VerifyResponseDoc),
        (status = "default", description = "Error (the caller needs `keyward-api-keys:verify`)", body = ErrorDoc),
    )
)]
#[allow(dead_code, reason = "documentation of own.rs's verify")]
fn doc_verify() {}

#[utoipa::path(
    get, path = "/v1/whoami", tag = "verify",
    responses(
        (status = 200, description = "The calling key", body = KeyView),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
#[allow(dead_code, reason = "documentation of own.rs's whoami")]
fn doc_whoami() {}

#[utoipa::path(
    get, path = "/healthz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Healthy", body = HealthDoc),
        (status = 503, description = "Stale: the database has not been reached for too long", body = HealthDoc),
    )
)]
#[allow(dead_code, reason = "documentation of own.rs's healthz")]
fn doc_healthz() {}

#[utoipa::path(
    get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
#[allow(dead_code, reason = "documentation of own.rs's metrics")]
fn doc_metrics() {}

/// The admin API's side of the `json_bodies` fuzz target: every JSON body
/// the admin API reads goes through its own parser; an input is accepted or
/// refused with a 4xx, never a panic or a 5xx.
pub(crate) fn fuzz_json_bodies(data: &[u8]) {
    fn check<T: serde::de::DeserializeOwned>(data: &[u8], ctx: &Ctx) -> Option<T> {
        match crate::web::parse_json::<T>(data, ctx) {
            Ok(v) => Some(v),
            Err(reply) => {
                let status = reply.status();
                assert!(status.is_client_error(), "{status} for a body");
                None
            }
        }
    }
    let ctx = Ctx {
        client: crate::web::Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        request_id: HeaderValue::from_static("fuzz"),
    };
    if let Some(body) = check::<CreateKeyBody>(data, &ctx)
        && let Some(at) = body.expires_at.as_deref()
    {
        let _ = parse_time("expires_at", at);
    }
    if let Some(body) = check::<RollBody>(data, &ctx)
        && let Some(grace) = body.grace.as_deref()
    {
        let _ = keyward_core::parse_duration_ms(grace);
    }
    let _ = check::<NoFields>(data, &ctx);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths [`crate::own`] serves by hand, which the spec must document.
    const HAND_WRITTEN: &[(&str, &str)] = &[
        ("post", "/v1/verify"),
        ("get", "/v1/whoami"),
        ("get", "/healthz"),
        ("get", "/metrics"),
    ];

    #[test]
    fn the_spec_documents_every_hand_written_endpoint() {
        let spec = serde_json::to_value(openapi()).unwrap_or_default();
        for (method, path) in HAND_WRITTEN {
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} is served but not documented"
            );
        }
        for path in ["/v1/keys", "/v1/keys/{id}", "/v1/groups/{id}/users/{user}"] {
            assert!(spec["paths"][path].is_object(), "{path}");
        }
        assert_eq!(
            spec["paths"]["/v1/keys/{id}"]
                .as_object()
                .map(|o| o.len())
                .unwrap_or(0),
            5,
            "GET plus the four refused verbs"
        );
    }

    #[test]
    fn request_bodies_refuse_unknown_fields_in_the_spec_too() {
        let spec = serde_json::to_value(openapi()).unwrap_or_default();
        for name in [
            "CreateKeyBody",
            "RollBody",
            "VerifyRouteDoc",
            "VerifyScopesDoc",
        ] {
            assert_eq!(
                spec["components"]["schemas"][name]["additionalProperties"],
                serde_json::Value::Bool(false),
                "{name}"
            );
        }
    }
}
