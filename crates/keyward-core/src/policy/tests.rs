use super::*;

fn text(json: &str) -> PolicyText {
    serde_json::from_str(json).unwrap()
}

fn fields(json: &str) -> Vec<&'static str> {
    text(json)
        .check()
        .unwrap_err()
        .into_iter()
        .map(|p| p.field)
        .collect()
}

#[test]
fn an_empty_policy_is_the_default() {
    let p = text("{}").check().unwrap();
    assert_eq!(p, Policy::default());
    assert_eq!(p.on_leak, OnLeak::Revoke);
    assert_eq!(p.expiry_for(None, 1_000), Ok(None));
    assert_eq!(p.expiry_for(Some(5), 1_000), Ok(Some(5)));
}

#[test]
fn a_full_policy_reads_and_sorts_its_warnings() {
    let p = text(
        r#"{"max_key_lifetime":"365d","flag_unused_after":"90d","revoke_unused_after":"180d",
            "expiry_warning":["1d","14d"],"on_leak":"flag"}"#,
    )
    .check()
    .unwrap();
    assert_eq!(p.max_key_lifetime_ms, Some(365 * DAY_MS));
    assert_eq!(p.flag_unused_after_ms, Some(90 * DAY_MS));
    assert_eq!(p.revoke_unused_after_ms, Some(180 * DAY_MS));
    assert_eq!(p.expiry_warning_ms, vec![14 * DAY_MS, DAY_MS]);
    assert_eq!(p.on_leak, OnLeak::Flag);
}

#[test]
fn every_bad_field_is_named() {
    let cases: &[(&str, &[&str])] = &[
        (r#"{"max_key_lifetime":"forever"}"#, &["max_key_lifetime"]),
        (r#"{"max_key_lifetime":"10m"}"#, &["max_key_lifetime"]),
        (r#"{"max_key_lifetime":"3651d"}"#, &["max_key_lifetime"]),
        (r#"{"flag_unused_after":"1h"}"#, &["flag_unused_after"]),
        (r#"{"revoke_unused_after":"90d"}"#, &["revoke_unused_after"]),
        (
            r#"{"flag_unused_after":"90d","revoke_unused_after":"90d"}"#,
            &["revoke_unused_after"],
        ),
        (
            r#"{"flag_unused_after":"90d","revoke_unused_after":"30d"}"#,
            &["revoke_unused_after"],
        ),
        (r#"{"expiry_warning":["1d","24h"]}"#, &["expiry_warning"]),
        (r#"{"expiry_warning":["0s"]}"#, &["expiry_warning"]),
        (
            r#"{"expiry_warning":["1d","2d","3d","4d","5d","6d"]}"#,
            &["expiry_warning"],
        ),
        (
            r#"{"max_key_lifetime":"x","flag_unused_after":"y","expiry_warning":["z"]}"#,
            &["max_key_lifetime", "flag_unused_after", "expiry_warning"],
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(&fields(json), expected, "{json}");
    }
}

#[test]
fn unknown_fields_and_leak_actions_do_not_parse() {
    assert!(serde_json::from_str::<PolicyText>(r#"{"max_lifetime":"1d"}"#).is_err());
    assert!(serde_json::from_str::<PolicyText>(r#"{"on_leak":"ignore"}"#).is_err());
}

#[test]
fn the_lifetime_bounds_an_expiry_or_supplies_one() {
    let p = text(r#"{"max_key_lifetime":"30d"}"#).check().unwrap();
    let now = 1_000_000;
    assert_eq!(p.expiry_for(None, now), Ok(Some(now + 30 * DAY_MS)));
    assert_eq!(
        p.expiry_for(Some(now + DAY_MS), now),
        Ok(Some(now + DAY_MS))
    );
    assert_eq!(
        p.expiry_for(Some(now + 31 * DAY_MS), now),
        Err(ExpiryExceedsPolicy {
            latest: now + 30 * DAY_MS
        })
    );
}
