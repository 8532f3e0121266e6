use super::*;
use proptest::prelude::*;

fn limit(name: &str, requests: u64, per_ms: i64) -> Limit {
    Limit {
        name: name.to_owned(),
        requests,
        per_ms,
    }
}

#[test]
fn limits_are_read_and_refused_by_field() {
    let l = Limit::parse_flag("--limit", "burst=100/1m").unwrap();
    assert_eq!(l, limit("burst", 100, 60_000));
    assert_eq!(l.per(), "1m");
    assert_eq!(l.window_secs(), 60);
    assert_eq!(Limit::new("l", "q", 5, "90s").unwrap().per(), "90s");
    assert_eq!(
        Limit::new("l", "monthly", 100_000, "30d").unwrap().per(),
        "30d"
    );
    for (text, field) in [
        ("burst", "--limit"),
        ("burst=100", "--limit"),
        ("burst=x/1m", "--limit"),
        ("burst=-1/1m", "--limit"),
        ("Burst=1/1m", "--limit.name"),
        ("1burst=1/1m", "--limit.name"),
        ("bu_rst=1/1m", "--limit.name"),
        ("=1/1m", "--limit.name"),
        ("burst=0/1m", "--limit.requests"),
        ("burst=1/500ms", "--limit.per"),
        ("burst=1/1500ms", "--limit.per"),
        ("burst=1/31d", "--limit.per"),
        ("burst=1/0s", "--limit.per"),
        ("burst=1/soon", "--limit.per"),
    ] {
        let e = Limit::parse_flag("--limit", text).unwrap_err();
        assert_eq!(e.field, field, "{text}: {e}");
    }
    assert!(Limit::new("l", &"a".repeat(32), 1, "1s").is_ok());
    assert!(Limit::new("l", &"a".repeat(33), 1, "1s").is_err());
    assert!(Limit::new("l", "a", 1, "1s").is_ok());
    assert!(Limit::new("l", "a", 1, "30d").is_ok());
    assert!(Limit::new("l", "a", MAX_REQUESTS, "1s").is_ok());
    assert_eq!(
        Limit::new("l", "a", MAX_REQUESTS + 1, "1s")
            .unwrap_err()
            .field,
        "l.requests"
    );
}

#[test]
fn a_key_has_at_most_ten_uniquely_named_limits() {
    let ten: Vec<Limit> = (0..10).map(|i| limit(&format!("l{i}"), 1, 1000)).collect();
    assert!(check_limits(&ten).is_ok());
    let mut eleven = ten.clone();
    eleven.push(limit("l10", 1, 1000));
    assert_eq!(check_limits(&eleven).unwrap_err().field, "limits");
    let twice = [
        limit("a", 1, 1000),
        limit("b", 1, 1000),
        limit("a", 2, 2000),
    ];
    assert_eq!(check_limits(&twice).unwrap_err().field, "limits[2].name");
}

#[test]
fn networks_are_read_masked_and_matched() {
    let n = |t: &str| Network::parse("allowed_cidrs[0]", t);
    let v4 = n("203.0.113.0/24").unwrap();
    assert_eq!(v4.to_string(), "203.0.113.0/24");
    // Host bits: an address or a network? Not guessed.
    let e = n("203.0.113.7/24").unwrap_err();
    assert!(e.message.contains("203.0.113.0/24"), "{e}");
    // No client is matched against an IPv4-mapped network.
    assert!(n("::ffff:10.0.0.0/104").is_err());
    assert!(n("::ffff:10.0.0.1").is_err());
    assert!(v4.contains("203.0.113.255".parse().unwrap()));
    assert!(!v4.contains("203.0.114.1".parse().unwrap()));
    // A dual-stack listener sees IPv4 clients as mapped IPv6 addresses.
    assert!(v4.contains("::ffff:203.0.113.9".parse().unwrap()));
    assert!(!v4.contains("2001:db8::1".parse().unwrap()));
    let v6 = n("2001:db8::/32").unwrap();
    assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    assert!(!v6.contains("203.0.113.7".parse().unwrap()));
    let one = n("198.51.100.4").unwrap();
    assert_eq!(one.to_string(), "198.51.100.4/32");
    assert!(one.contains("198.51.100.4".parse().unwrap()));
    assert!(!one.contains("198.51.100.5".parse().unwrap()));
    assert_eq!(n("::1").unwrap().to_string(), "::1/128");
    let all = n("0.0.0.0/0").unwrap();
    assert!(all.contains("8.8.8.8".parse().unwrap()));
    assert!(n("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
    for bad in [
        "",
        "203.0.113.0/33",
        "2001:db8::/129",
        "203.0.113.0/",
        "203.0.113.0/+8",
        "203.0.113.0/-1",
        "203.0.113.0/8/8",
        "203.0.113",
        "203.0.113.0.1/24",
        "fe80::1%eth0/64",
        "example.com/24",
        "203.0.113.0/24x",
    ] {
        let e = n(bad).unwrap_err();
        assert_eq!(e.field, "allowed_cidrs[0]", "{bad}");
    }
    assert!(network_allows(&[], "192.0.2.1".parse().unwrap()));
    assert!(network_allows(&[v4, v6], "2001:db8::1".parse().unwrap()));
    assert!(!network_allows(&[v4, v6], "192.0.2.1".parse().unwrap()));
}

#[test]
fn a_burst_passes_whole_then_waits_for_the_window() {
    let limits = [limit("burst", 3, 10_000)];
    let mut counters = [Counter::default()];
    let t0 = 1_700_000_002_500; // 2.5 s into a 10 s window
    for left in [2, 1, 0] {
        assert_eq!(
            admit(&limits, &mut counters, t0, |_| 0),
            Admission::Allowed {
                tightest: Some(0),
                remaining: left,
                reset_ms: 7_500
            }
        );
    }
    assert_eq!(
        admit(&limits, &mut counters, t0 + 1, |_| 0),
        Admission::Refused {
            index: 0,
            retry_after_ms: 7_499
        }
    );
    assert_eq!(ceil_secs(7_499), 8);
    // The next window admits again.
    assert!(matches!(
        admit(&limits, &mut counters, t0 + 7_500, |_| 0),
        Admission::Allowed { remaining: 2, .. }
    ));
    // Counts from elsewhere in the same window use the room up.
    let mut fresh = [Counter::default()];
    assert!(matches!(
        admit(&limits, &mut fresh, t0, |_| 3),
        Admission::Refused { .. }
    ));
    assert_eq!(fresh[0].used, 0, "a refusal counts nothing");
}

#[test]
fn the_tighter_of_two_limits_refuses_and_neither_counts_it() {
    let limits = [limit("minute", 10, 60_000), limit("second", 2, 1_000)];
    let mut counters = [Counter::default(); 2];
    let t = 1_700_000_000_000;
    assert!(matches!(
        admit(&limits, &mut counters, t, |_| 0),
        Admission::Allowed {
            tightest: Some(1),
            remaining: 1,
            ..
        }
    ));
    assert!(matches!(
        admit(&limits, &mut counters, t, |_| 0),
        Admission::Allowed { remaining: 0, .. }
    ));
    assert_eq!(
        admit(&limits, &mut counters, t, |_| 0),
        Admission::Refused {
            index: 1,
            retry_after_ms: 1_000
        }
    );
    assert_eq!(counters[0].used, 2, "the refused request counted nowhere");
    // A clock that steps back does not reopen a window.
    assert!(matches!(
        admit(&limits, &mut counters, t - 5_000, |_| 0),
        Admission::Refused { .. }
    ));
}

/// The semantics, naively: every admitted request's time, kept forever; a
/// request is admitted when, for every limit, fewer than `requests`
/// admitted requests fall in its (epoch-aligned) window. Times never go
/// back here: the counter's handling of a clock stepping back is its own
/// rule, tested above.
fn reference(limits: &[Limit], admitted: &[i64], now: i64) -> bool {
    limits.iter().all(|l| {
        let w = window_of(now, l.per_ms);
        let used = admitted
            .iter()
            .filter(|t| window_of(**t, l.per_ms) == w)
            .count();
        (used as u64) < l.requests
    })
}

proptest! {
    #[test]
    fn counters_admit_exactly_what_the_reference_admits(
        specs in prop::collection::vec((1u64..6, 1i64..8), 1..4),
        steps in prop::collection::vec(0i64..2_500, 1..200),
        start in 0i64..10_000_000,
    ) {
        let limits: Vec<Limit> = specs
            .iter()
            .enumerate()
            .map(|(i, (requests, secs))| limit(&format!("l{i}"), *requests, secs * 1000))
            .collect();
        let mut counters = vec![Counter::default(); limits.len()];
        let mut admitted = Vec::new();
        let mut now = start;
        for step in steps {
            now += step;
            let expected = reference(&limits, &admitted, now);
            let got = admit(&limits, &mut counters, now, |_| 0);
            prop_assert_eq!(matches!(got, Admission::Allowed { .. }), expected, "at {}", now);
            match got {
                Admission::Allowed { tightest: Some(i), remaining, reset_ms } => {
                    admitted.push(now);
                    let l = &limits[i];
                    let w = window_of(now, l.per_ms);
                    let used = admitted.iter().filter(|t| window_of(**t, l.per_ms) == w).count() as u64;
                    prop_assert_eq!(remaining, l.requests - used);
                    prop_assert!(reset_ms > 0 && reset_ms <= l.per_ms);
                }
                Admission::Allowed { tightest: None, .. } => prop_assert!(false, "limits present"),
                Admission::Refused { index, retry_after_ms } => {
                    // Waiting that long is enough for the refusing limit.
                    let l = &limits[index];
                    prop_assert!(window_of(now + retry_after_ms, l.per_ms) > window_of(now, l.per_ms));
                    prop_assert!(window_of(now + retry_after_ms - 1, l.per_ms) == window_of(now, l.per_ms));
                }
            }
        }
    }

    #[test]
    fn no_window_ever_admits_more_than_its_limit(
        requests in 1u64..20,
        secs in 1i64..5,
        steps in prop::collection::vec(0i64..300, 1..400),
    ) {
        let limits = [limit("l", requests, secs * 1000)];
        let mut counters = [Counter::default()];
        let mut per_window = std::collections::HashMap::new();
        let mut now = 0;
        for step in steps {
            now += step;
            if matches!(admit(&limits, &mut counters, now, |_| 0), Admission::Allowed { .. }) {
                *per_window.entry(window_of(now, secs * 1000)).or_insert(0u64) += 1;
            }
        }
        prop_assert!(per_window.values().all(|n| *n <= requests));
    }
}
