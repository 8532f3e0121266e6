//! The fleet catalog against the seed's scope table, and authorize() over all
//! of it: every scope's endpoints allowed, every neighbour denied.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_core::{AuthFailure, Catalog, KeyAccess, Outcome, ScopeSet, ScopeStatus};

/// The "Available Scopes" table of seeds/002, word for word.
const SEED_TABLE: &[(&str, &str, &str)] = &[
    (
        "vehicles:read",
        "Read vehicles and legacy vehicle-adjacent resources",
        "GET /vehicles, GET /vehicles/{id}",
    ),
    (
        "vehicles:write",
        "Mutate vehicles and legacy vehicle-adjacent resources",
        "POST, PUT, DELETE /vehicles*",
    ),
    (
        "vehicle-fields:read",
        "Read custom vehicle fields and field-derived vehicle statuses",
        "GET /vehicle-fields, GET /vehicle-fields/{id}/vehicles",
    ),
    (
        "vehicle-groups:read",
        "Read vehicle groups",
        "GET /vehicle-groups, GET /vehicle-groups/{id}",
    ),
    (
        "vehicle-groups:write",
        "Mutate vehicle groups",
        "POST, PUT, DELETE /vehicle-groups*",
    ),
    (
        "inspections:read",
        "Read inspections and legacy template reads",
        "GET /inspections, GET /inspections/{id}",
    ),
    (
        "inspections:write",
        "Mutate inspections and legacy template writes",
        "POST, PATCH, DELETE /inspections*",
    ),
    (
        "inspection-templates:read",
        "Read inspection templates",
        "GET /inspection-templates, GET /inspection-templates/{id}",
    ),
    (
        "inspection-templates:write",
        "Mutate inspection templates",
        "POST, PUT, DELETE /inspection-templates*",
    ),
    (
        "damages:read",
        "Read damages",
        "GET /damages, GET /damages/{id}",
    ),
    (
        "damages:write",
        "Mutate damages",
        "POST, PUT, DELETE /damages*",
    ),
    (
        "driver-assignments:read",
        "Read driver assignments",
        "GET /driver-assignments, GET /driver-assignments/{id}",
    ),
    (
        "driver-assignments:write",
        "Mutate driver assignments",
        "POST, PATCH, DELETE /driver-assignments*",
    ),
];

const SEED_FUTURE: &[(&str, ScopeStatus, &str)] = &[
    (
        "reports:read",
        ScopeStatus::Planned,
        "Access custom reports",
    ),
    (
        "webhooks:manage",
        ScopeStatus::Planned,
        "Configure webhooks",
    ),
    ("users:read", ScopeStatus::UnderReview, "Read user data"),
    (
        "analytics:read",
        ScopeStatus::UnderReview,
        "Access analytics data",
    ),
];

const SEED_HIERARCHY: &[(&str, &str)] = &[
    ("vehicles:write", "vehicles:read"),
    ("vehicles:read", "vehicle-fields:read"),
    ("vehicle-groups:write", "vehicle-groups:read"),
    ("inspection-templates:write", "inspection-templates:read"),
    ("inspections:write", "inspections:read"),
    ("damages:write", "damages:read"),
    ("driver-assignments:write", "driver-assignments:read"),
];

fn fleet() -> Catalog {
    Catalog::fleet().unwrap()
}

fn set(c: &Catalog, names: &[&str]) -> ScopeSet {
    c.scope_set(names).unwrap()
}

/// `POST, PUT, DELETE /vehicles*` → [(POST, /vehicles*), (PUT, …), …].
fn endpoints(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for item in text.split(", ") {
        match item.split_once(' ') {
            Some((m, p)) => {
                pending.push(m.to_owned());
                out.extend(pending.drain(..).map(|m| (m, p.to_owned())));
            }
            None => pending.push(item.to_owned()),
        }
    }
    out
}

/// Concrete request paths a template covers.
fn examples(template: &str) -> Vec<String> {
    let filled = template.replace("{id}", "42");
    match filled.strip_suffix('*') {
        Some(stem) => vec![
            stem.to_owned(),
            format!("{stem}/42"),
            format!("{stem}/42/photos"),
        ],
        None => vec![filled],
    }
}

#[test]
fn catalog_matches_the_seed_word_for_word() {
    let c = fleet();
    let own: Vec<_> = c.scopes().iter().filter(|s| !s.is_reserved()).collect();
    let available: Vec<_> = own
        .iter()
        .filter(|s| s.status() == ScopeStatus::Available)
        .collect();
    assert_eq!(available.len(), SEED_TABLE.len());
    for ((name, description, endpoints), scope) in SEED_TABLE.iter().zip(available) {
        assert_eq!(scope.name(), *name);
        assert_eq!(scope.description(), *description, "{name}");
        assert_eq!(scope.endpoints(), Some(*endpoints), "{name}");
    }
    for (name, status, description) in SEED_FUTURE {
        let s = c.scope(c.scope_id(name).unwrap());
        assert_eq!(
            (s.status(), s.description()),
            (*status, *description),
            "{name}"
        );
    }
    for (from, to) in SEED_HIERARCHY {
        let s = c.scope(c.scope_id(from).unwrap());
        assert!(c.names(s.closure()).contains(to), "{from} → {to}");
    }
    // vehicles:write → vehicles:read → vehicle-fields:read, transitively.
    let w = c.scope(c.scope_id("vehicles:write").unwrap());
    assert_eq!(
        c.names(w.closure()),
        ["vehicles:read", "vehicles:write", "vehicle-fields:read"]
    );
    let presets: Vec<(&str, Vec<&str>)> = c
        .presets()
        .iter()
        .map(|p| (p.name(), p.scopes().iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        presets,
        [
            (
                "Read-Only Integration",
                vec![
                    "vehicles:read",
                    "vehicle-fields:read",
                    "vehicle-groups:read",
                    "inspection-templates:read",
                    "inspections:read",
                    "damages:read",
                    "driver-assignments:read"
                ]
            ),
            (
                "Inspection Submission",
                vec![
                    "vehicles:read",
                    "inspection-templates:read",
                    "inspections:write"
                ]
            ),
            (
                "Full Fleet Management",
                vec![
                    "vehicles:write",
                    "vehicle-groups:write",
                    "inspection-templates:write",
                    "inspections:write",
                    "damages:write",
                    "driver-assignments:write"
                ]
            ),
        ]
    );
}

#[test]
fn every_endpoint_allowed_for_its_scope_and_denied_to_every_neighbour() {
    let c = fleet();
    let mut checked = 0;
    for (name, _, text) in SEED_TABLE {
        let needed = c.scope_id(name).unwrap();
        for (method, template) in endpoints(text) {
            for path in examples(&template) {
                // The scope alone, and every scope that implies it, allow.
                for holder in c
                    .scopes()
                    .iter()
                    .filter(|s| s.status() == ScopeStatus::Available)
                {
                    let key = KeyAccess::new(&c, set(&c, &[holder.name()]));
                    let d = c.authorize(Ok(&key), 0, &method, &path);
                    let route = d.route.map(|r| c.route(r).template().to_owned());
                    assert_eq!(route.as_deref(), Some(template.as_str()), "{method} {path}");
                    if holder.closure().contains(needed) {
                        assert_eq!(
                            d.outcome,
                            Outcome::Allowed,
                            "{} on {method} {path}",
                            holder.name()
                        );
                    } else {
                        assert_eq!(
                            d.outcome,
                            Outcome::MissingScopes,
                            "{} on {method} {path}",
                            holder.name()
                        );
                        assert_eq!(c.names(d.missing), [*name]);
                        assert_eq!(c.names(d.granted), [holder.name()]);
                        assert_eq!((d.status(), d.code()), (403, Some("FORBIDDEN")));
                    }
                    checked += 1;
                }
                // Everything but this scope (and what implies it) is refused.
                let others: ScopeSet = c
                    .scopes()
                    .iter()
                    .filter(|s| {
                        s.status() == ScopeStatus::Available && !s.closure().contains(needed)
                    })
                    .map(|s| c.scope_id(s.name()).unwrap())
                    .collect();
                let d = c.authorize(Ok(&KeyAccess::new(&c, others)), 0, &method, &path);
                assert_eq!(
                    d.outcome,
                    Outcome::MissingScopes,
                    "all-but on {method} {path}"
                );
            }
        }
    }
    assert!(checked > 13 * 2 * 20, "{checked}");
}

#[test]
fn unrouted_requests_and_check_order() {
    let c = fleet();
    let key = KeyAccess::new(&c, c.available_scopes());
    let check = |method: &str, path: &str, outcome: Outcome| {
        assert_eq!(
            c.authorize(Ok(&key), 0, method, path).outcome,
            outcome,
            "{method} {path}"
        );
    };
    check("GET", "/vehicles/42/photos", Outcome::NoRoute);
    check("PATCH", "/vehicles/42", Outcome::NoRoute);
    check("PUT", "/inspections/1", Outcome::NoRoute);
    check("GET", "/unknown", Outcome::NoRoute);
    check("GET", "/", Outcome::NoRoute);
    check("HEAD", "/damages", Outcome::Allowed);
    // Authentication comes before routing.
    let revoked = KeyAccess {
        revoked_at: Some(5),
        ..key
    };
    let expired = KeyAccess {
        expires_at: Some(10),
        ..key
    };
    assert_eq!(
        c.authorize(Ok(&revoked), 0, "GET", "/unknown").outcome,
        Outcome::Unauthenticated(AuthFailure::Revoked)
    );
    assert_eq!(
        c.authorize(Ok(&expired), 10, "GET", "/vehicles").outcome,
        Outcome::Unauthenticated(AuthFailure::Expired)
    );
    assert_eq!(
        c.authorize(Ok(&expired), 9, "GET", "/vehicles").outcome,
        Outcome::Allowed
    );
    let d = c.authorize(Err(AuthFailure::Unknown), 0, "GET", "/vehicles");
    assert_eq!(
        (d.status(), d.code(), d.reason()),
        (401, Some("UNAUTHORIZED"), "unknown")
    );
    // Scope-list checks, as /v1/verify does them.
    let read = KeyAccess::new(&c, set(&c, &["vehicles:read"]));
    let d = c.authorize_scopes(
        Ok(&read),
        0,
        set(&c, &["vehicle-fields:read", "damages:read"]),
    );
    assert_eq!(c.names(d.missing), ["damages:read"]);
}

#[test]
fn reserved_scopes_exist_with_their_hierarchy() {
    let c = fleet();
    let write = c.scope(c.scope_id("keyward-api-keys:write").unwrap());
    assert_eq!(
        c.names(write.closure()),
        [
            "keyward-api-keys:verify",
            "keyward-api-keys:read",
            "keyward-api-keys:write"
        ]
    );
    let verify = c.scope(c.scope_id("keyward-api-keys:verify").unwrap());
    assert!(!verify.is_write() && verify.is_reserved());
    assert!(c.permission_set("keyward-audit:read").is_some());
}

#[test]
fn transit_catalog_is_valid_and_broad() {
    let text = include_str!("../../../catalogs/transit.toml");
    let c = Catalog::parse("transit.toml", text).unwrap_or_else(|e| panic!("{e}"));
    let defined: Vec<_> = c
        .permission_sets()
        .iter()
        .filter(|s| !s.is_single_scope())
        .collect();
    assert!(defined.iter().filter(|s| s.is_write()).count() >= 15);
    let areas: std::collections::BTreeSet<&str> = defined.iter().map(|s| s.area()).collect();
    for area in [
        "Trips",
        "Riders",
        "Drivers",
        "Vehicles",
        "Zones",
        "Analytics",
        "Payments",
        "Settings",
    ] {
        assert!(areas.contains(area), "{area}");
    }
    assert!(!c.routes().is_empty());
}
