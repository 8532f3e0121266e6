//! What every console page shares: responses (pages, redirects, error
//! pages), the session cookie, forms, the signed-in extractor and CSRF.

use crate::auth::{AuditRead, GroupsRead, KeysRead, Need, holds};
use crate::body::Body;
use crate::error::ApiError;
use crate::state::State;
use crate::web::{Reply as Page, ctx, reply};
use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Request as AxRequest};
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, HeaderValue, LOCATION, RETRY_AFTER,
    X_CONTENT_TYPE_OPTIONS,
};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use keyward_app::sessions::Session;
use keyward_app::views::{KeyView, human_time};
use keyward_app::{Actor, AppError, Refusal};
use std::marker::PhantomData;
use std::sync::Arc;

pub(super) type Shared = Arc<State>;

/// Name of the session cookie.
pub(super) const COOKIE_NAME: &str = "keyward_session";

// ---- responses ----------------------------------------------------------

pub(super) fn page_of(status: StatusCode, html: String) -> Page {
    let mut res = Response::new(Body::full(html));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages show who can do what; none belongs in a shared cache, and the
    // page showing a new key must never come back from any cache.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        http::header::HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        http::header::HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    reply(res)
}

pub(super) fn render(status: StatusCode, t: &impl Template) -> Page {
    match t.render() {
        Ok(html) => page_of(status, html),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            page_of(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>The page could not be rendered; see the server log.</p>".to_owned(),
            )
        }
    }
}

pub(super) fn redirect(to: &str) -> Page {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(LOCATION, v);
    }
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply(res)
}

pub(super) fn asset(text: &'static str, content_type: &'static str) -> Page {
    let mut res = Response::new(Body::full(text));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    reply(res)
}

#[derive(Template)]
#[template(path = "error.html")]
pub(super) struct ErrorPage<'a> {
    pub(super) chrome: Option<Chrome>,
    pub(super) heading: &'a str,
    pub(super) message: String,
    pub(super) back: &'a str,
}

pub(super) fn error_page(
    chrome: Option<Chrome>,
    status: StatusCode,
    message: String,
    back: &str,
) -> Page {
    let heading = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
        s if s.is_server_error() => "Something went wrong",
        _ => "That did not work",
    };
    render(
        status,
        &ErrorPage {
            chrome,
            heading,
            message,
            back,
        },
    )
}

/// An app error as a page, in words, with the status the admin API gives
/// the same error (one mapping, `ApiError::from`, for both rooms).
pub(super) fn app_error(chrome: Option<Chrome>, e: AppError, back: &str) -> Page {
    let (status, text, retry_after) = app_status(e);
    let mut page = error_page(chrome, status, text, back);
    if let Some(s) = retry_after {
        page.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    page
}

/// The status, the sentence to show and the `Retry-After` of an app error,
/// as the admin API maps it. Internal failures are not described beyond
/// what the API says of them.
pub(super) fn app_status(e: AppError) -> (StatusCode, String, Option<u64>) {
    let words = sentence(&e.to_string());
    let api = ApiError::from(e);
    let text = match api.status {
        StatusCode::INTERNAL_SERVER_ERROR => "keyward could not complete this request; nothing was changed that you were not shown. See the server log.".to_owned(),
        s if s.is_server_error() => sentence(&api.message),
        _ => words,
    };
    (api.status, text, api.retry_after)
}

/// `name: must not be empty` → `Name: must not be empty.`
pub(super) fn sentence(text: &str) -> String {
    let mut out: String = text.chars().take(1).flat_map(char::to_uppercase).collect();
    out.push_str(text.get(1..).unwrap_or(""));
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

// ---- request plumbing ---------------------------------------------------

pub(super) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_owned())
}

/// Loopback hosts are secure contexts to browsers but speak plain HTTP:
/// a `Secure` cookie would not come back there.
pub(super) fn is_loopback_host(headers: &HeaderMap) -> bool {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    name == "localhost"
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn session_cookie(value: &str, max_age_s: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .ok()
}

/// Refuses a state-changing request that another site made the browser
/// send. `SameSite=Strict` already keeps the cookie off such requests; this
/// also covers the sign-in form, which has no session yet.
pub(super) fn same_site(headers: &HeaderMap) -> Result<(), Page> {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let cross_origin = headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|origin| {
            let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
            Some(authority) != host
        });
    let cross_fetch = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site");
    if cross_origin || cross_fetch {
        return Err(error_page(
            None,
            StatusCode::FORBIDDEN,
            "This form was sent from another site, so keyward refused it. Open the console directly and try again.".to_owned(),
            "/console",
        ));
    }
    Ok(())
}

/// A URL-encoded form, read whole: repeated names (checkboxes) kept.
pub(super) struct Form(pub(super) Vec<(String, String)>);

impl Form {
    /// The first field not among `known`: a field the form does not have
    /// is a mistake to report, not something to skip (a misspelt field
    /// would otherwise silently keep or clear a setting).
    pub(super) fn unknown_field(&self, known: &[&str]) -> Option<&str> {
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !known.contains(k))
    }

    /// Fields of a URL-encoded text (a body, or a page's query string).
    pub(super) fn parse(text: &[u8]) -> Self {
        Form(
            form_urlencoded::parse(text)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The query string of a `GET`, read like a form; refused like a form
    /// body when a field holds a NUL.
    pub(super) fn query(parts: &Parts) -> Result<Self, Page> {
        Form::parse(parts.uri.query().unwrap_or("").as_bytes()).without_nul()
    }

    /// The form, or a 400 page when a field holds a NUL: no field of any
    /// form can, and PostgreSQL text cannot store one.
    fn without_nul(self) -> Result<Self, Page> {
        if self
            .0
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(error_page(
                None,
                StatusCode::BAD_REQUEST,
                "The form contains a NUL character, which no field accepts.".to_owned(),
                "/console",
            ));
        }
        Ok(self)
    }

    pub(super) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub(super) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Form {
    /// A form body of at most `max` bytes, from the same site.
    async fn read(req: AxRequest, max: usize) -> Result<Self, Page> {
        same_site(req.headers())?;
        let bytes = crate::web::read_limited_to(req.into_body(), max)
            .await
            .map_err(|e| {
                let message = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("The form is larger than {} KiB.", max / 1024)
                } else {
                    "The form could not be read; send it again.".to_owned()
                };
                error_page(None, e.status, message, "/console")
            })?;
        Form::parse(&bytes).without_nul()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Page;

    async fn from_request(req: AxRequest, _: &S) -> Result<Self, Page> {
        Form::read(req, crate::web::MAX_JSON_BYTES).await
    }
}

/// The sign-in form: read before anyone is known, so it gets far less room
/// than a signed-in user's forms: an email (254 characters), an
/// organization and a password (128) fit in 8 KiB even when every character
/// is 4 bytes, percent-encoded, and a flood of unauthenticated bodies must
/// not hold 64 KiB each.
pub(super) struct SignInForm(pub(super) Form);

/// Largest sign-in body.
pub(super) const MAX_SIGN_IN_BYTES: usize = 8 * 1024;

impl<S: Send + Sync> FromRequest<S> for SignInForm {
    type Rejection = Page;

    async fn from_request(req: AxRequest, _: &S) -> Result<Self, Page> {
        Form::read(req, MAX_SIGN_IN_BYTES).await.map(SignInForm)
    }
}

/// Path parameters of a page, decoded. A NUL (which no id holds, and
/// PostgreSQL text cannot store) or an undecodable parameter is a 400 page,
/// as the admin API's `PathArgs` is a 400 error.
pub(super) struct Ids<T>(pub(super) T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Ids<T> {
    type Rejection = Page;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Page> {
        let refused = |what: &str| {
            error_page(
                None,
                StatusCode::BAD_REQUEST,
                format!("The address {what}."),
                "/console",
            )
        };
        if crate::web::has_encoded_nul(parts.uri.path()) {
            return Err(refused("contains a NUL character"));
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Ids(v)),
            Err(_) => Err(refused("is not valid")),
        }
    }
}

/// A 400 page for an address holding a NUL (`%00`) in its path or query,
/// on every console route: no id or parameter holds one, and PostgreSQL
/// text cannot store one.
pub(super) async fn refuse_nul(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri = req.uri();
    if crate::web::has_encoded_nul(uri.path())
        || uri.query().is_some_and(crate::web::has_encoded_nul)
    {
        let page = error_page(
            None,
            StatusCode::BAD_REQUEST,
            "The address contains a NUL character, which no page accepts.".to_owned(),
            "/console",
        );
        return axum::response::IntoResponse::into_response(page);
    }
    next.run(req).await
}

/// What every signed-in page shows around its content.
#[derive(Clone)]
pub(super) struct Chrome {
    pub(super) email: String,
    pub(super) org: String,
    pub(super) csrf: String,
    pub(super) section: &'static str,
    pub(super) can_keys: bool,
    pub(super) can_groups: bool,
    pub(super) can_audit: bool,
    pub(super) can_settings: bool,
}

/// A signed-in user holding the scopes of `N`; otherwise a redirect to the
/// sign-in page (or to the password page while a one-time password is in
/// use), or a page saying which permissions are missing.
pub(super) struct Signed<N: Need> {
    pub(super) session: Session,
    pub(super) actor: Actor,
    pub(super) chrome: Chrome,
    /// The request's method and path, for the record of a refusal.
    pub(super) asked: (http::Method, String),
    pub(super) _need: PhantomData<N>,
}

impl<N: Need> Signed<N> {
    pub(super) fn holds(&self, scopes: &[&str], state: &State) -> bool {
        holds(state.app.catalog(), &self.actor.effective, scopes)
    }
}

impl<N: Need> FromRequestParts<Shared> for Signed<N> {
    type Rejection = Page;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Page> {
        let ctx = ctx(parts);
        // Another site's form is refused as such, before it is sent to
        // sign in (its request carries no cookie: `SameSite=Strict`).
        if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
            same_site(&parts.headers)?;
        }
        let Some(token) = cookie(&parts.headers) else {
            return Err(redirect("/console/sign-in"));
        };
        let session = match state.app.session(&token).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(redirect("/console/sign-in")),
            Err(e) => return Err(app_error(None, e, "/console")),
        };
        let actor = state.app.user_actor(
            &session.user,
            Some(ctx.client.ip_text().to_owned()),
            ctx.request_id_text(),
        );
        let holds = |names: &[&str]| holds(state.app.catalog(), &actor.effective, names);
        let chrome = Chrome {
            email: session.user.email.clone(),
            org: session.org.name.clone(),
            csrf: session.record.csrf.clone(),
            section: N::SECTION,
            can_keys: holds(KeysRead::SCOPES),
            can_groups: holds(GroupsRead::SCOPES),
            can_audit: holds(AuditRead::SCOPES),
            can_settings: holds(crate::auth::SettingsRead::SCOPES),
        };
        let exempt = matches!(parts.uri.path(), "/console/password" | "/console/sign-out");
        if session.user.must_change_password && !exempt {
            return Err(redirect("/console/password"));
        }
        if !holds(N::SCOPES) {
            let missing: Vec<&str> = N::SCOPES.to_vec();
            if !matches!(parts.method, http::Method::GET | http::Method::HEAD) {
                let lacking = N::SCOPES
                    .iter()
                    .filter(|s| !holds(&[**s]))
                    .map(|s| (*s).to_owned())
                    .collect();
                let asked = (parts.method.clone(), parts.uri.path().to_owned());
                record_refusal(state, &actor, &session, &asked, lacking, "missing_scopes").await?;
            }
            return Err(error_page(
                Some(chrome),
                StatusCode::FORBIDDEN,
                format!(
                    "Your groups do not give you {}. Ask an administrator to add you to a group that does.",
                    missing.join(", ")
                ),
                "/console",
            ));
        }
        Ok(Signed {
            session,
            actor,
            chrome,
            asked: (parts.method.clone(), parts.uri.path().to_owned()),
            _need: PhantomData,
        })
    }
}

/// Checks the form's CSRF token against the session's; a stale or forged
/// form is a refused write, recorded like one.
pub(super) async fn csrf_ok<N: Need>(
    state: &State,
    who: &Signed<N>,
    form: &Form,
) -> Result<(), Page> {
    use subtle::ConstantTimeEq;
    let expected = who.session.record.csrf.as_bytes();
    let got = form.get("csrf").as_bytes();
    if got.len() == expected.len() && bool::from(got.ct_eq(expected)) {
        return Ok(());
    }
    record_refusal(
        state,
        &who.actor,
        &who.session,
        &who.asked,
        Vec::new(),
        "csrf",
    )
    .await?;
    Err(error_page(
        Some(who.chrome.clone()),
        StatusCode::FORBIDDEN,
        "This form is out of date or did not come from this console. Reload the page and try again.".to_owned(),
        "/console",
    ))
}

/// Records a console write refused before it reached a use case (missing
/// scopes, a stale or forged form), as the admin API records its own:
/// through the group commit. When the record cannot be written, the
/// answer is a 503 page instead: a refusal is never silent.
async fn record_refusal(
    state: &State,
    actor: &Actor,
    session: &Session,
    asked: &(http::Method, String),
    required: Vec<String>,
    reason: &str,
) -> Result<(), Page> {
    let refusal = Refusal {
        action: "console.request_refused",
        status: 403,
        required,
        details: serde_json::json!({ "reason": reason }),
        method: Some(asked.0.as_str()),
        path: Some(&asked.1),
        ..Refusal::default()
    };
    let entry = state.app.refusal(actor, &session.org, refusal);
    if state.record(entry).await.is_err() {
        let mut page = error_page(
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "The refusal could not be recorded in the audit log; try again shortly.".to_owned(),
            "/console",
        );
        page.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(page);
    }
    Ok(())
}

/// A key as one row of a table.
pub(super) struct KeyRow {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) display_prefix: String,
    pub(super) legacy: bool,
    /// Flagged `unused` by the key policy.
    pub(super) unused: bool,
    /// Reported leaked (a scan, GitHub's secret scanning).
    pub(super) leaked: bool,
    pub(super) sets: String,
    pub(super) scopes: String,
    pub(super) created: String,
    pub(super) expires: String,
    pub(super) last_used: String,
    pub(super) status: &'static str,
}

pub(super) fn key_row(k: &KeyView) -> KeyRow {
    let mut sets = k.permission_sets.clone();
    sets.extend(k.scopes.iter().cloned());
    KeyRow {
        id: k.id.clone(),
        name: k.name.clone(),
        display_prefix: k.display_prefix.clone(),
        legacy: k.legacy,
        unused: k.flags.iter().any(|f| f == "unused"),
        leaked: k.flags.iter().any(|f| f == "leaked"),
        sets: sets.join(", "),
        scopes: k.effective_scopes.join(", "),
        created: human_time(Some(k.created_at)),
        expires: k
            .expires_at
            .map_or_else(|| "never".to_owned(), |t| human_time(Some(t))),
        last_used: human_time(k.last_used_at),
        status: k.status.as_str(),
    }
}
