//! What every admin endpoint shares: the authorized caller, pages and lists.

use crate::auth::{Asked, Need, caller, require};
use crate::error::ApiError;
use crate::state::State;
use crate::web::{Ctx, Reply, ctx, fail, reply};
use axum::extract::FromRequestParts;
use http::request::Parts;
use keyward_app::Org;
use keyward_app::{Actor, KeyEntry};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;
use utoipa::ToSchema;

pub(super) type Shared = Arc<State>;

/// Default and largest page of `GET /v1/keys` and `GET /v1/audit`.
pub(super) const DEFAULT_PAGE: u32 = 100;

pub(super) const MAX_PAGE: u32 = 500;

/// The caller, authenticated and holding every scope of `N`. Keys and (with
/// the console) sessions both end up as an [`Actor`] in an [`Org`].
pub(super) struct Authorized<N: Need> {
    pub(super) actor: Actor,
    pub(super) org: Org,
    pub(super) ctx: Ctx,
    pub(super) _need: PhantomData<N>,
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

/// A page of results; `next_cursor` fetches the next one.
#[derive(Serialize, ToSchema)]
pub(super) struct Page<T: ToSchema> {
    pub(super) data: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub(super) next_cursor: Option<String>,
}

/// A list that is never paged.
#[derive(Serialize, ToSchema)]
pub(super) struct List<T: ToSchema> {
    pub(super) data: Vec<T>,
}

pub(super) fn parse_time(field: &'static str, text: &str) -> Result<i64, ApiError> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            ApiError::validation(field, format!("`{text}` is not an RFC 3339 timestamp: {e}"))
        })
}

pub(super) fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::validation(
            "limit",
            format!("must be between 1 and {MAX_PAGE}, got {n}"),
        )),
    }
}

/// A body that must be empty, `null` or `{}`: anything else is refused,
/// so a client that meant to send fields learns they are not read.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoFields {}
