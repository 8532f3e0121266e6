//! Limits shared by two nodes on one real PostgreSQL (SPEC §8, issue 17):
//! the requests accepted in a window stay within 10 % of the limit with
//! the load split 50/50, 90/10 and 100/0, and a node cut off from the database
//! (through a TCP proxy of the test's own) keeps enforcing its share.

use crate::harness::{Kw, Server, Upstream, heavy, req, until};
use crate::isolation::{PgProxy, postgres_addr};
use crate::upstream_flag;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sleeps until 150 ms into the next window of `secs` seconds.
fn start_of_window(secs: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let ms = u64::try_from(now.as_millis()).unwrap();
    let into = ms % (secs * 1000);
    std::thread::sleep(Duration::from_millis(secs * 1000 - into + 150));
    Duration::from_millis(secs * 1000 - 400)
}

fn health(node: &Server) -> Value {
    req("GET", "/healthz").send(node).json()
}

/// Waits until each node shares limits and counts two nodes.
fn both_present(a: &Server, b: &Server) {
    for node in [a, b] {
        until(Duration::from_secs(5), "both nodes present", || {
            let h = health(node);
            h["limits"]["mode"] == "shared" && h["limits"]["nodes"] == 2
        });
    }
}

/// Offers `key` far more than its limit for `for_` from 6 threads, `share_a`
/// of the requests (in tenths) to node `a`; returns the accepted count per
/// node and how many were sent.
fn load(
    a: &Server,
    b: &Server,
    key: &str,
    share_a: usize,
    for_: Duration,
) -> (usize, usize, usize) {
    let (ok_a, ok_b, sent) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let deadline = std::time::Instant::now() + for_;
    std::thread::scope(|s| {
        for t in 0..6 {
            let (ok_a, ok_b, sent) = (&ok_a, &ok_b, &sent);
            s.spawn(move || {
                let mut i = t;
                while std::time::Instant::now() < deadline {
                    let to_a = i % 10 < share_a;
                    let r = if to_a { a } else { b }.get("/vehicles", key);
                    sent.fetch_add(1, Ordering::Relaxed);
                    match r.status {
                        200 if to_a => ok_a.fetch_add(1, Ordering::Relaxed),
                        200 => ok_b.fetch_add(1, Ordering::Relaxed),
                        429 => 0,
                        other => panic!("unexpected {other}"),
                    };
                    i += 1;
                }
            });
        }
    });
    (ok_a.into_inner(), ok_b.into_inner(), sent.into_inner())
}

/// Offers several keys, in turn, far more than their limits for `for_`
/// from 6 threads, half to each node; returns the accepted count per key.
fn load_keys(a: &Server, b: &Server, keys: &[&str], for_: Duration) -> Vec<usize> {
    let ok: Vec<AtomicUsize> = keys.iter().map(|_| AtomicUsize::new(0)).collect();
    let deadline = std::time::Instant::now() + for_;
    std::thread::scope(|s| {
        for t in 0..6 {
            let ok = &ok;
            s.spawn(move || {
                let mut i = t;
                while std::time::Instant::now() < deadline {
                    let k = (i / 2) % keys.len();
                    let node = if i % 2 == 0 { a } else { b };
                    match node.get("/vehicles", keys[k]).status {
                        200 => {
                            ok[k].fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("unexpected {other}"),
                    }
                    i += 1;
                }
            });
        }
    });
    ok.into_iter().map(AtomicUsize::into_inner).collect()
}

#[test]
fn two_nodes_share_a_limit_at_50_50_and_90_10() {
    let Some(kw) = Kw::postgres("shared_limits") else {
        return;
    };
    let _heavy = heavy();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let a = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let b = kw.serve(&["--upstream", &upstream_flag(&up)]);
    both_present(&a, &b);
    for (share_a, name) in [(5, "even"), (9, "uneven"), (10, "one-sided")] {
        let (_, key) = kw.key(&[
            "--name",
            name,
            "--scope",
            "vehicles:read",
            "--limit",
            "burst=300/5s",
        ]);
        for window in 0..2 {
            let for_ = start_of_window(5);
            let (ok_a, ok_b, sent) = load(&a, &b, &key, share_a, for_);
            let accepted = ok_a + ok_b;
            eprintln!(
                "{}/{}, window {window}: {accepted} of 300 accepted ({ok_a} by A, {ok_b} by B), {sent} sent",
                share_a * 10,
                100 - share_a * 10
            );
            assert!(sent > 600, "the load must exceed the limit: {sent} sent");
            assert!(
                (270..=330).contains(&accepted),
                "{accepted} accepted, not within 10 % of 300 ({ok_a} by A, {ok_b} by B)"
            );
        }
    }
    // Several keys at once, through both nodes: each within its own limit
    // (the leases of one key never go to another).
    let limits = [300, 100, 30];
    let keys: Vec<String> = limits
        .iter()
        .map(|n| {
            kw.key(&[
                "--name",
                &format!("k{n}"),
                "--scope",
                "vehicles:read",
                "--limit",
                &format!("burst={n}/5s"),
                "--limit",
                "hourly=100000/1h",
            ])
            .1
        })
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for window in 0..2 {
        let for_ = start_of_window(5);
        let accepted = load_keys(&a, &b, &keys, for_);
        eprintln!("three keys, window {window}: {accepted:?} of {limits:?}");
        for (got, limit) in accepted.iter().zip(limits) {
            assert!(
                *got <= limit && *got >= limit * 9 / 10,
                "{got} accepted of {limit}: {accepted:?}"
            );
        }
    }
}

#[test]
fn a_node_cut_off_from_the_database_keeps_enforcing_its_share() {
    let Some(kw) = Kw::postgres("cut_limits") else {
        return;
    };
    let _heavy = heavy();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let proxy = PgProxy::start(postgres_addr(&kw));
    let a = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let b = kw.serve_via(&proxy.url(&kw.url()), &["--upstream", &upstream_flag(&up)]);
    both_present(&a, &b);
    let (_, key) = kw.key(&[
        "--name",
        "cut",
        "--scope",
        "vehicles:read",
        "--limit",
        "burst=100/5s",
    ]);
    // Known to B before the cut (its snapshot is not updated after).
    until(Duration::from_secs(3), "the key on B", || {
        b.get("/vehicles", &key).status == 200
    });
    proxy.blackhole();
    until(Duration::from_secs(5), "B says it enforces alone", || {
        health(&b)["limits"]["mode"] == "local share"
    });
    let metrics = String::from_utf8(req("GET", "/metrics").send(&b).body).unwrap();
    assert!(metrics.contains("keyward_limit_sharing 0"), "{metrics}");
    for window in 0..2 {
        let for_ = start_of_window(5);
        // All of the load on B: it admits its share, never more (what the
        // other node holds back for it: a twentieth of the limit, split).
        let (_, ok_b, sent) = load(&a, &b, &key, 0, for_.min(Duration::from_secs(2)));
        eprintln!("cut off, window {window}: B accepted {ok_b} of {sent}");
        assert!(sent > 200, "{sent} sent");
        assert_eq!(ok_b, 2, "B admits exactly its share, 100 / 20 / 2");
        // A, still on the database, holds B's share back and admits the
        // rest: the two together stay within the limit.
        let (ok_a, _, _) = load(&a, &b, &key, 10, Duration::from_secs(1));
        eprintln!("cut off, window {window}: A accepted {ok_a}");
        assert!(ok_a <= 98, "A accepted {ok_a} beside B's 2");
        assert!(ok_a >= 88, "A accepted only {ok_a} of the 98 left");
    }
    proxy.pass();
    until(Duration::from_secs(10), "B shares again", || {
        health(&b)["limits"]["mode"] == "shared"
    });
}

#[test]
fn a_burst_at_a_windows_start_waits_for_its_lease_rather_than_being_refused() {
    let Some(kw) = Kw::postgres("burst_limits") else {
        return;
    };
    let _heavy = heavy();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let a = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let b = kw.serve(&["--upstream", &upstream_flag(&up)]);
    both_present(&a, &b);
    // 60 per 5 s: each node may admit 1 unasked (60 / 20 / 2); the rest
    // needs a lease, which the burst waits for.
    let (_, key) = kw.key(&[
        "--name",
        "bursty",
        "--scope",
        "vehicles:read",
        "--limit",
        "burst=60/5s",
    ]);
    for window in 0..2 {
        start_of_window(5);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        (0..10)
                            .map(|_| a.get("/vehicles", &key).status)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        let ok = statuses.iter().filter(|s| **s == 200).count();
        eprintln!("burst of 60, window {window}: {ok} admitted");
        // All but B's held share.
        assert_eq!(ok, 59, "{statuses:?}");
        assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
        // B admits its held share, then nothing.
        let on_b: Vec<u16> = (0..3).map(|_| b.get("/vehicles", &key).status).collect();
        assert_eq!(on_b, [200, 429, 429], "window {window}");
    }
}
