//! The groups endpoints (members and keys) and the audit log.

use super::common::{Authorized, List, NoFields, Page, Shared, page_size, parse_time};
use super::docs::ErrorDoc;
use crate::auth::{AuditRead, GroupKeysRead, GroupUsersRead, GroupsRead, GroupsWrite};
use crate::error::ApiError;
use crate::state::State;
use crate::web::{Answer, OptionalJsonBody, PathArgs, QueryArgs, fail, ok};
use http::StatusCode;
use keyward_app::people::{AuditView, GroupView, UserView};
use keyward_app::views::KeyView;
use keyward_app::{AuditQuery, KeyFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The groups and audit endpoints, each with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(list_groups))
        .routes(routes!(group_users))
        .routes(routes!(group_keys))
        .routes(routes!(add_member, remove_member))
        .routes(routes!(audit))
}

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
