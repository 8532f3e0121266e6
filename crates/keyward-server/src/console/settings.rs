//! The key policy page (SPEC §10): what the policy is, and, for those who
//! may change it, a form whose refusals name each bad field.

use super::page::{Form, Shared, Signed, app_error, csrf_ok, redirect, render};
use crate::auth::{Need, SettingsRead, SettingsWrite};
use crate::web::Answer;
use askama::Template;
use http::StatusCode;
use http::request::Parts;
use keyward_app::AppError;
use keyward_core::policy::{OnLeak, PolicyText};

#[derive(Template)]
#[template(path = "settings.html")]
struct PolicyPage {
    chrome: Option<super::page::Chrome>,
    csrf: String,
    can_write: bool,
    saved: bool,
    errors: Vec<String>,
    max_key_lifetime: String,
    flag_unused_after: String,
    revoke_unused_after: String,
    expiry_warning: String,
    on_leak: &'static str,
    updated: Option<String>,
}

impl PolicyPage {
    /// The page showing `text` (the policy in force, or a refused form as
    /// sent), to a reader or a writer.
    fn of<N: Need>(
        who: &Signed<N>,
        can_write: bool,
        text: PolicyText,
        updated: Option<String>,
    ) -> Self {
        PolicyPage {
            chrome: Some(who.chrome.clone()),
            csrf: who.session.record.csrf.clone(),
            can_write,
            saved: false,
            errors: Vec::new(),
            max_key_lifetime: text.max_key_lifetime.unwrap_or_default(),
            flag_unused_after: text.flag_unused_after.unwrap_or_default(),
            revoke_unused_after: text.revoke_unused_after.unwrap_or_default(),
            expiry_warning: text.expiry_warning.join(", "),
            on_leak: text.on_leak.as_str(),
            updated,
        }
    }
}

pub(super) async fn policy_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<SettingsRead>,
    parts: Parts,
) -> Answer {
    let view = state
        .app
        .show_policy(&who.session.org)
        .await
        .map_err(|e| app_error(Some(who.chrome.clone()), e, "/console"))?;
    let updated = match (&view.updated_at, &view.updated_by) {
        (Some(at), Some(by)) => Some(format!("{at} by {by}")),
        _ => None,
    };
    let text = PolicyText {
        max_key_lifetime: view.max_key_lifetime,
        flag_unused_after: view.flag_unused_after,
        revoke_unused_after: view.revoke_unused_after,
        expiry_warning: view.expiry_warning,
        on_leak: view.on_leak,
    };
    let mut page = PolicyPage::of(
        &who,
        who.holds(SettingsWrite::SCOPES, &state),
        text,
        updated,
    );
    page.saved = Form::query(&parts)?.get("done") == "saved";
    Ok(render(StatusCode::OK, &page))
}

/// A field of the form: empty is unset.
fn optional(form: &Form, name: &str) -> Option<String> {
    let v = form.get(name).trim();
    (!v.is_empty()).then(|| v.to_owned())
}

pub(super) async fn set_policy(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<SettingsWrite>,
    form: Form,
) -> Answer {
    csrf_ok(&state, &who, &form).await?;
    let mut errors = Vec::new();
    if let Some(unknown) = form.unknown_field(&[
        "csrf",
        "max_key_lifetime",
        "flag_unused_after",
        "revoke_unused_after",
        "expiry_warning",
        "on_leak",
    ]) {
        errors.push(format!("the policy form has no field `{unknown}`"));
    }
    let on_leak = match form.get("on_leak") {
        "" | "revoke" => OnLeak::Revoke,
        "flag" => OnLeak::Flag,
        other => {
            errors.push(format!("on_leak: `{other}` is not `revoke` or `flag`"));
            OnLeak::Revoke
        }
    };
    let text = PolicyText {
        max_key_lifetime: optional(&form, "max_key_lifetime"),
        flag_unused_after: optional(&form, "flag_unused_after"),
        revoke_unused_after: optional(&form, "revoke_unused_after"),
        expiry_warning: form
            .get("expiry_warning")
            .split([',', ' '])
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect(),
        on_leak,
    };
    if !errors.is_empty() {
        let mut page = PolicyPage::of(&who, true, text, None);
        page.errors = errors;
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page));
    }
    match state
        .app
        .set_policy(&who.actor, &who.session.org, text.clone())
        .await
    {
        Ok(_) => Ok(redirect("/console/settings?done=saved")),
        Err(AppError::Policy(problems)) => {
            // The form as sent, with what is wrong with it.
            let mut page = PolicyPage::of(&who, true, text, None);
            page.errors = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
        }
        Err(e) => Err(app_error(Some(who.chrome.clone()), e, "/console/settings")),
    }
}
