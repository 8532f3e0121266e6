//! The keys pages: list, create, show, revoke, roll.

use super::page::{
    Chrome, Form, Ids, KeyRow, Shared, Signed, app_error, app_status, csrf_ok, error_page, key_row,
    redirect, render, sentence,
};
use super::usage::KeyUsage;
use crate::auth::{KeysRead, KeysWrite, Need};
use crate::state::State;
use crate::web::{Answer, Reply as Page};
use askama::Template;
use http::StatusCode;
use http::request::Parts;
use keyward_app::KeyFilter;
use keyward_app::leaks::leak_sentence;
use keyward_app::views::{KeyView, human_time};
use keyward_app::{AppError, CreateKey};
use keyward_core::limits::{Limit, Network};
use keyward_core::{Environment, GrantRequest};

/// Keys per page of the list.
const PAGE: u32 = 50;

// ---- keys ---------------------------------------------------------------

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

pub(super) async fn keys_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysRead>,
    parts: Parts,
) -> Answer {
    let query = Form::query(&parts)?;
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
    limits: String,
    allowed_cidrs: String,
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
        limits: get("limits"),
        allowed_cidrs: get("allowed_cidrs"),
        areas,
        presets,
        broad_limit: BROAD_LIMIT,
        show_broad: write_count > BROAD_LIMIT,
        write_count,
    })
}

pub(super) async fn new_key_page(
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
    csrf_ok(state, who, form).await?;
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

pub(super) async fn create_key(
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
    // One per line (or separated by spaces or commas), as the CLI takes them.
    let items = |name: &str| -> Vec<String> {
        form.get(name)
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let limits = items("limits")
        .iter()
        .map(|l| Limit::parse_flag("Limits", l))
        .collect::<Result<Vec<_>, _>>();
    let allowed_cidrs = items("allowed_cidrs")
        .iter()
        .map(|n| Network::parse("Allowed networks", n))
        .collect::<Result<Vec<_>, _>>();
    let (limits, allowed_cidrs) = match (limits, allowed_cidrs) {
        (Ok(l), Ok(n)) => (l, n),
        (Err(e), _) | (_, Err(e)) => {
            let message = format!("{}: {}.", e.field, e.message);
            return Err(refuse(message, StatusCode::UNPROCESSABLE_ENTITY).await);
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
        limits,
        allowed_cidrs,
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
    /// What a leak record says, in words.
    note: Option<String>,
    actor: String,
    request: String,
    status: String,
}

#[derive(Template)]
#[template(path = "key_detail.html")]
struct KeyPage {
    chrome: Option<Chrome>,
    key: KeyView,
    /// When and where it was reported leaked, and what that did.
    leak: Option<String>,
    status: &'static str,
    created: String,
    expires: String,
    last_used: String,
    sets: Vec<SetChoice>,
    scopes: Vec<ScopeRow>,
    trail: Vec<TrailRow>,
    usage: KeyUsage,
    can_write: bool,
    csrf: String,
    nonce: String,
    flash: Option<String>,
    error: Option<String>,
}

pub(super) async fn key_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysRead>,
    Ids(id): Ids<String>,
    parts: Parts,
) -> Answer {
    let flash = match Form::query(&parts)?.get("done") {
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
            note: serde_json::from_str(&r.entry.details)
                .ok()
                .and_then(|d| leak_sentence(&r.entry.action, &d)),
            action: r.entry.action,
            actor: r.entry.actor,
            request: match (r.entry.method, r.entry.path) {
                (Some(m), Some(p)) => format!("{m} {p}"),
                _ => String::new(),
            },
            status: r.entry.status.map(|s| s.to_string()).unwrap_or_default(),
        })
        .collect();
    let leak = if key.flags.iter().any(|f| f == "leaked") {
        leak_notice(state, org, &key)
            .await
            .map_err(|e| app_error(chrome.clone(), e, "/console/keys"))?
    } else {
        None
    };
    let usage = KeyUsage::load(state, org, id)
        .await
        .map_err(|e| app_error(chrome.clone(), e, "/console/keys"))?;
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
        usage,
        can_write,
        csrf: who.session.record.csrf.clone(),
        nonce,
        flash,
        error,
        leak,
        key,
    };
    Ok(render(status, &page))
}

/// The key page's first words about a leaked key: when, where and by whom
/// it was reported (its `key.leaked` record), and whether it still works.
async fn leak_notice(
    state: &State,
    org: &keyward_app::Org,
    key: &KeyView,
) -> Result<Option<String>, keyward_app::AppError> {
    let query = keyward_app::AuditQuery {
        key_id: Some(key.id.clone()),
        action: Some("key.leaked".to_owned()),
        limit: 1,
        ..Default::default()
    };
    let (records, _) = state.app.query_audit(org, &query).await?;
    let Some(told) = records.first() else {
        return Ok(None);
    };
    let said = leak_sentence(&told.action, &told.details).unwrap_or_default();
    let now = if key.status.as_str() == "active" {
        "This key still works: revoke it, or roll it and replace it where it is used."
    } else {
        "It no longer works."
    };
    Ok(Some(format!("{}: {said}. {now}", human_time(told.at))))
}

pub(super) async fn revoke_key(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysWrite>,
    Ids(id): Ids<String>,
    form: Form,
) -> Answer {
    csrf_ok(&state, &who, &form).await?;
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

pub(super) async fn roll_key(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<KeysWrite>,
    Ids(id): Ids<String>,
    form: Form,
) -> Answer {
    fresh_key_form(&state, &who, &form).await?;
    // A field the form does not have is a mistake, not something to skip:
    // a misspelt `scope` would otherwise roll with every grant kept.
    if let Some(unknown) = form.unknown_field(&["csrf", "nonce", "grace", "set", "scope"]) {
        let message = sentence(&format!("the roll form has no field `{unknown}`"));
        return key_detail(
            &state,
            &who,
            &id,
            None,
            Some(message),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
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
    // The least-privilege panel's "Replace with a narrower key" posts the
    // grants it showed; the app refuses any the old key does not cover.
    let (sets, scopes) = (form.all("set"), form.all("scope"));
    let narrower = (!sets.is_empty() || !scopes.is_empty()).then(|| GrantRequest {
        scopes,
        permission_sets: sets,
        presets: Vec::new(),
    });
    match state
        .app
        .roll_key_narrowing(
            &who.actor,
            &who.session.org,
            &id,
            grace_ms,
            narrower.as_ref(),
        )
        .await
    {
        Ok(created) => Ok(render(
            StatusCode::CREATED,
            &CreatedPage {
                chrome: Some(who.chrome.clone()),
                heading: if narrower.is_some() {
                    "Copy the narrower replacement key"
                } else {
                    "Copy the replacement key"
                },
                id: created.record.id.clone(),
                name: created.record.name.clone(),
                key: created.key.clone(),
                warning: None,
                note: Some(format!(
                    "The old key keeps working for {grace}, then expires. Replace it in the integration before then."
                )),
            },
        )),
        Err(
            e @ (AppError::Conflict(_)
            | AppError::Escalation { .. }
            | AppError::RollWouldBroaden { .. }
            | AppError::Validation { .. }
            | AppError::Grants(_)),
        ) => {
            let (status, message, _) = app_status(e);
            key_detail(&state, &who, &id, None, Some(message), status).await
        }
        Err(e) => Err(app_error(Some(who.chrome.clone()), e, "/console/keys")),
    }
}
