//! The groups pages (members and keys) and the audit log.

use super::page::{
    Chrome, Form, Ids, KeyRow, Shared, Signed, app_error, app_status, csrf_ok, error_page, key_row,
    redirect, render,
};
use crate::auth::{AuditRead, GroupsRead, GroupsWrite, KeysRead, Need};
use crate::state::State;
use crate::web::Answer;
use askama::Template;
use http::StatusCode;
use http::request::Parts;
use keyward_app::AppError;
use keyward_app::people::{GroupView, UserView};
use keyward_app::views::human_time;
use keyward_app::{AuditQuery, KeyFilter};
use keyward_core::catalog::reserved;

// ---- groups ---------------------------------------------------------------

#[derive(Template)]
#[template(path = "groups.html")]
struct GroupsPage {
    chrome: Option<Chrome>,
    groups: Vec<GroupView>,
}

pub(super) async fn groups_page(
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

pub(super) async fn group_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<GroupsRead>,
    Ids(id): Ids<String>,
    parts: Parts,
) -> Answer {
    let query = Form::query(&parts)?;
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

pub(super) async fn add_member(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<GroupsWrite>,
    Ids(group): Ids<String>,
    form: Form,
) -> Answer {
    csrf_ok(&state, &who, &form).await?;
    set_member(&state, &who, &group, form.get("user"), true).await
}

pub(super) async fn remove_member(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<GroupsWrite>,
    Ids((group, user)): Ids<(String, String)>,
    form: Form,
) -> Answer {
    csrf_ok(&state, &who, &form).await?;
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
    /// What a leak record says, in words.
    note: Option<String>,
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

pub(super) async fn audit_page(
    axum::extract::State(state): axum::extract::State<Shared>,
    who: Signed<AuditRead>,
    parts: Parts,
) -> Answer {
    let chrome = Some(who.chrome.clone());
    let query = Form::query(&parts)?;
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
            note: keyward_app::leaks::leak_sentence(&a.action, &a.details),
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
