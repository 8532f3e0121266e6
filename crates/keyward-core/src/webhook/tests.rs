use super::*;

#[test]
fn signature_matches_the_standard_webhooks_vector() {
    // The example of the Standard Webhooks specification.
    let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
    assert_eq!(
        sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

#[test]
fn secrets_round_trip() {
    let text = secret_text(&[7; 24]);
    assert!(text.starts_with("whsec_"));
    assert_eq!(signing_key(&text).expect("key"), vec![7; 24]);
    assert_eq!(signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
    assert_eq!(signing_key("whsec_!!"), None);
}

#[test]
fn events_are_checked_and_deduplicated() {
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        check_events(&names(&["key.revoked", "key.created", "key.revoked"])),
        Ok(vec!["key.revoked", "key.created"])
    );
    assert_eq!(
        check_events(&names(&[
            "key.created",
            "key.deleted",
            "KEY.CREATED",
            "key.*"
        ])),
        Err(names(&["key.deleted", "KEY.CREATED", "key.*"]))
    );
    assert!(EVENTS.iter().all(|e| is_event(e)));
    assert!(!is_event("gateway.request"));
}

#[test]
fn urls_are_parsed() {
    let u = check_url("HTTPS://Hooks.Example.COM/in?x=1").expect("url");
    assert_eq!(
        u,
        WebhookUrl {
            https: true,
            host: "hooks.example.com".into(),
            port: 443,
            path_and_query: "/in?x=1".into(),
            ip: None,
        }
    );
    let u = check_url("http://example.com:8080").expect("url");
    assert_eq!((u.port, u.path_and_query.as_str()), (8080, "/"));
    let u = check_url("http://example.com?q").expect("url");
    assert_eq!(u.path_and_query, "/?q");
    let u = check_url("http://[::1]:9000/x").expect("url");
    assert_eq!(
        (u.host.as_str(), u.ip),
        ("[::1]", Some("::1".parse().expect("ip")))
    );
    let u = check_url("http://127.0.0.1/").expect("url");
    assert_eq!(u.ip, Some("127.0.0.1".parse().expect("ip")));
}

#[test]
fn bad_urls_are_refused_by_rule() {
    for (url, want) in [
        ("ftp://example.com/", UrlProblem::Scheme),
        ("file:///etc/passwd", UrlProblem::Scheme),
        ("example.com/hook", UrlProblem::Scheme),
        ("javascript:alert(1)", UrlProblem::Scheme),
        ("https://user:pw@example.com/", UrlProblem::Credentials),
        ("https://user@example.com/", UrlProblem::Credentials),
        ("https://example.com@evil.test/", UrlProblem::Credentials),
    ] {
        assert_eq!(check_url(url), Err(want), "{url}");
    }
    for url in [
        "https://exa mple.com/",
        "https://example.com/\n",
        "https://exämple.com/",
        "https://example.com/#frag",
        "https://example.com\\@evil.test/",
        "https:///path",
        "https://:443/",
        "https://example.com:0/",
        "https://example.com:65536/",
        "https://example.com:+80/",
        "https://example.com:/",
        "https://[::1/",
        "https://[zz]/",
        "https://[::1]x/",
        "https://2130706433/",
        "https://0x7f.1/",
        "https://127.1/",
        "https://017700000001/",
        "https://example..com/",
        "https://exa_mple.com/",
    ] {
        assert!(
            matches!(check_url(url), Err(UrlProblem::Malformed(_))),
            "{url}: {:?}",
            check_url(url)
        );
    }
    let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
    assert!(matches!(check_url(&long), Err(UrlProblem::Malformed(_))));
}

#[test]
fn only_public_addresses_are_public() {
    for ip in [
        "0.0.0.0",
        "10.1.2.3",
        "127.0.0.1",
        "127.255.0.9",
        "100.64.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.51.100.2",
        "203.0.113.9",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "fc00::1",
        "fd12::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "2001::1",
        "100::1",
    ] {
        assert!(!is_public(ip.parse().expect(ip)), "{ip} counted as public");
    }
    for ip in [
        "1.1.1.1",
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "93.184.216.34",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::",
        "2a00:1450::1",
    ] {
        assert!(is_public(ip.parse().expect(ip)), "{ip} counted as private");
    }
}

#[test]
fn retries_back_off_to_an_hour() {
    let delays: Vec<i64> = (1..=12).map(retry_delay_ms).collect();
    assert_eq!(&delays[..4], [5_000, 10_000, 20_000, 40_000]);
    assert_eq!(delays[11], MAX_RETRY_MS);
    assert_eq!(retry_delay_ms(0), FIRST_RETRY_MS);
    assert_eq!(retry_delay_ms(i64::MAX), MAX_RETRY_MS);
    // About thirty attempts in the day before an endpoint is disabled.
    let (mut t, mut n) = (0, 0);
    while t < DISABLE_AFTER_MS {
        n += 1;
        t += retry_delay_ms(n);
    }
    assert!((25..40).contains(&n), "{n}");
}
