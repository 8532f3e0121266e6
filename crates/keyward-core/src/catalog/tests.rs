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
