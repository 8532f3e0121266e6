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

mod account;
mod keys;
mod page;
mod people;
mod settings;
mod usage;

use crate::state::State;
use axum::routing::{get, post};
use page::{asset, redirect};
use std::sync::Arc;

const CSS: &str = include_str!("../../static/console.css");
const JS: &str = include_str!("../../static/console.js");

/// The console's routes, merged into the admin router.
pub(crate) fn router() -> axum::Router<Arc<State>> {
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
        .route(
            "/console/sign-in",
            get(account::sign_in_page).post(account::sign_in),
        )
        .route("/console/sign-out", post(account::sign_out))
        .route(
            "/console/password",
            get(account::password_page).post(account::change_password),
        )
        .route("/console/keys", get(keys::keys_page).post(keys::create_key))
        .route("/console/keys/new", get(keys::new_key_page))
        .route("/console/keys/{id}", get(keys::key_page))
        .route("/console/keys/{id}/revoke", post(keys::revoke_key))
        .route("/console/keys/{id}/roll", post(keys::roll_key))
        .route("/console/groups", get(people::groups_page))
        .route("/console/groups/{id}", get(people::group_page))
        .route("/console/groups/{id}/users", post(people::add_member))
        .route(
            "/console/groups/{id}/users/{user}/remove",
            post(people::remove_member),
        )
        .route("/console/audit", get(people::audit_page))
        .route(
            "/console/settings",
            get(settings::policy_page).post(settings::set_policy),
        )
        // Every page, whatever it reads: a NUL in the address is refused
        // before any handler runs, a `POST` included.
        .layer(axum::middleware::from_fn(page::refuse_nul))
}
