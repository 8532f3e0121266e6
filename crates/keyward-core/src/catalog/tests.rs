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

/// The digest tells catalogs apart by their exact text (SPEC §13): the same
/// text gives the same digest, one changed byte another.
#[test]
fn the_digest_is_of_the_exact_text() {
    let a = Catalog::fleet().unwrap();
    let b = Catalog::parse("copy.toml", FLEET_TOML).unwrap();
    assert_eq!(a.sha256(), b.sha256());
    assert_eq!(a.sha256_hex().len(), 64);
    assert!(
        a.sha256_hex()
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let edited = format!("{FLEET_TOML}\n# a comment\n");
    let c = Catalog::parse("edited.toml", &edited).unwrap();
    assert_ne!(a.sha256(), c.sha256());
}

/// A scope announced as planned or under review that a new version makes
/// available is named, once; one available in both, or new, is not.
#[test]
fn scopes_made_available_are_the_announced_ones() {
    let old = Catalog::fleet().unwrap();
    let text = FLEET_TOML
        .replacen(
            "name = \"reports:read\"\ndescription = \"Access custom reports\"\narea = \"Reports\"\nstatus = \"planned\"",
            "name = \"reports:read\"\ndescription = \"Access custom reports\"\narea = \"Reports\"\nstatus = \"available\"",
            1,
        )
        .replacen(
            "name = \"users:read\"\ndescription = \"Read user data\"\narea = \"Users\"\nstatus = \"under-review\"",
            "name = \"users:read\"\ndescription = \"Read user data\"\narea = \"Users\"\nstatus = \"available\"",
            1,
        );
    let new = Catalog::parse("new.toml", &text).unwrap();
    let made: Vec<&str> = new
        .scopes_made_available(&old)
        .iter()
        .map(|s| s.name())
        .collect();
    assert_eq!(made, ["reports:read", "users:read"]);
    assert!(old.scopes_made_available(&old).is_empty());
    assert!(
        old.scopes_made_available(&new).is_empty(),
        "made planned again: not announced"
    );
}
