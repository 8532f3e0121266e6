//! What a key really does (SPEC §9): its usage by hour or day and by
//! route, and the least-privilege suggestion drawn from it.

use super::common::{Authorized, Shared};
use super::docs::ErrorDoc;
use crate::auth::KeysRead;
use crate::error::ApiError;
use crate::web::{Answer, PathArgs, QueryArgs, fail, ok};
use http::StatusCode;
use keyward_app::usage::{SuggestionView, UsageReport};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The usage endpoints, each with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(key_usage))
        .routes(routes!(key_suggestion))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// Start: an RFC 3339 time, or a duration back from now (`30d`, the
    /// default).
    since: Option<String>,
    /// End (exclusive): an RFC 3339 time, or a duration back from now;
    /// default now.
    until: Option<String>,
    /// `hour` or `day` (the default).
    #[param(pattern = "^(hour|day)$")]
    granularity: Option<String>,
}

/// A time as a query gives it: RFC 3339, or a duration back from `now`.
fn when(field: &'static str, text: &str, now: i64) -> Result<i64, ApiError> {
    keyward_app::usage::point_in_time(text, now).ok_or_else(|| {
        ApiError::validation(
            field,
            format!("`{text}` is neither an RFC 3339 time nor a duration such as `30d`"),
        )
    })
}

/// One key's requests by hour or day, and by route (allowed and denied),
/// added up from every node's counts (flushed at most 10 s apart).
#[utoipa::path(
    get, path = "/v1/keys/{id}/usage", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)"), UsageQuery),
    responses(
        (status = 200, description = "The key's usage", body = UsageReport),
        (status = "default", description = "Error (404 for an unknown key; 422 for a range that does not parse)", body = ErrorDoc),
    )
)]
async fn key_usage(
    state: axum::extract::State<Shared>,
    who: Authorized<KeysRead>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<UsageQuery>,
) -> Answer {
    let ctx = &who.ctx;
    let now = state.app.now();
    let since =
        when("since", q.since.as_deref().unwrap_or("30d"), now).map_err(|e| fail(e, ctx))?;
    let until = match q.until.as_deref() {
        Some(u) => when("until", u, now).map_err(|e| fail(e, ctx))?,
        None => now,
    };
    let day = match q.granularity.as_deref() {
        None | Some("day") => true,
        Some("hour") => false,
        Some(other) => {
            let e =
                ApiError::validation("granularity", format!("`{other}` is not `hour` or `day`"));
            return Err(fail(e, ctx));
        }
    };
    let report = state
        .app
        .key_usage(&who.org, &id, since, until, day)
        .await
        .map_err(|e| fail(e, ctx))?;
    ok(StatusCode::OK, &report, ctx)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SuggestionQuery {
    /// How far back to look, e.g. `30d` (the default); at most `400d`.
    #[param(pattern = "^[0-9]{1,3}(ms|s|m|h|d|w)$")]
    window: Option<String>,
}

/// The smallest grant list that still allows every request the key was
/// allowed in the window, never more than the key holds, and the verdict:
/// `narrow`, `already_minimal` or `unused`.
#[utoipa::path(
    get, path = "/v1/keys/{id}/suggestion", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)"), SuggestionQuery),
    responses(
        (status = 200, description = "The suggestion", body = SuggestionView),
        (status = "default", description = "Error (404 for an unknown key; 422 for a window that does not parse)", body = ErrorDoc),
    )
)]
async fn key_suggestion(
    state: axum::extract::State<Shared>,
    who: Authorized<KeysRead>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<SuggestionQuery>,
) -> Answer {
    let ctx = &who.ctx;
    let window = q.window.as_deref().unwrap_or("30d");
    let window_ms = keyward_core::parse_duration_ms(window)
        .map_err(|e| fail(ApiError::validation("window", e.to_string()), ctx))?;
    let view = state
        .app
        .key_suggestion(&who.org, &id, window, window_ms)
        .await
        .map_err(|e| fail(e, ctx))?;
    ok(StatusCode::OK, &view, ctx)
}
