use super::*;
use proptest::prelude::*;

fn fleet() -> Catalog {
    Catalog::fleet().unwrap()
}

fn transit() -> Catalog {
    Catalog::parse(
        "transit.toml",
        include_str!("../../../../catalogs/transit.toml"),
    )
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The required scopes of `method path` (the route must exist).
fn route(c: &Catalog, method: &str, path: &str) -> ScopeSet {
    let id = c
        .match_route(method, path)
        .unwrap_or_else(|| panic!("no route for {method} {path}"));
    c.route(id).required()
}

struct Case {
    catalog: fn() -> Catalog,
    legacy: bool,
    scopes: &'static [&'static str],
    sets: &'static [&'static str],
    observed: &'static [(&'static str, &'static str)],
    suggested: &'static [&'static str],
    kept: &'static [&'static str],
    unused: &'static [&'static str],
    verdict: Verdict,
}

#[test]
fn suggestions_over_the_fleet_and_transit_catalogs() {
    let cases = [
        // The hierarchy: write, but only ever reads the list.
        Case {
            catalog: fleet,
            legacy: false,
            scopes: &["vehicles:write"],
            sets: &[],
            observed: &[("GET", "/vehicles"), ("GET", "/vehicles/7")],
            suggested: &["vehicles:read"],
            kept: &[],
            unused: &["vehicles:write"],
            verdict: Verdict::Narrow,
        },
        // Exactly what it uses.
        Case {
            catalog: fleet,
            legacy: false,
            scopes: &["vehicles:read"],
            sets: &[],
            observed: &[("GET", "/vehicles")],
            suggested: &["vehicles:read"],
            kept: &[],
            unused: &[],
            verdict: Verdict::AlreadyMinimal,
        },
        // A scope implied by another used one is left out.
        Case {
            catalog: fleet,
            legacy: false,
            scopes: &["vehicles:read", "damages:read"],
            sets: &[],
            observed: &[("GET", "/vehicles"), ("GET", "/vehicle-fields")],
            suggested: &["vehicles:read"],
            kept: &[],
            unused: &["damages:read"],
            verdict: Verdict::Narrow,
        },
        // A legacy key that used three routes: exactly their scopes.
        Case {
            catalog: fleet,
            legacy: true,
            scopes: &[],
            sets: &[],
            observed: &[
                ("GET", "/vehicles"),
                ("POST", "/inspections"),
                ("GET", "/damages"),
            ],
            suggested: &["vehicles:read", "inspections:write", "damages:read"],
            kept: &[],
            unused: &[],
            verdict: Verdict::Narrow,
        },
        // A permission set all of whose scopes were used is kept by name.
        Case {
            catalog: transit,
            legacy: false,
            scopes: &[],
            sets: &["riders-view"],
            observed: &[("GET", "/riders"), ("GET", "/trips")],
            suggested: &[],
            kept: &["riders-view"],
            unused: &[],
            verdict: Verdict::AlreadyMinimal,
        },
        // Partly used: its used scopes instead.
        Case {
            catalog: transit,
            legacy: false,
            scopes: &[],
            sets: &["riders-view"],
            observed: &[("GET", "/trips")],
            suggested: &["trips:read"],
            kept: &[],
            unused: &["riders-view"],
            verdict: Verdict::Narrow,
        },
        // Single-scope sets of the fleet catalog (named as their scope).
        Case {
            catalog: fleet,
            legacy: false,
            scopes: &[],
            sets: &["vehicles:read", "damages:read"],
            observed: &[("GET", "/vehicles")],
            suggested: &[],
            kept: &["vehicles:read"],
            unused: &["damages:read"],
            verdict: Verdict::Narrow,
        },
        // Unused.
        Case {
            catalog: fleet,
            legacy: false,
            scopes: &["vehicles:read"],
            sets: &["damages:read"],
            observed: &[],
            suggested: &[],
            kept: &[],
            unused: &["vehicles:read", "damages:read"],
            verdict: Verdict::Unused,
        },
        // Transit: import implies create implies read; only creates.
        Case {
            catalog: transit,
            legacy: false,
            scopes: &["trips:import"],
            sets: &[],
            observed: &[("POST", "/trips"), ("GET", "/trips/9")],
            suggested: &["trips:create"],
            kept: &[],
            unused: &["trips:import"],
            verdict: Verdict::Narrow,
        },
        // Transit: single-scope sets kept by name, the unused one dropped.
        Case {
            catalog: transit,
            legacy: false,
            scopes: &[],
            sets: &["trips-view", "trips-edit", "trips-cancel"],
            observed: &[("GET", "/trips"), ("PATCH", "/trips/4")],
            suggested: &[],
            kept: &["trips-view", "trips-edit"],
            unused: &["trips-cancel"],
            verdict: Verdict::Narrow,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let c = (case.catalog)();
        let observed: Vec<ScopeSet> = case.observed.iter().map(|(m, p)| route(&c, m, p)).collect();
        let s = c.suggest(
            case.legacy,
            &strings(case.scopes),
            &strings(case.sets),
            observed,
        );
        let mut suggested = c.names(s.scopes);
        suggested.sort_unstable();
        let mut expected = case.suggested.to_vec();
        expected.sort_unstable();
        assert_eq!(suggested, expected, "case {i}: suggested scopes");
        assert_eq!(s.permission_sets, strings(case.kept), "case {i}: kept sets");
        if !case.legacy {
            assert_eq!(s.unused_grants, strings(case.unused), "case {i}: unused");
        }
        assert_eq!(s.verdict, case.verdict, "case {i}: verdict");
    }
}

#[test]
fn a_legacy_key_lists_every_scope_it_never_used() {
    let c = fleet();
    let s = c.suggest(true, &[], &[], [route(&c, "GET", "/vehicles")]);
    assert_eq!(c.names(s.scopes), ["vehicles:read"]);
    // It held everything; all but vehicles:read and what that implies go.
    assert_eq!(
        s.unused_grants.len(),
        c.available_scopes().len() - c.closure(s.scopes).len()
    );
    assert!(!s.unused_grants.iter().any(|n| n == "vehicles:read"));
    assert!(!s.unused_grants.iter().any(|n| n == "vehicle-fields:read"));
}

#[test]
fn a_route_that_now_requires_more_than_the_key_holds_suggests_no_more() {
    let c = fleet();
    let read = c.scope_set(&["vehicles:read"]).unwrap();
    let write = c.scope_set(&["vehicles:write"]).unwrap();
    let s = c.suggest(
        false,
        &strings(&["vehicles:read"]),
        &[],
        [read.union(&write)],
    );
    assert_eq!(c.names(s.scopes), ["vehicles:read"]);
    assert_eq!(s.verdict, Verdict::AlreadyMinimal);
}

proptest! {
    /// For any key of the fleet or transit catalog and any requests it was
    /// allowed,
    /// the suggestion allows every one of them and holds nothing the key
    /// does not.
    #[test]
    fn the_suggestion_allows_what_was_seen_and_never_more_than_the_key(
        granted in proptest::collection::vec(0usize..64, 0..6),
        sets in proptest::collection::vec(0usize..8, 0..3),
        picks in proptest::collection::vec(0usize..256, 0..12),
        legacy in proptest::bool::ANY,
        on_transit in proptest::bool::ANY,
    ) {
        let c = if on_transit { transit() } else { fleet() };
        let names: Vec<String> = c.scopes().iter().filter(|s| !s.is_reserved()).map(|s| s.name().to_owned()).collect();
        let scopes: Vec<String> = granted.iter().map(|i| names[i % names.len()].clone()).collect();
        let set_names: Vec<String> = sets
            .iter()
            .map(|i| c.permission_sets()[i % c.permission_sets().len()].id().to_owned())
            .collect();
        let (_, holds, _) = c.key_holdings(
            legacy,
            scopes.iter().map(String::as_str),
            set_names.iter().map(String::as_str),
        );
        // Requests the key was allowed: routes whose required scopes it holds.
        let allowed: Vec<ScopeSet> = c
            .routes()
            .iter()
            .map(|r| r.required())
            .filter(|req| req.is_subset(&holds))
            .collect();
        let observed: Vec<ScopeSet> = if allowed.is_empty() {
            Vec::new()
        } else {
            picks.iter().map(|i| allowed[i % allowed.len()]).collect()
        };
        let s = c.suggest(legacy, &scopes, &set_names, observed.clone());
        for req in &observed {
            prop_assert!(req.is_subset(&s.effective), "an observed request is not allowed");
        }
        prop_assert!(s.effective.is_subset(&holds), "broader than the key");
        let by_grants = c.closure(s.scopes.union(&s.permission_sets.iter().fold(
            ScopeSet::EMPTY,
            |acc, n| acc.union(&c.permission_set(n).unwrap().scope_set()),
        )));
        prop_assert_eq!(by_grants, s.effective);
        // Minimal: no suggested scope is implied by another one.
        for a in s.scopes.iter() {
            for b in s.scopes.iter() {
                prop_assert!(a == b || !c.scope(b).closure().contains(a));
            }
        }
        if observed.is_empty() {
            prop_assert_eq!(s.verdict, Verdict::Unused);
        }
    }
}
