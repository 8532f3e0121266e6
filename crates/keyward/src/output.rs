//! What the CLI prints. Human text by default; `--json` prints the app's
//! views unchanged (documented in `docs/cli-json.md`), one JSON document on
//! stdout, so scripts can rely on it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyward_app::people::{OwnerCredentials, UserView, UserWithPassword};
use keyward_app::views::{CreatedKey, KeyView, human_time};
use keyward_app::{ChainReport, Explanation, ImportReport};
use keyward_core::Catalog;
use keyward_store::{AuditRecord, Org, Revoked};
use serde::Serialize;
use serde_json::json;

fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot render json: {e}"),
    }
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
pub fn bar(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left)") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// A counter without a known total.
pub fn counter(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg}: {pos} records") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(", ")
    }
}

pub fn created(c: &CreatedKey, json: bool, verb: &str) {
    if json {
        return print_json(c);
    }
    let k = &c.record;
    println!(
        "{verb} key {} \"{}\" in organization {}",
        k.id, k.name, k.org_id
    );
    println!("  display prefix:   {}", k.display_prefix);
    println!("  scopes:           {}", list(&k.scopes));
    println!("  permission sets:  {}", list(&k.permission_sets));
    println!("  effective scopes: {}", list(&k.effective_scopes));
    println!("  expires:          {}", human_time(k.expires_at));
    limit_lines(k);
    if let Some(w) = &c.broad_access_warning {
        println!("  warning:          {w} (acknowledged)");
    }
    println!();
    println!("    {}", c.key);
    println!();
    println!("Copy this key now: it is shown only once and cannot be retrieved again.");
}

pub fn key_list(keys: &[KeyView], json: bool) {
    if json {
        return print_json(keys);
    }
    if keys.is_empty() {
        println!("no keys match");
        return;
    }
    println!(
        "{:<21} {:<30} {:<22} {:<8} {:<7} {:<20} {:<20} GRANTS",
        "ID", "NAME", "PREFIX", "STATUS", "FLAGS", "LAST USED", "EXPIRES"
    );
    for k in keys {
        let mut grants: Vec<String> = k.permission_sets.iter().chain(&k.scopes).cloned().collect();
        if k.legacy {
            grants = vec!["LEGACY (full access)".into()];
        }
        let name: String = k.name.chars().take(30).collect();
        println!(
            "{:<21} {:<30} {:<22} {:<8} {:<7} {:<20} {:<20} {}",
            k.id,
            name,
            format!("{}…", k.display_prefix),
            k.status.as_str(),
            if k.flags.is_empty() {
                "-".to_owned()
            } else {
                k.flags.join(",")
            },
            human_time(k.last_used_at),
            human_time(k.expires_at),
            list(&grants)
        );
    }
}

pub fn key_detail(catalog: &Catalog, k: &KeyView, trail: &[AuditRecord], json: bool) {
    if json {
        return print_json(k);
    }
    println!(
        "{} \"{}\"{}",
        k.id,
        k.name,
        if k.legacy { "  [Legacy]" } else { "" }
    );
    println!("  organization:     {}", k.org_id);
    println!("  display prefix:   {}…", k.display_prefix);
    println!("  environment:      {}", k.environment);
    println!("  status:           {}", k.status.as_str());
    if !k.flags.is_empty() {
        println!("  flagged:          {} (key policy)", k.flags.join(", "));
    }
    println!(
        "  created:          {} by {}",
        human_time(Some(k.created_at)),
        k.created_by
    );
    println!("  expires:          {}", human_time(k.expires_at));
    if let Some(r) = k.revoked_at {
        println!("  revoked:          {}", human_time(Some(r)));
    }
    if let Some(to) = &k.rolled_to {
        println!("  rolled to:        {to}");
    }
    println!("  last used:        {}", human_time(k.last_used_at));
    if !k.description.is_empty() {
        println!("  description:      {}", k.description);
    }
    if k.legacy {
        println!("  access:           full administrator access (legacy key; cannot be edited)");
        println!(
            "                    create a scoped key and replace this one in your integration"
        );
    } else {
        println!("  permission sets:  {}", list(&k.permission_sets));
        println!("  scopes:           {}", list(&k.scopes));
    }
    limit_lines(k);
    println!("  effective scopes:");
    for name in &k.effective_scopes {
        let implied: Vec<String> = catalog
            .scope_id(name)
            .map(|id| {
                catalog
                    .scope(id)
                    .implies()
                    .iter()
                    .map(|i| catalog.scope(*i).name().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if implied.is_empty() {
            println!("    {name}");
        } else {
            println!("    {name} (implies {})", implied.join(", "));
        }
    }
    if !k.unknown_grants.is_empty() {
        println!(
            "  no longer in the catalog (grant nothing): {}",
            k.unknown_grants.join(", ")
        );
    }
    println!("  audit trail (newest first):");
    for r in trail {
        println!(
            "    #{:<6} {} {:<20} {}",
            r.seq,
            human_time(Some(r.entry.at_ms)),
            r.entry.action,
            r.entry.actor
        );
    }
}

/// `keys revoke --json`: the key, and whether this call revoked it.
#[derive(Serialize)]
struct RevokeView<'a> {
    #[serde(flatten)]
    key: &'a KeyView,
    already_revoked: bool,
}

pub fn revoked(k: &KeyView, outcome: Revoked, json: bool) {
    if json {
        let already_revoked = matches!(outcome, Revoked::Already(_));
        return print_json(&RevokeView {
            key: k,
            already_revoked,
        });
    }
    match outcome {
        Revoked::Now => println!("Revoked key {} \"{}\": it stops working now.", k.id, k.name),
        Revoked::Already(at) => println!(
            "Key {} was already revoked at {}; nothing changed.",
            k.id,
            human_time(Some(at))
        ),
    }
}

pub fn import(r: &ImportReport, json: bool) {
    if json {
        return print_json(r);
    }
    println!(
        "Imported {} legacy keys ({} already imported, skipped).",
        r.imported, r.skipped
    );
    println!("Legacy keys keep full administrator access; replace them with scoped keys.");
}

pub fn explain(e: &Explanation, json: bool) {
    if json {
        return print_json(e);
    }
    let d = &e.decision;
    let verdict = if d.allowed {
        "ALLOWED".to_owned()
    } else {
        format!("DENIED {} {}", d.status, d.code.unwrap_or(""))
    };
    println!("{} {} → {verdict}", e.method, e.path);
    if let Some(k) = &e.key {
        println!(
            "  key:       {} \"{}\" ({})",
            k.id,
            k.name,
            k.status.as_str()
        );
    }
    println!(
        "  route:     {}",
        d.route.as_deref().unwrap_or("none matches")
    );
    println!("  reason:    {}", d.reason);
    println!("  required:  {}", list(&d.required));
    println!("  missing:   {}", list(&d.missing));
    println!("  granted:   {}", list(&d.granted));
    println!("  effective: {}", list(&d.effective));
}

pub fn chain(r: &ChainReport, json: bool) {
    if json {
        return print_json(r);
    }
    match &r.first_broken {
        None => println!("audit chain verified: {} records, no break", r.records),
        Some(b) => println!(
            "audit chain BROKEN at record {}: {} ({} records verified before it)",
            b.seq, b.reason, r.records
        ),
    }
}

/// The owner's one-time password, printed once by the command that created
/// the organization (to stderr, so `--json` output stays one object).
pub fn first_start(org: &Org, owner: &OwnerCredentials) {
    eprintln!(
        "keyward: first start: created organization `{}` and its owner.\n  sign in as: {}\n  one-time password: {}\n  It is shown once and must be changed at first sign-in; `keyward users reset-password {}` makes a new one.",
        org.slug, owner.email, owner.password, owner.email
    );
}

pub fn org_created(org: &Org, owner: &OwnerCredentials, json: bool) {
    if json {
        return print_json(&json!({
            "id": org.id, "slug": org.slug, "name": org.name, "default": org.is_default,
            "owner": {"email": owner.email, "one_time_password": owner.password},
        }));
    }
    println!(
        "Created organization {} {} \"{}\"",
        org.slug, org.id, org.name
    );
    println!(
        "  owner: {}\n  one-time password: {}\n  It is shown once and must be changed at first sign-in.",
        owner.email, owner.password
    );
}

pub fn user_with_password(u: &UserWithPassword, json: bool, verb: &str) {
    if json {
        return print_json(u);
    }
    println!("{verb} {} ({})", u.user.email, u.user.id);
    println!("  groups: {}", list_or_none(&u.user.groups));
    println!(
        "  one-time password: {}\n  It is shown once and must be changed at first sign-in.",
        u.one_time_password
    );
}

pub fn users(users: &[UserView], json: bool) {
    if json {
        return print_json(&users);
    }
    if users.is_empty() {
        println!("No users.");
    }
    for u in users {
        println!(
            "{}  {}  {}  groups: {}",
            u.id,
            u.email,
            u.name,
            list_or_none(&u.groups)
        );
    }
}

pub fn membership(u: &UserView, group: &str, added: bool, changed: bool, json: bool) {
    if json {
        return print_json(
            &json!({"user": u, "group": group, "member": added, "changed": changed}),
        );
    }
    let what = match (added, changed) {
        (true, true) => "added to",
        (true, false) => "was already in",
        (false, true) => "removed from",
        (false, false) => "was not in",
    };
    println!(
        "{} {what} group `{group}`; groups now: {}",
        u.email,
        list_or_none(&u.groups)
    );
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

pub fn orgs(orgs: &[Org], json: bool, created: bool) {
    let views: Vec<serde_json::Value> = orgs
        .iter()
        .map(|o| json!({"id": o.id, "slug": o.slug, "name": o.name, "default": o.is_default}))
        .collect();
    if json {
        if created {
            return print_json(&views.first());
        }
        return print_json(&views);
    }
    for o in orgs {
        let verb = if created { "Created organization " } else { "" };
        println!(
            "{verb}{} {} \"{}\"{}",
            o.slug,
            o.id,
            o.name,
            if o.is_default { " (default)" } else { "" }
        );
    }
}

pub fn catalog(c: &Catalog, json: bool) {
    if json {
        return print_json(&keyward_app::views::CatalogView::new(c));
    }
    println!(
        "catalog `{}`: {} (keys `{}_…`, gateway prefix `{}`)",
        c.name(),
        c.title(),
        c.key_prefix(),
        c.gateway_prefix()
    );
    println!("\nscopes:");
    for s in c.scopes() {
        let status = if s.status().as_str() == "available" {
            String::new()
        } else {
            format!(" [{}]", s.status())
        };
        let implies: Vec<&str> = s.implies().iter().map(|i| c.scope(*i).name()).collect();
        let implies = if implies.is_empty() {
            String::new()
        } else {
            format!(" → {}", implies.join(", "))
        };
        println!(
            "  {:<28} {:<5} {}{status}{implies}",
            s.name(),
            if s.is_write() { "write" } else { "read" },
            s.description()
        );
    }
    let defined: Vec<_> = c
        .permission_sets()
        .iter()
        .filter(|p| !p.is_single_scope())
        .collect();
    if !defined.is_empty() {
        println!("\npermission sets:");
        for p in defined {
            let scopes: Vec<&str> = p.scopes().iter().map(|i| c.scope(*i).name()).collect();
            println!(
                "  {:<28} [{}] {} ({})",
                p.id(),
                p.area(),
                p.name(),
                scopes.join(", ")
            );
        }
    }
    println!("\npresets:");
    for p in c.presets() {
        let items: Vec<&str> = p
            .scopes()
            .iter()
            .chain(p.permission_sets())
            .map(String::as_str)
            .collect();
        println!("  {:<28} {}: {}", p.id(), p.name(), items.join(", "));
    }
    println!("\nroutes:");
    for r in c.routes() {
        println!(
            "  {:<20} {:<40} {}",
            r.methods().join(","),
            r.template(),
            c.names(r.required()).join(" ")
        );
    }
}

/// A key's limits and networks, when it has any.
fn limit_lines(k: &KeyView) {
    if !k.limits.is_empty() {
        let limits: Vec<String> = k
            .limits
            .iter()
            .map(|l| format!("{}={}/{}", l.name, l.requests, l.per))
            .collect();
        println!("  limits:           {}", limits.join(", "));
    }
    if !k.allowed_cidrs.is_empty() {
        println!("  allowed networks: {}", k.allowed_cidrs.join(", "));
    }
}

/// `keys usage`: the buckets that saw requests, then the routes, busiest
/// first.
pub fn usage(r: &keyward_app::usage::UsageReport, json: bool) {
    if json {
        return print_json(r);
    }
    println!(
        "Usage of key {} from {} to {}, by {}:",
        r.key_id, r.since, r.until, r.granularity
    );
    let busy: Vec<_> = r
        .buckets
        .iter()
        .filter(|b| b.allowed + b.denied > 0)
        .collect();
    if busy.is_empty() {
        println!("  no requests");
        return;
    }
    println!("  {:<22} {:>10} {:>10}", "start", "allowed", "denied");
    for b in busy {
        println!("  {:<22} {:>10} {:>10}", b.start, b.allowed, b.denied);
    }
    println!();
    println!(
        "  {:<8} {:<32} {:>10} {:>10}  {:<22} required",
        "method", "route", "allowed", "denied", "last seen"
    );
    for route in &r.routes {
        let name = if route.route.is_empty() {
            "(no route)"
        } else {
            route.route.as_str()
        };
        println!(
            "  {:<8} {:<32} {:>10} {:>10}  {:<22} {}",
            route.method,
            name,
            route.allowed,
            route.denied,
            route.last_seen,
            list(&route.required)
        );
    }
}

/// `keys suggest`.
pub fn suggestion(s: &keyward_app::usage::SuggestionView, json: bool) {
    if json {
        return print_json(s);
    }
    println!(
        "Key {} over the last {}: {} requests.",
        s.key_id, s.window, s.requests
    );
    match s.verdict.as_str() {
        "unused" => println!("Unused: nothing was allowed in that window; consider revoking it."),
        "already_minimal" => println!("Already minimal: it holds only what it used."),
        _ => {
            println!("Narrow it: it holds more than it used.");
            println!("  used scopes:     {}", list(&s.used_scopes));
            println!("  unused grants:   {}", list(&s.unused_grants));
            println!("  suggested scopes: {}", list(&s.suggested.scopes));
            println!("  suggested sets:   {}", list(&s.suggested.permission_sets));
            let mut args = String::new();
            for sc in &s.suggested.scopes {
                args.push_str(&format!(" --scope {sc}"));
            }
            for ps in &s.suggested.permission_sets {
                args.push_str(&format!(" --permission-set {ps}"));
            }
            println!(
                "Roll it narrower with: keyward keys roll {}{args}",
                s.key_id
            );
        }
    }
}

/// `keyward policy show|set`: one line a field, `none` for unset.
pub fn policy(p: &keyward_app::policy::PolicyView, json: bool) {
    if json {
        return print_json(p);
    }
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".to_owned());
    println!("max_key_lifetime     {}", or_none(&p.max_key_lifetime));
    println!("flag_unused_after    {}", or_none(&p.flag_unused_after));
    println!("revoke_unused_after  {}", or_none(&p.revoke_unused_after));
    println!("expiry_warning       {}", list_or_none(&p.expiry_warning));
    println!("on_leak              {}", p.on_leak.as_str());
    match (&p.updated_at, &p.updated_by) {
        (Some(at), Some(by)) => println!("(set {at} by {by})"),
        _ => println!("(never set: the defaults)"),
    }
}

/// `keyward policy run`: what was (or would be) flagged and revoked.
pub fn policy_run(r: &keyward_app::policy::PolicyRun, json: bool) {
    if json {
        return print_json(r);
    }
    let (flag, revoke, expiring, expired) = if r.dry_run {
        (
            "Would flag as unused now",
            "Would revoke as unused",
            "Would warn of expiry",
            "Would announce as expired",
        )
    } else {
        (
            "Flagged as unused now",
            "Revoked as unused",
            "Warned of expiry",
            "Announced as expired",
        )
    };
    for (heading, keys) in [
        ("Unused past the flag", &r.flagged),
        (flag, &r.newly_flagged),
        (revoke, &r.revoked),
        (expiring, &r.expiring),
        (expired, &r.expired),
    ] {
        println!("{heading}: {}", keys.len());
        for k in keys {
            println!(
                "  {}  {}  last used {}",
                k.key_id,
                k.name,
                k.last_used_at.as_deref().unwrap_or("never")
            );
        }
    }
}

/// `keyward webhooks create`: the endpoint and its secret, once.
pub fn webhook_created(w: &keyward_app::webhooks::CreatedWebhook, json: bool) {
    if json {
        return print_json(w);
    }
    println!("Created webhook {} -> {}", w.webhook.id, w.webhook.url);
    println!("Events: {}", w.webhook.events.join(", "));
    println!();
    println!("Signing secret (shown only now; verify `webhook-signature` with it):");
    println!("  {}", w.secret);
}

/// `keyward webhooks list`: one line an endpoint.
pub fn webhooks(list: &[keyward_app::webhooks::WebhookView], json: bool) {
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No webhooks.");
        return;
    }
    for w in list {
        println!(
            "{}  {:<8}  {} pending  {}  [{}]",
            w.id,
            w.status,
            w.pending,
            w.url,
            w.events.join(", ")
        );
    }
}

/// `keyward webhooks delete`.
pub fn webhook_deleted(id: &str, json: bool) {
    if json {
        return print_json(&serde_json::json!({"id": id, "deleted": true}));
    }
    println!("Deleted webhook {id}.");
}

/// `keyward webhooks deliveries`: each event, then its attempts.
pub fn deliveries(page: &keyward_app::webhooks::DeliveriesPage, json: bool) {
    if json {
        return print_json(page);
    }
    if page.deliveries.is_empty() {
        println!("No deliveries.");
    }
    for d in &page.deliveries {
        println!(
            "{}  {:<9}  {}  {}  queued {}",
            d.id,
            d.status,
            d.event,
            d.key_id.as_deref().unwrap_or("-"),
            d.created_at
        );
        for a in &d.attempts {
            let outcome = match (a.status_code, &a.error) {
                (Some(s), None) => format!("{s}"),
                (_, Some(e)) => e.clone(),
                (None, None) => "?".to_owned(),
            };
            println!(
                "    #{} {} by {} in {} ms: {outcome}",
                a.attempt, a.at, a.node, a.duration_ms
            );
        }
    }
    if let Some(before) = page.next_before {
        println!("More: --before {before}");
    }
}

/// A spinner for `keyward scan`: files read and megabytes, on standard
/// error (hidden when it is not a terminal).
pub fn scan_progress() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("scanning: {pos} files, {msg}") {
        bar.set_style(style);
    }
    bar
}

/// `keyward scan`: one line per sighting, then a summary on standard error.
pub fn scan(
    findings: &[keyward_app::leaks::LeakFinding],
    stats: &crate::scan::Stats,
    took: std::time::Duration,
    json: bool,
) {
    use keyward_app::leaks::LeakStatus;
    if json {
        print_json(&findings);
    } else if findings.is_empty() {
        println!("No keys found.");
    } else {
        println!("{:<50} {:<20} {:<8} KEY ID", "WHERE", "KEY", "STATUS");
        for f in findings {
            let status = if f.revoked_now {
                "live → revoked now".to_owned()
            } else {
                f.was.as_str().to_owned()
            };
            println!(
                "{:<50} {:<20} {:<8} {}",
                f.place,
                format!("{}…", f.display_prefix),
                status,
                f.key_id.as_deref().unwrap_or("-")
            );
        }
    }
    let live = findings
        .iter()
        .filter(|f| f.was == LeakStatus::Live)
        .count();
    let secs = took.as_secs_f64().max(1e-3);
    eprintln!(
        "scanned {} files ({:.1} MB) in {:.2} s ({:.0} files/s, {:.1} MB/s); {} skipped as binary{}; {} keys found, {} live",
        stats.files,
        stats.bytes as f64 / 1e6,
        secs,
        stats.files as f64 / secs,
        stats.bytes as f64 / 1e6 / secs,
        stats.binary,
        if stats.unreadable > 0 {
            format!(", {} unreadable", stats.unreadable)
        } else {
            String::new()
        },
        findings.len(),
        live
    );
}
