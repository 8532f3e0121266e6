//! Signing in and out, and changing one's password.

use super::page::{
    Chrome, Form, Shared, SignInForm, Signed, app_error, app_status, csrf_ok, is_loopback_host,
    redirect, render, session_cookie,
};
use crate::auth::Anyone;
use crate::web::{Answer, Reply as Page, ctx};
use askama::Template;
use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER, SET_COOKIE};
use http::request::Parts;
use keyward_app::AppError;
use keyward_app::sessions::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};

// ---- sign-in ------------------------------------------------------------

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    chrome: Option<Chrome>,
    error: Option<String>,
    email: String,
    org: String,
}

pub(super) async fn sign_in_page() -> Page {
    render(
        StatusCode::OK,
        &SignInPage {
            chrome: None,
            error: None,
            email: String::new(),
            org: String::new(),
        },
    )
}

pub(super) async fn sign_in(
    axum::extract::State(state): axum::extract::State<Shared>,
    parts: Parts,
    SignInForm(form): SignInForm,
) -> Page {
    let ctx = ctx(&parts);
    let email = form.get("email").to_owned();
    let org = form.get("org").trim().to_owned();
    let client = ctx.client.ip_text().to_owned();
    let result = state
        .app
        .sign_in(
            Some(org.as_str()),
            &email,
            form.get("password"),
            &client,
            ctx.request_id_text(),
        )
        .await;
    match result {
        Ok(signed) => {
            let mut page = redirect(if signed.session.user.must_change_password {
                "/console/password"
            } else {
                "/console/keys"
            });
            let max_age = keyward_app::sessions::SESSION_MAX_MS / 1000;
            if let Some(c) =
                session_cookie(&signed.token, max_age, !is_loopback_host(&parts.headers))
            {
                page.headers_mut().insert(SET_COOKIE, c);
            }
            page
        }
        Err(e @ (AppError::SignInFailed | AppError::Throttled { .. } | AppError::Busy { .. })) => {
            if let AppError::Throttled {
                record: Some(entry),
                ..
            } = &e
            {
                state.anonymous.note((**entry).clone(), state.app.now());
            }
            let (status, error, retry_after) = app_status(e);
            let mut page = render(
                status,
                &SignInPage {
                    chrome: None,
                    error: Some(error),
                    email,
                    org,
                },
            );
            if let Some(s) = retry_after {
                page.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
            }
            page
        }
        Err(e) => app_error(None, e, "/console/sign-in"),
    }
}

pub(super) async fn sign_out(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<Anyone>,
    parts: Parts,
    form: Form,
) -> Answer {
    csrf_ok(&state, &who, &form).await?;
    state
        .app
        .sign_out(&who.session, &who.actor)
        .await
        .map_err(|e| app_error(Some(who.chrome.clone()), e, "/console"))?;
    let mut page = redirect("/console/sign-in");
    if let Some(c) = session_cookie("", 0, !is_loopback_host(&parts.headers)) {
        page.headers_mut().insert(SET_COOKIE, c);
    }
    Ok(page)
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    chrome: Option<Chrome>,
    csrf: String,
    forced: bool,
    done: bool,
    error: Option<String>,
    min: usize,
    max: usize,
}

fn password_form(who: &Signed<Anyone>, error: Option<String>, done: bool) -> PasswordPage {
    PasswordPage {
        chrome: Some(who.chrome.clone()),
        csrf: who.session.record.csrf.clone(),
        forced: who.session.user.must_change_password,
        done,
        error,
        min: MIN_PASSWORD_CHARS,
        max: MAX_PASSWORD_CHARS,
    }
}

pub(super) async fn password_page(who: Signed<Anyone>) -> Page {
    render(StatusCode::OK, &password_form(&who, None, false))
}

pub(super) async fn change_password(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<Anyone>,
    form: Form,
) -> Answer {
    csrf_ok(&state, &who, &form).await?;
    match state
        .app
        .change_password(
            &who.session,
            &who.actor,
            form.get("current_password"),
            form.get("new_password"),
        )
        .await
    {
        Ok(()) if who.session.user.must_change_password => Ok(redirect("/console/keys")),
        Ok(()) => Ok(render(StatusCode::OK, &password_form(&who, None, true))),
        Err(AppError::Validation { field, message }) => {
            let field = if field == "new_password" {
                "The new password"
            } else {
                "The current password"
            };
            Err(render(
                StatusCode::UNPROCESSABLE_ENTITY,
                &password_form(&who, Some(format!("{field} {message}.")), false),
            ))
        }
        Err(e) => Err(app_error(Some(who.chrome.clone()), e, "/console/password")),
    }
}
