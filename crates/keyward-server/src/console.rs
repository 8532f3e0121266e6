//! The web console (SPEC §5, seed `000_*`): server-rendered pages under
//! `/console`, askama templates, a small vendored script for progressive
//! enhancement only.
//!
//! Security, in the order a request meets it:
//! - every `POST` must come from this site: an `Origin` that is not this
//!   host, or `Sec-Fetch-Site: cross-site`, is refused before anything else;
//! - the session cookie is `HttpOnly; SameSite=Strict` (and `Secure` unless
//!   the console is reached on a loopback address) and names a session
//!   stored, hashed, in the database, so any node can serve it;
//! - every state-changing form carries the session's CSRF token;
//! - the signed-in user's groups are checked for the page's scopes, exactly
//!   as a key's scopes are for the admin API, and use cases see the same
//!   [`Actor`] either way;
//! - a created or rolled key is rendered once in the `POST`'s own response
//!   (`Cache-Control: no-store`) and guarded by a one-use form nonce, so a
//!   reload or the back button can never show it again.

use crate::auth::{Anyone, AuditRead, GroupsRead, GroupsWrite, KeysRead, KeysWrite, Need, holds};
use crate::body::Body;
use crate::error::ApiError;
use crate::state::State;
use crate::web::{Answer, Reply as Page, ctx, reply};
use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Request as AxRequest};
use axum::routing::{get, post};
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, HeaderValue, LOCATION, RETRY_AFTER, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS,
};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use keyward_app::people::{GroupView, UserView};
use keyward_app::sessions::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, Session};
use keyward_app::views::{KeyView, human_time};
use keyward_app::{Actor, AppError, CreateKey};
use keyward_app::{AuditQuery, KeyFilter};
use keyward_core::catalog::reserved;
use keyward_core::{Environment, GrantRequest};
use std::marker::PhantomData;
use std::sync::Arc;

type Shared = Arc<State>;

/// Name of the session cookie.
const COOKIE_NAME: &str = "keyward_session";
/// Largest form body read.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Keys per page of the list.
const PAGE: u32 = 50;

const CSS: &str = include_str!("../static/console.css");
const JS: &str = include_str!("../static/console.js");

/// The console's routes, merged into the admin router.
pub(crate) fn router() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/console", get(|| async { redirect("/console/keys") }))
        .route("/console/", get(|| async { redirect("/console/keys") }))
        .route(
            "/console/static/console.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/console/static/console.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route(
            "/console/password",
            get(password_page).post(change_password),
        )
        .route("/console/keys", get(keys_page).post(create_key))
        .route("/console/keys/new", get(new_key_page))
        .route("/console/keys/{id}", get(key_page))
        .route("/console/keys/{id}/revoke", post(revoke_key))
        .route("/console/keys/{id}/roll", post(roll_key))
        .route("/console/groups", get(groups_page))
        .route("/console/groups/{id}", get(group_page))
        .route("/console/groups/{id}/users", post(add_member))
        .route(
            "/console/groups/{id}/users/{user}/remove",
            post(remove_member),
        )
        .route("/console/audit", get(audit_page))
}

// ---- responses ----------------------------------------------------------

fn page_of(status: StatusCode, html: String) -> Page {
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

fn render(status: StatusCode, t: &impl Template) -> Page {
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

fn redirect(to: &str) -> Page {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(LOCATION, v);
    }
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply(res)
}

fn asset(text: &'static str, content_type: &'static str) -> Page {
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
struct ErrorPage<'a> {
    chrome: Option<Chrome>,
    heading: &'a str,
    message: String,
    back: &'a str,
}

fn error_page(chrome: Option<Chrome>, status: StatusCode, message: String, back: &str) -> Page {
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
fn app_error(chrome: Option<Chrome>, e: AppError, back: &str) -> Page {
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
fn app_status(e: AppError) -> (StatusCode, String, Option<u64>) {
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
fn sentence(text: &str) -> String {
    let mut out: String = text.chars().take(1).flat_map(char::to_uppercase).collect();
    out.push_str(text.get(1..).unwrap_or(""));
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

// ---- request plumbing ---------------------------------------------------

fn cookie(headers: &HeaderMap) -> Option<String> {
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
fn is_loopback_host(headers: &HeaderMap) -> bool {
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

fn session_cookie(value: &str, max_age_s: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .ok()
}

/// Refuses a state-changing request that another site made the browser
/// send. `SameSite=Strict` already keeps the cookie off such requests; this
/// also covers the sign-in form, which has no session yet.
fn same_site(headers: &HeaderMap) -> Result<(), Page> {
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
struct Form(Vec<(String, String)>);

impl Form {
    /// Fields of a URL-encoded text (a body, or a page's query string).
    fn parse(text: &[u8]) -> Self {
        Form(
            form_urlencoded::parse(text)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The query string of a `GET`, read like a form.
    fn query(parts: &Parts) -> Self {
        Form::parse(parts.uri.query().unwrap_or("").as_bytes())
    }

    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Page;

    async fn from_request(req: AxRequest, _: &S) -> Result<Self, Page> {
        same_site(req.headers())?;
        let bytes = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                error_page(
                    None,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("The form is larger than {} KiB.", MAX_FORM_BYTES / 1024),
                    "/console",
                )
            })?;
        let form = Form::parse(&bytes);
        // No field of any form can hold a NUL, and PostgreSQL text cannot.
        if form
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
        Ok(form)
    }
}

/// What every signed-in page shows around its content.
#[derive(Clone)]
pub(crate) struct Chrome {
    email: String,
    org: String,
    csrf: String,
    section: &'static str,
    can_keys: bool,
    can_groups: bool,
    can_audit: bool,
}

/// A signed-in user holding the scopes of `N`; otherwise a redirect to the
/// sign-in page (or to the password page while a one-time password is in
/// use), or a page saying which permissions are missing.
struct Signed<N: Need> {
    session: Session,
    actor: Actor,
    chrome: Chrome,
    _need: PhantomData<N>,
}

impl<N: Need> Signed<N> {
    fn holds(&self, scopes: &[&str], state: &State) -> bool {
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
        };
        let exempt = matches!(parts.uri.path(), "/console/password" | "/console/sign-out");
        if session.user.must_change_password && !exempt {
            return Err(redirect("/console/password"));
        }
        if !holds(N::SCOPES) {
            let missing: Vec<&str> = N::SCOPES.to_vec();
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
            _need: PhantomData,
        })
    }
}

/// Checks the form's CSRF token against the session's.
fn csrf_ok<N: Need>(who: &Signed<N>, form: &Form) -> Result<(), Page> {
    use subtle::ConstantTimeEq;
    let expected = who.session.record.csrf.as_bytes();
    let got = form.get("csrf").as_bytes();
    if got.len() == expected.len() && bool::from(got.ct_eq(expected)) {
        return Ok(());
    }
    Err(error_page(
        Some(who.chrome.clone()),
        StatusCode::FORBIDDEN,
        "This form is out of date or did not come from this console. Reload the page and try again.".to_owned(),
        "/console",
    ))
}

// ---- sign-in ------------------------------------------------------------

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    chrome: Option<Chrome>,
    error: Option<String>,
    email: String,
    org: String,
}

async fn sign_in_page() -> Page {
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

async fn sign_in(
    axum::extract::State(state): axum::extract::State<Shared>,
    parts: Parts,
    form: Form,
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

async fn sign_out(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<Anyone>,
    parts: Parts,
    form: Form,
) -> Answer {
    csrf_ok(&who, &form)?;
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

async fn password_page(who: Signed<Anyone>) -> Page {
    render(StatusCode::OK, &password_form(&who, None, false))
}

async fn change_password(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<Anyone>,
    form: Form,
) -> Answer {
    csrf_ok(&who, &form)?;
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

// ---- keys ---------------------------------------------------------------

/// A key as one row of a table.
struct KeyRow {
    id: String,
    name: String,
    display_prefix: String,
    legacy: bool,
    sets: String,
    scopes: String,
    created: String,
    expires: String,
    last_used: String,
    status: &'static str,
}

fn key_row(k: &KeyView) -> KeyRow {
    let mut sets = k.permission_sets.clone();
    sets.extend(k.scopes.iter().cloned());
    KeyRow {
        id: k.id.clone(),
        name: k.name.clone(),
        display_prefix: k.display_prefix.clone(),
        legacy: k.legacy,
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

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    chrome: Option<Chrome>,
    keys: Vec<KeyRow>,
    status: String,
    unused_for: String,
    filtered: bool,
    can_write: bool,
    next: Option<String>,
}

async fn keys_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysRead>,
    parts: Parts,
) -> Answer {
    let query = Form::query(&parts);
    let q = |name: &str| query.get(name).to_owned();
    let (status, unused_for, before) = (q("status"), q("unused_for"), q("before"));
    let now = state.app.now();
    let chrome = Some(who.chrome.clone());
    let mut filter = KeyFilter {
        limit: Some(PAGE + 1),
        ..KeyFilter::default()
    };
    if !status.is_empty() {
        keyward_app::filter_status(&mut filter, &status, now)
            .map_err(|e| app_error(chrome.clone(), e, "/console/keys"))?;
    }
    if !unused_for.is_empty() {
        let ms = keyward_core::parse_duration_ms(&unused_for).map_err(|e| {
            error_page(
                chrome.clone(),
                StatusCode::UNPROCESSABLE_ENTITY,
                sentence(&e.to_string()),
                "/console/keys",
            )
        })?;
        filter.unused_since = Some(now.saturating_sub(ms));
    }
    if let Some((at, id)) = before.split_once('.')
        && let Ok(at) = at.parse()
    {
        filter.before = Some((at, id.to_owned()));
    }
    let mut keys = state
        .app
        .list_keys(&who.session.org, &filter)
        .await
        .map_err(|e| app_error(chrome.clone(), e, "/console/keys"))?;
    let next = if keys.len() > PAGE as usize {
        keys.truncate(PAGE as usize);
        keys.last().map(|k| {
            let mut url = format!("/console/keys?before={}.{}", k.created_at, k.id);
            if !status.is_empty() {
                url.push_str(&format!("&status={status}"));
            }
            if !unused_for.is_empty() {
                url.push_str(&format!("&unused_for={unused_for}"));
            }
            url
        })
    } else {
        None
    };
    Ok(render(
        StatusCode::OK,
        &KeysPage {
            can_write: who.holds(KeysWrite::SCOPES, &state),
            chrome,
            keys: keys.iter().map(key_row).collect(),
            filtered: !status.is_empty() || !unused_for.is_empty(),
            status,
            unused_for,
            next,
        },
    ))
}

struct SetChoice {
    id: String,
    name: String,
    description: String,
    write: bool,
    checked: bool,
}

/// One product area of the creation form: its named permission sets, and
/// its single scopes (folded away when the area has named sets).
struct Area {
    name: String,
    sets: Vec<SetChoice>,
    scopes: Vec<SetChoice>,
    scopes_open: bool,
}

struct PresetChoice {
    id: String,
    name: String,
    sets: String,
    checked: bool,
}

#[derive(Template)]
#[template(path = "key_new.html")]
struct NewKeyPage {
    chrome: Option<Chrome>,
    csrf: String,
    nonce: String,
    error: Option<String>,
    name: String,
    description: String,
    expires_on: String,
    environment: String,
    areas: Vec<Area>,
    presets: Vec<PresetChoice>,
    broad_limit: usize,
    write_count: usize,
    show_broad: bool,
}

/// Broad access starts above this many write-capable permission sets (the
/// core's rule, shown in the form).
const BROAD_LIMIT: usize = keyward_core::catalog::BROAD_ACCESS_THRESHOLD;

/// The creation form, filled with what was sent (after a refusal) or empty.
async fn new_key_form(
    state: &State,
    who: &Signed<KeysWrite>,
    form: Option<&Form>,
    error: Option<String>,
) -> Result<NewKeyPage, Page> {
    let nonce = state
        .app
        .form_nonce(&who.session)
        .await
        .map_err(|e| app_error(Some(who.chrome.clone()), e, "/console/keys"))?;
    let catalog = state.app.catalog();
    let chosen = form.map(|f| f.all("set")).unwrap_or_default();
    let chosen_presets = form.map(|f| f.all("preset")).unwrap_or_default();
    // Keyward's own scopes are offered last, under their own area.
    let mut areas: Vec<Area> = Vec::new();
    let mut write_count = 0;
    for set in catalog.permission_sets() {
        let checked = chosen.iter().any(|c| c == set.id());
        if checked && set.is_write() {
            write_count += 1;
        }
        let area_name = if set.area().is_empty() {
            "Other".to_owned()
        } else {
            set.area().to_owned()
        };
        let choice = SetChoice {
            id: set.id().to_owned(),
            name: set.name().to_owned(),
            description: set.description().to_owned(),
            write: set.is_write(),
            checked,
        };
        let area = match areas.iter().position(|a| a.name == area_name) {
            Some(i) => &mut areas[i],
            None => {
                areas.push(Area {
                    name: area_name,
                    sets: Vec::new(),
                    scopes: Vec::new(),
                    scopes_open: false,
                });
                let last = areas.len() - 1;
                &mut areas[last]
            }
        };
        if set.is_single_scope() {
            area.scopes_open |= checked;
            area.scopes.push(choice);
        } else {
            area.sets.push(choice);
        }
    }
    // An area of single scopes only shows them as its sets.
    for area in &mut areas {
        if area.sets.is_empty() {
            area.sets = std::mem::take(&mut area.scopes);
        }
    }
    let presets = catalog
        .presets()
        .iter()
        .map(|p| {
            let mut sets: Vec<String> = p.scopes().to_vec();
            sets.extend(p.permission_sets().iter().cloned());
            PresetChoice {
                id: p.id().to_owned(),
                name: p.name().to_owned(),
                sets: sets.join(" "),
                checked: chosen_presets.iter().any(|c| c == p.id()),
            }
        })
        .collect();
    // What the server will count: presets expand into their sets too, so a
    // refusal for broad access always shows the confirmation, script or not.
    if form.is_some() {
        let request = GrantRequest {
            scopes: Vec::new(),
            permission_sets: chosen.clone(),
            presets: chosen_presets.clone(),
        };
        if let Ok(resolved) = catalog.resolve_grants(&request) {
            write_count = write_count.max(resolved.write_capable_sets.len());
        }
    }
    let get = |name: &str| form.map_or(String::new(), |f| f.get(name).to_owned());
    Ok(NewKeyPage {
        chrome: Some(who.chrome.clone()),
        csrf: who.session.record.csrf.clone(),
        nonce,
        error,
        name: get("name"),
        description: get("description"),
        expires_on: get("expires_on"),
        environment: get("environment"),
        areas,
        presets,
        broad_limit: BROAD_LIMIT,
        show_broad: write_count > BROAD_LIMIT,
        write_count,
    })
}

async fn new_key_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysWrite>,
) -> Answer {
    let form = new_key_form(&state, &who, None, None).await?;
    Ok(render(StatusCode::OK, &form))
}

#[derive(Template)]
#[template(path = "key_created.html")]
struct CreatedPage {
    chrome: Option<Chrome>,
    heading: &'static str,
    id: String,
    name: String,
    key: String,
    warning: Option<String>,
    note: Option<String>,
}

/// A form that hands out a key (create, roll): the session's CSRF token, and
/// a nonce used for the first time. A second submission gets a page saying
/// why no key is shown.
async fn fresh_key_form(state: &State, who: &Signed<KeysWrite>, form: &Form) -> Result<(), Page> {
    csrf_ok(who, form)?;
    let used = state
        .app
        .use_form_nonce(&who.session, form.get("nonce"))
        .await
        .map_err(|e| app_error(Some(who.chrome.clone()), e, "/console/keys"))?;
    if used {
        Ok(())
    } else {
        Err(already_submitted(who.chrome.clone()))
    }
}

/// Used nonce: the key was already shown once; never show one again.
fn already_submitted(chrome: Chrome) -> Page {
    error_page(
        Some(chrome),
        StatusCode::CONFLICT,
        "This form was already submitted. A key is shown only once, so it cannot be shown again: find it under API Keys, and create a new one if the first was not copied.".to_owned(),
        "/console/keys",
    )
}

/// The creation form again, as sent, with what is wrong in words.
async fn refuse_create(
    state: &State,
    who: &Signed<KeysWrite>,
    form: &Form,
    message: String,
    status: StatusCode,
) -> Page {
    match new_key_form(state, who, Some(form), Some(message)).await {
        Ok(page) => render(status, &page),
        Err(page) => page,
    }
}

async fn create_key(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysWrite>,
    form: Form,
) -> Answer {
    fresh_key_form(&state, &who, &form).await?;
    let refuse =
        |message: String, status: StatusCode| refuse_create(&state, &who, &form, message, status);
    let expires_at = match form.get("expires_on") {
        "" => None,
        day => match format!("{day}T23:59:59Z").parse::<jiff::Timestamp>() {
            Ok(t) => Some(t.as_millisecond()),
            Err(_) => {
                return Err(refuse(
                    format!("Expires on: `{day}` is not a date."),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .await);
            }
        },
    };
    let environment = match form.get("environment") {
        "" | "live" => Environment::Live,
        "test" => Environment::Test,
        other => {
            return Err(refuse(
                format!("Environment: `{other}` is not live or test."),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await);
        }
    };
    let req = CreateKey {
        name: form.get("name").to_owned(),
        description: form.get("description").to_owned(),
        environment: Some(environment),
        grants: GrantRequest {
            scopes: Vec::new(),
            permission_sets: form.all("set"),
            presets: form.all("preset"),
        },
        expires_at,
        acknowledge_broad_access: !form.get("acknowledge_broad_access").is_empty(),
    };
    if req.grants.permission_sets.is_empty() && req.grants.presets.is_empty() {
        return Err(refuse(
            "Choose at least one permission set.".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await);
    }
    match state
        .app
        .create_key(&who.actor, &who.session.org, req)
        .await
    {
        Ok(created) => Ok(render(
            StatusCode::CREATED,
            &CreatedPage {
                chrome: Some(who.chrome.clone()),
                heading: "Copy your new API key",
                id: created.record.id.clone(),
                name: created.record.name.clone(),
                key: created.key.clone(),
                warning: created.broad_access_warning.clone().map(|w| sentence(&w)),
                note: None,
            },
        )),
        Err(
            e @ (AppError::Validation { .. }
            | AppError::Grants(_)
            | AppError::BroadAccessUnacknowledged { .. }
            | AppError::Escalation { .. }),
        ) => {
            let (status, message, _) = app_status(e);
            Err(refuse(message, status).await)
        }
        Err(e) => Err(app_error(Some(who.chrome.clone()), e, "/console/keys")),
    }
}

struct ScopeRow {
    name: String,
    description: String,
    implies: String,
}

struct TrailRow {
    at: String,
    action: String,
    actor: String,
    request: String,
    status: String,
}

#[derive(Template)]
#[template(path = "key_detail.html")]
struct KeyPage {
    chrome: Option<Chrome>,
    key: KeyView,
    status: &'static str,
    created: String,
    expires: String,
    last_used: String,
    sets: Vec<SetChoice>,
    scopes: Vec<ScopeRow>,
    trail: Vec<TrailRow>,
    can_write: bool,
    csrf: String,
    nonce: String,
    flash: Option<String>,
    error: Option<String>,
}

async fn key_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysRead>,
    axum::extract::Path(id): axum::extract::Path<String>,
    parts: Parts,
) -> Answer {
    let flash = match Form::query(&parts).get("done") {
        "revoked" => {
            Some("The key was revoked. Requests using it are refused from now on.".to_owned())
        }
        "already-revoked" => Some("The key was already revoked.".to_owned()),
        _ => None,
    };
    key_detail(&state, &who, &id, flash, None, StatusCode::OK).await
}

async fn key_detail<N: Need>(
    state: &State,
    who: &Signed<N>,
    id: &str,
    flash: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Answer {
    let chrome = Some(who.chrome.clone());
    let org = &who.session.org;
    let key = state
        .app
        .show_key(org, id)
        .await
        .map_err(|e| app_error(chrome.clone(), e, "/console/keys"))?;
    let catalog = state.app.catalog();
    let sets = key
        .permission_sets
        .iter()
        .chain(key.scopes.iter())
        .map(|s| match catalog.permission_set(s) {
            Some(p) => SetChoice {
                id: p.id().to_owned(),
                name: p.name().to_owned(),
                description: p.description().to_owned(),
                write: p.is_write(),
                checked: true,
            },
            None => SetChoice {
                id: s.clone(),
                name: s.clone(),
                description: "No longer in the catalog: grants nothing.".to_owned(),
                write: false,
                checked: true,
            },
        })
        .collect();
    let scopes = key
        .effective_scopes
        .iter()
        .filter_map(|name| catalog.scope_id(name))
        .map(|id| {
            let s = catalog.scope(id);
            let implies: Vec<&str> = s
                .implies()
                .iter()
                .map(|i| catalog.scope(*i).name())
                .collect();
            ScopeRow {
                name: s.name().to_owned(),
                description: s.description().to_owned(),
                implies: if implies.is_empty() {
                    "—".to_owned()
                } else {
                    implies.join(", ")
                },
            }
        })
        .collect();
    let trail = state
        .app
        .key_audit(org, id, 50)
        .await
        .map_err(|e| app_error(chrome.clone(), e, "/console/keys"))?
        .into_iter()
        .map(|r| TrailRow {
            at: human_time(Some(r.entry.at_ms)),
            action: r.entry.action,
            actor: r.entry.actor,
            request: match (r.entry.method, r.entry.path) {
                (Some(m), Some(p)) => format!("{m} {p}"),
                _ => String::new(),
            },
            status: r.entry.status.map(|s| s.to_string()).unwrap_or_default(),
        })
        .collect();
    let can_write = who.holds(KeysWrite::SCOPES, state);
    let nonce = if can_write {
        state
            .app
            .form_nonce(&who.session)
            .await
            .map_err(|e| app_error(chrome.clone(), e, "/console/keys"))?
    } else {
        String::new()
    };
    let page = KeyPage {
        chrome,
        status: key.status.as_str(),
        created: human_time(Some(key.created_at)),
        expires: key
            .expires_at
            .map_or_else(|| "never".to_owned(), |t| human_time(Some(t))),
        last_used: human_time(key.last_used_at),
        sets,
        scopes,
        trail,
        can_write,
        csrf: who.session.record.csrf.clone(),
        nonce,
        flash,
        error,
        key,
    };
    Ok(render(status, &page))
}

async fn revoke_key(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysWrite>,
    axum::extract::Path(id): axum::extract::Path<String>,
    form: Form,
) -> Answer {
    csrf_ok(&who, &form)?;
    let (_, outcome) = state
        .app
        .revoke_key(&who.actor, &who.session.org, &id)
        .await
        .map_err(|e| app_error(Some(who.chrome.clone()), e, "/console/keys"))?;
    Ok(redirect(&match outcome {
        keyward_app::Revoked::Now => format!("/console/keys/{id}?done=revoked"),
        keyward_app::Revoked::Already(_) => format!("/console/keys/{id}?done=already-revoked"),
    }))
}

async fn roll_key(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysWrite>,
    axum::extract::Path(id): axum::extract::Path<String>,
    form: Form,
) -> Answer {
    fresh_key_form(&state, &who, &form).await?;
    let grace = form.get("grace");
    let grace_ms = match keyward_core::parse_duration_ms(grace) {
        Ok(ms) => ms,
        Err(e) => {
            return key_detail(
                &state,
                &who,
                &id,
                None,
                Some(sentence(&format!("grace: {e}"))),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    match state
        .app
        .roll_key(&who.actor, &who.session.org, &id, grace_ms)
        .await
    {
        Ok(created) => Ok(render(
            StatusCode::CREATED,
            &CreatedPage {
                chrome: Some(who.chrome.clone()),
                heading: "Copy the replacement key",
                id: created.record.id.clone(),
                name: created.record.name.clone(),
                key: created.key.clone(),
                warning: None,
                note: Some(format!(
                    "The old key keeps working for {grace}, then expires. Replace it in the integration before then."
                )),
            },
        )),
        Err(e @ (AppError::Conflict(_) | AppError::Escalation { .. })) => {
            let (status, message, _) = app_status(e);
            key_detail(&state, &who, &id, None, Some(message), status).await
        }
        Err(e) => Err(app_error(Some(who.chrome.clone()), e, "/console/keys")),
    }
}

// ---- groups ---------------------------------------------------------------

#[derive(Template)]
#[template(path = "groups.html")]
struct GroupsPage {
    chrome: Option<Chrome>,
    groups: Vec<GroupView>,
}

async fn groups_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<GroupsRead>,
) -> Answer {
    let groups = state
        .app
        .list_groups(&who.session.org)
        .await
        .map_err(|e| app_error(Some(who.chrome.clone()), e, "/console"))?;
    Ok(render(
        StatusCode::OK,
        &GroupsPage {
            chrome: Some(who.chrome.clone()),
            groups,
        },
    ))
}

struct UserRow {
    id: String,
    email: String,
    name: String,
    groups: String,
}

fn user_row(u: &UserView) -> UserRow {
    UserRow {
        id: u.id.clone(),
        email: u.email.clone(),
        name: u.name.clone(),
        groups: u.groups.join(", "),
    }
}

#[derive(Template)]
#[template(path = "group.html")]
struct GroupPage {
    chrome: Option<Chrome>,
    group: GroupView,
    tab: &'static str,
    users: Vec<UserRow>,
    candidates: Vec<UserRow>,
    keys: Vec<KeyRow>,
    can_write: bool,
    csrf: String,
    flash: Option<String>,
    error: Option<String>,
}

async fn group_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<GroupsRead>,
    axum::extract::Path(id): axum::extract::Path<String>,
    parts: Parts,
) -> Answer {
    let query = Form::query(&parts);
    let tab = if query.get("tab") == "api-keys" {
        "api-keys"
    } else {
        "users"
    };
    let flash = match query.get("done") {
        "added" => Some("The user was added to the group.".to_owned()),
        "removed" => Some("The user was removed from the group.".to_owned()),
        _ => None,
    };
    group_detail(&state, &who, &id, tab, flash, None, StatusCode::OK).await
}

async fn group_detail<N: Need>(
    state: &State,
    who: &Signed<N>,
    id: &str,
    tab: &'static str,
    flash: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Answer {
    let chrome = Some(who.chrome.clone());
    let org = &who.session.org;
    let fail = |e| app_error(chrome.clone(), e, "/console/groups");
    let group = state.app.show_group(org, id).await.map_err(fail)?;
    let (mut users, mut candidates, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    if tab == "users" {
        if !who.holds(&[reserved::USERS_READ], state) {
            return Err(error_page(
                chrome,
                StatusCode::FORBIDDEN,
                "Your groups do not give you keyward-users:read, which the Users tab needs."
                    .to_owned(),
                "/console/groups",
            ));
        }
        let all = state.app.list_users(org, None).await.map_err(fail)?;
        for u in &all {
            if u.groups.iter().any(|g| g == id) {
                users.push(user_row(u));
            } else {
                candidates.push(user_row(u));
            }
        }
    } else {
        if !who.holds(KeysRead::SCOPES, state) {
            return Err(error_page(
                chrome,
                StatusCode::FORBIDDEN,
                "Your groups do not give you keyward-api-keys:read, which the API Keys tab needs."
                    .to_owned(),
                "/console/groups",
            ));
        }
        keys = state
            .app
            .group_keys(org, id, KeyFilter::default())
            .await
            .map_err(fail)?
            .iter()
            .map(key_row)
            .collect();
    }
    let page = GroupPage {
        can_write: who.holds(GroupsWrite::SCOPES, state),
        csrf: who.session.record.csrf.clone(),
        chrome,
        group,
        tab,
        users,
        candidates,
        keys,
        flash,
        error,
    };
    Ok(render(status, &page))
}

async fn set_member(
    state: &State,
    who: &Signed<GroupsWrite>,
    group: &str,
    user: &str,
    member: bool,
) -> Answer {
    match state
        .app
        .set_membership(&who.actor, &who.session.org, group, user, member)
        .await
    {
        Ok(_) => Ok(redirect(&format!(
            "/console/groups/{group}?tab=users&done={}",
            if member { "added" } else { "removed" }
        ))),
        Err(e @ AppError::Escalation { .. }) => {
            let (status, message, _) = app_status(e);
            group_detail(state, who, group, "users", None, Some(message), status).await
        }
        Err(e) => Err(app_error(Some(who.chrome.clone()), e, "/console/groups")),
    }
}

async fn add_member(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<GroupsWrite>,
    axum::extract::Path(group): axum::extract::Path<String>,
    form: Form,
) -> Answer {
    csrf_ok(&who, &form)?;
    set_member(&state, &who, &group, form.get("user"), true).await
}

async fn remove_member(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<GroupsWrite>,
    axum::extract::Path((group, user)): axum::extract::Path<(String, String)>,
    form: Form,
) -> Answer {
    csrf_ok(&who, &form)?;
    set_member(&state, &who, &group, &user, false).await
}

// ---- audit ----------------------------------------------------------------

#[derive(Default)]
struct AuditFilters {
    key_id: String,
    actor: String,
    action: String,
    status: String,
    since: String,
    until: String,
}

struct AuditRow {
    seq: i64,
    at: String,
    action: String,
    actor: String,
    key_id: String,
    request: String,
    status: String,
    client: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Option<Chrome>,
    q: AuditFilters,
    records: Vec<AuditRow>,
    next: Option<String>,
    chain_ok: bool,
    chain_text: String,
    error: Option<String>,
}

async fn audit_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<AuditRead>,
    parts: Parts,
) -> Answer {
    let chrome = Some(who.chrome.clone());
    let query = Form::query(&parts);
    let pairs = &query.0;
    let get = |name: &str| query.get(name).trim().to_owned();
    let q = AuditFilters {
        key_id: get("key_id"),
        actor: get("actor"),
        action: get("action"),
        status: get("status"),
        since: get("since"),
        until: get("until"),
    };
    let mut error = None;
    let day = |d: &str, end: bool| -> Option<i64> {
        let time = if end { "T23:59:59.999Z" } else { "T00:00:00Z" };
        format!("{d}{time}")
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond())
    };
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let mut query = AuditQuery {
        key_id: opt(&q.key_id),
        actor: opt(&q.actor),
        action: opt(&q.action),
        limit: 100,
        before_seq: get("before").parse().ok(),
        ..AuditQuery::default()
    };
    if !q.status.is_empty() {
        match q.status.parse::<u16>() {
            Ok(s) => query.status = Some(s),
            Err(_) => error = Some(format!("Status `{}` is not an HTTP status code.", q.status)),
        }
    }
    for (text, end, slot) in [
        (&q.since, false, &mut query.since),
        (&q.until, true, &mut query.until),
    ] {
        if !text.is_empty() {
            match day(text, end) {
                Some(t) => *slot = Some(t),
                None => error = Some(format!("`{text}` is not a date.")),
            }
        }
    }
    let (records, next_seq) = state
        .app
        .query_audit(&who.session.org, &query)
        .await
        .map_err(|e| app_error(chrome.clone(), e, "/console/audit"))?;
    let chain_ok = state
        .chain_verified()
        .await
        .map_err(|e| app_error(chrome.clone(), e, "/console/audit"))?;
    // The chain spans every organization: say only whether it holds.
    let chain_text = if chain_ok {
        "The audit log's hash chain verifies: no record was altered or removed.".to_owned()
    } else {
        "The audit log's hash chain does not verify. Ask the operator to run `keyward audit verify`, which names the first broken record.".to_owned()
    };
    let next = next_seq.map(|seq| {
        let mut rest: Vec<String> = pairs
            .iter()
            .filter(|(k, v)| k != "before" && !v.is_empty())
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                )
            })
            .collect();
        rest.push(format!("before={seq}"));
        format!("/console/audit?{}", rest.join("&"))
    });
    let records = records
        .into_iter()
        .map(|a| AuditRow {
            seq: a.seq,
            at: human_time(a.at),
            request: match (&a.method, &a.path) {
                (Some(m), Some(p)) => format!("{m} {p}"),
                _ => String::new(),
            },
            status: a.status.map(|s| s.to_string()).unwrap_or_default(),
            client: a.client.clone().unwrap_or_default(),
            key_id: a.key_id.clone().unwrap_or_default(),
            action: a.action,
            actor: a.actor,
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(render(
        status,
        &AuditPage {
            chrome,
            q,
            records,
            next,
            chain_ok,
            chain_text,
            error,
        },
    ))
}
