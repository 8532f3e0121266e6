//! Webhook endpoints (SPEC §10), under the settings scopes: reading them
//! needs `keyward-settings:read`, changing them `keyward-settings:write`.

use super::common::{Authorized, NoFields, Shared};
use super::docs::ErrorDoc;
use crate::auth::{SettingsRead, SettingsWrite};
use crate::web::{Answer, JsonBody, OptionalJsonBody, PathArgs, QueryArgs, fail, ok};
use http::StatusCode;
use keyward_app::webhooks::{CreatedWebhook, DeliveriesPage, NewWebhook, WebhookView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The webhook endpoints, each with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
        .routes(routes!(webhook_deliveries))
}

/// `GET /v1/webhooks`.
#[derive(Serialize, ToSchema)]
struct WebhookList {
    /// Oldest first.
    data: Vec<WebhookView>,
}

/// Create an endpoint. The answer holds its signing secret, shown only
/// this once (audited as `webhook.created`, without the secret).
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = CreatedWebhook),
        (status = "default", description = "Error (422 naming `url`, `events` or `description`)", body = ErrorDoc),
    )
)]
async fn create_webhook(
    state: axum::extract::State<Shared>,
    who: Authorized<SettingsWrite>,
    JsonBody(body): JsonBody<NewWebhook>,
) -> Answer {
    let created = state
        .app
        .create_webhook(
            &who.actor,
            &who.org,
            body,
            state.config.allow_private_webhooks,
        )
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::CREATED, &created, &who.ctx)
}

/// The organization's endpoints, with their state and pending events.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "Every endpoint", body = WebhookList),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn list_webhooks(
    state: axum::extract::State<Shared>,
    who: Authorized<SettingsRead>,
) -> Answer {
    let data = state
        .app
        .list_webhooks(&who.org)
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::OK, &WebhookList { data }, &who.ctx)
}

/// `DELETE /v1/webhooks/{id}`.
#[derive(Serialize, ToSchema)]
struct Deleted {
    /// The endpoint.
    id: String,
    /// Always true.
    deleted: bool,
}

/// Delete an endpoint, with its undelivered events and history (audited as
/// `webhook.deleted`).
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (`wh_…`)")),
    request_body(content = Option<NoFields>, description = "None, or `{}`"),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "default", description = "Error (404 also for another organization's webhook)", body = ErrorDoc),
    )
)]
async fn delete_webhook(
    state: axum::extract::State<Shared>,
    who: Authorized<SettingsWrite>,
    PathArgs(id): PathArgs<String>,
    OptionalJsonBody(NoFields {}): OptionalJsonBody<NoFields>,
) -> Answer {
    state
        .app
        .delete_webhook(&who.actor, &who.org, &id)
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::OK, &Deleted { id, deleted: true }, &who.ctx)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// `next_before` of the previous page.
    #[param(minimum = 1)]
    before: Option<i64>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// An endpoint's events, newest first, each with every attempt: when,
/// by which node, the receiver's status or the error.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (`wh_…`)"), DeliveriesQuery),
    responses(
        (status = 200, description = "A page of the history", body = DeliveriesPage),
        (status = "default", description = "Error (404 also for another organization's webhook)", body = ErrorDoc),
    )
)]
async fn webhook_deliveries(
    state: axum::extract::State<Shared>,
    who: Authorized<SettingsRead>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<DeliveriesQuery>,
) -> Answer {
    let ctx = &who.ctx;
    if q.limit.is_some_and(|l| !(1..=200).contains(&l)) {
        return Err(fail(
            crate::error::ApiError::validation("limit", "must be 1 to 200"),
            ctx,
        ));
    }
    if q.before.is_some_and(|b| b < 1) {
        return Err(fail(
            crate::error::ApiError::validation(
                "before",
                "not a `next_before` this API returned: start over without it",
            ),
            ctx,
        ));
    }
    let page = state
        .app
        .webhook_deliveries(&who.org, &id, q.before, q.limit.unwrap_or(50))
        .await
        .map_err(|e| fail(e, ctx))?;
    ok(StatusCode::OK, &page, ctx)
}
