//! The keys endpoints: create, list, show, revoke, roll, and the catalog.

use super::common::{Authorized, DEFAULT_PAGE, Page, Shared, page_size, parse_time};
use super::docs::ErrorDoc;
use crate::auth::{Anyone, KeysRead, KeysWrite};
use crate::error::ApiError;
use crate::state::State;
use crate::web::{Answer, JsonBody, OptionalJsonBody, PathArgs, QueryArgs, fail, ok, reply};
use http::header::{ALLOW, HeaderValue};
use http::{Method, StatusCode};
use keyward_app::KeyFilter;
use keyward_app::views::{CatalogView, CreatedKey, KeyView};
use keyward_app::{CreateKey, Refusal};
use keyward_core::limits::{Limit, Network};
use keyward_core::{Environment, GrantRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The keys endpoints, each with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(show_key, key_immutable))
        .routes(routes!(revoke_key))
        .routes(routes!(roll_key))
        .routes(routes!(catalog))
}

/// `POST /v1/keys`. Only `name` and one non-empty grant list are required.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKeyBody {
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
    pub(super) expires_at: Option<String>,
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
    /// Named rate limits and quotas, at most 10 (SPEC §8).
    #[serde(default)]
    #[schema(max_items = 10)]
    limits: Vec<LimitBody>,
    /// Networks the key may be used from: `203.0.113.0/24`, `2001:db8::/32`
    /// or single addresses. None: anywhere.
    #[serde(default)]
    allowed_cidrs: Vec<String>,
}

/// A limit: at most `requests` per window of `per`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitBody {
    /// Unique within the key.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,31}$")]
    name: String,
    /// Requests admitted per window.
    #[schema(minimum = 1)]
    requests: u64,
    /// The window, whole seconds from `1s` to `30d` (`1m`, `24h`, `30d`).
    per: String,
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
    let limits = body
        .limits
        .iter()
        .enumerate()
        .map(|(i, l)| Limit::new(&format!("limits[{i}]"), &l.name, l.requests, &l.per))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(ApiError::validation(&e.field, e.message), ctx))?;
    let allowed_cidrs = body
        .allowed_cidrs
        .iter()
        .enumerate()
        .map(|(i, n)| Network::parse(&format!("allowed_cidrs[{i}]"), n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(ApiError::validation(&e.field, e.message), ctx))?;
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
        limits,
        allowed_cidrs,
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
    let refusal = Refusal {
        action: "key.edit_refused",
        key_id: Some(&id),
        status: 405,
        details: serde_json::json!({}),
        method: Some(method.as_str()),
        path: Some(uri.path()),
        ..Refusal::default()
    };
    // Through the group commit, like the gateway's records.
    let entry = state.app.refusal(&who.actor, &who.org, refusal);
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
pub(super) struct RollBody {
    /// How long the old key keeps working, e.g. `24h` (default) or `0s`.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,3}(ms|s|m|h|d|w)$")]
    pub(super) grace: Option<String>,
    /// A narrowing roll: the new key holds these scopes (with
    /// `permission_sets`) instead of the old key's; their effective scopes
    /// must be among the old key's (422 `ROLL_WOULD_BROADEN` otherwise). A
    /// legacy key rolled this way becomes a scoped key.
    #[serde(default)]
    pub(super) scopes: Option<Vec<String>>,
    /// Permission sets of a narrowing roll.
    #[serde(default)]
    pub(super) permission_sets: Option<Vec<String>>,
}

/// Replace a key with a new one holding the same grants, or narrower ones;
/// the old one keeps working for the grace period, then expires.
#[utoipa::path(
    post, path = "/v1/keys/{id}/roll", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    request_body(content = Option<RollBody>, description = "Optional"),
    responses(
        (status = 201, description = "The new key, shown this once", body = CreatedKey),
        (status = "default", description = "Error (404; 409 for a revoked or expired key; 422 `ROLL_WOULD_BROADEN` naming the extra scopes)", body = ErrorDoc),
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
    let narrower = (body.scopes.is_some() || body.permission_sets.is_some()).then(|| {
        keyward_core::GrantRequest {
            scopes: body.scopes.clone().unwrap_or_default(),
            permission_sets: body.permission_sets.clone().unwrap_or_default(),
            presets: Vec::new(),
        }
    });
    let created = state
        .app
        .roll_key_narrowing(&who.actor, &who.org, &id, grace_ms, narrower.as_ref())
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
