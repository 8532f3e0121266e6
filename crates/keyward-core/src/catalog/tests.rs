use super::*;

#[test]
fn fleet_catalog_compiles() {
    let c = Catalog::fleet().unwrap();
    assert_eq!(c.key_prefix(), "insp");
    assert_eq!(c.gateway_prefix(), "/api/third-party/v1");
    let own: Vec<&Scope> = c.scopes().iter().filter(|s| !s.is_reserved()).collect();
    assert_eq!(own.len(), 17);
    assert_eq!(
        own.iter()
            .filter(|s| s.status() == ScopeStatus::Available)
            .count(),
        13
    );
    assert_eq!(c.presets().len(), 3);
}

#[test]
fn scope_sets_by_name() {
    let c = Catalog::fleet().unwrap();
    let set = c
        .scope_set(&["vehicles:read", "keyward-api-keys:verify"])
        .unwrap();
    assert_eq!(c.names(set), ["vehicles:read", "keyward-api-keys:verify"]);
    assert_eq!(c.scope_set(&[]), Some(ScopeSet::EMPTY));
    assert_eq!(c.scope_set(&["vehicles:read", "vehicles:fly"]), None);
}
