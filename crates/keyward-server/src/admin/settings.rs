//! The organization's settings (SPEC §10): its key policy.

use super::common::{Authorized, Shared};
use super::docs::ErrorDoc;
use crate::auth::{SettingsRead, SettingsWrite};
use crate::error::ApiError;
use crate::web::{Answer, JsonBody, fail, ok};
use http::StatusCode;
use keyward_app::policy::PolicyView;
use keyward_core::policy::{OnLeak, PolicyText};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The settings endpoints, each with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new().routes(routes!(show_policy, set_policy))
}

/// `PUT /v1/policy`: the whole policy; a field left out is unset (null, no
/// warnings, `on_leak` `revoke`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyBody {
    /// Longest key lifetime, e.g. `365d` (1h to 3650d); null for none.
    #[serde(default)]
    max_key_lifetime: Option<String>,
    /// Flag keys unused this long, e.g. `90d` (1d to 3650d); null: never.
    #[serde(default)]
    flag_unused_after: Option<String>,
    /// Revoke keys unused this long: longer than the flag; null: never.
    #[serde(default)]
    revoke_unused_after: Option<String>,
    /// When to send `key.expiring` before expiry, e.g. `["14d", "1d"]`
    /// (at most 5, 1h to 365d each).
    #[serde(default)]
    expiry_warning: Option<Vec<String>>,
    /// What a leaked-key report does: `revoke` (the default) or `flag`.
    #[serde(default)]
    #[schema(pattern = "^(revoke|flag)$")]
    on_leak: Option<String>,
}

impl PolicyBody {
    pub(super) fn into_text(self) -> Result<PolicyText, ApiError> {
        let on_leak = match self.on_leak.as_deref() {
            None | Some("revoke") => OnLeak::Revoke,
            Some("flag") => OnLeak::Flag,
            Some(other) => {
                return Err(ApiError::validation(
                    "on_leak",
                    format!("`{other}` is not `revoke` or `flag`"),
                ));
            }
        };
        Ok(PolicyText {
            max_key_lifetime: self.max_key_lifetime,
            flag_unused_after: self.flag_unused_after,
            revoke_unused_after: self.revoke_unused_after,
            expiry_warning: self.expiry_warning.unwrap_or_default(),
            on_leak,
        })
    }
}

/// The organization's key policy (the default when never set).
#[utoipa::path(
    get, path = "/v1/policy", tag = "settings",
    responses(
        (status = 200, description = "The policy", body = PolicyView),
        (status = "default", description = "Error", body = ErrorDoc),
    )
)]
async fn show_policy(state: axum::extract::State<Shared>, who: Authorized<SettingsRead>) -> Answer {
    let view = state
        .app
        .show_policy(&who.org)
        .await
        .map_err(|e| fail(e, &who.ctx))?;
    ok(StatusCode::OK, &view, &who.ctx)
}

/// Replaces the key policy (audited as `policy.updated`). Existing keys
/// keep their expiry; the next run of the policy flags or revokes unused
/// keys by the new rules.
#[utoipa::path(
    put, path = "/v1/policy", tag = "settings",
    request_body = PolicyBody,
    responses(
        (status = 200, description = "The policy now in force", body = PolicyView),
        (status = "default", description = "Error (422 naming each bad field in `details.fields`)", body = ErrorDoc),
    )
)]
async fn set_policy(
    state: axum::extract::State<Shared>,
    who: Authorized<SettingsWrite>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Answer {
    let ctx = &who.ctx;
    let text = body.into_text().map_err(|e| fail(e, ctx))?;
    let view = state
        .app
        .set_policy(&who.actor, &who.org, text)
        .await
        .map_err(|e| fail(e, ctx))?;
    ok(StatusCode::OK, &view, ctx)
}
