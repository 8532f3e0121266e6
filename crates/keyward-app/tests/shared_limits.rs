//! Two nodes sharing a key's limit through one store, simulated on a
//! manual clock (docs/design.md, "Limits across nodes"): whatever the split
//! of the load, a window never admits more than the limit, and admits
//! within 10 % of it when the load exceeds it; a node that stops
//! exchanging admits its share, never more. The real two-process version,
//! on PostgreSQL, is `crates/keyward/tests/serve/shared_limits.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_app::env::{Clock, ManualClock, OsRng};
use keyward_app::{Actor, App, CreateKey, Snapshot};
use keyward_core::limits::{Admission, Limit};
use keyward_core::{Catalog, Digester, GrantRequest};
use keyward_store::SqliteStore;
use std::sync::Arc;
use std::time::Duration;

const WINDOW_MS: i64 = 10_000;
const LIMIT: u64 = 1_000;
const EXCHANGE_MS: i64 = 100;

struct Node {
    app: App<SqliteStore>,
    snapshot: Snapshot,
    name: &'static str,
}

struct World {
    clock: Arc<ManualClock>,
    nodes: [Node; 2],
    key: String,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    world_with(&["burst=1000/10s"]).await
}

async fn world_with(limits: &[&str]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("l.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    // Just past a window's start.
    let clock = Arc::new(ManualClock::new(
        1_700_000_000_000 / WINDOW_MS * WINDOW_MS + 1,
    ));
    let mut apps = Vec::new();
    for _ in 0..2 {
        let store = SqliteStore::connect(&url).await.unwrap();
        apps.push(App::new(
            store,
            catalog.clone(),
            Digester::sha256(),
            clock.clone(),
            Arc::new(OsRng),
        ));
    }
    let actor = Actor::operator("cli:test", &catalog);
    let (org, _) = apps[0].bootstrap(&actor).await.unwrap();
    let created = apps[0]
        .create_key(
            &actor,
            &org,
            CreateKey {
                name: "shared".into(),
                grants: GrantRequest {
                    scopes: vec!["vehicles:read".into()],
                    ..GrantRequest::default()
                },
                limits: limits
                    .iter()
                    .map(|l| Limit::parse_flag("limits", l).unwrap())
                    .collect(),
                ..CreateKey::default()
            },
        )
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for (app, name) in apps.into_iter().zip(["a", "b"]) {
        let snapshot = app.load_snapshot(&mut |_| {}).await.unwrap();
        snapshot
            .sharing()
            .share(Duration::from_millis(EXCHANGE_MS as u64));
        nodes.push(Node {
            app,
            snapshot,
            name,
        });
    }
    let nodes: [Node; 2] = nodes.try_into().map_err(|_| ()).unwrap();
    let w = World {
        clock,
        nodes,
        key: created.key,
        _dir: dir,
    };
    // Both present before the first window counted.
    for n in &w.nodes {
        n.exchange().await;
    }
    // A heartbeat later, each knows the other.
    w.clock.advance(keyward_app::limits::HEARTBEAT_MS);
    for n in &w.nodes {
        n.exchange().await;
    }
    assert_eq!(w.nodes[0].snapshot.sharing().nodes(), 2);
    w
}

impl Node {
    async fn exchange(&self) {
        self.app
            .exchange_limits(self.snapshot.sharing(), self.name, 40_000)
            .await
            .unwrap();
    }

    fn admit(&self, key: &str, now: i64) -> bool {
        let entry = self.snapshot.get(&Digester::sha256().digest(key)).unwrap();
        let limits = entry.limits.as_deref().unwrap();
        matches!(
            limits.admit(now, self.snapshot.sharing()),
            Admission::Allowed { .. }
        )
    }
}

/// Runs `windows` whole windows; each millisecond `arrivals(ms)` says how
/// many requests reach node a and node b. Node a exchanges at 0 mod 100 ms,
/// node b at 50 (unless `b_cut`). Returns admitted per node per window.
async fn run(
    w: &World,
    windows: i64,
    b_cut: bool,
    mut arrivals: impl FnMut(i64) -> (u32, u32),
) -> Vec<(u64, u64)> {
    // To the next window's start.
    let now = w.clock.now_ms();
    if now % WINDOW_MS != 0 {
        w.clock.advance(WINDOW_MS - now % WINDOW_MS);
    }
    let mut out = Vec::new();
    for _ in 0..windows {
        let (mut a, mut b) = (0, 0);
        for ms in 0..WINDOW_MS {
            let now = w.clock.now_ms();
            let (to_a, to_b) = arrivals(ms);
            for _ in 0..to_a {
                a += u64::from(w.nodes[0].admit(&w.key, now));
            }
            for _ in 0..to_b {
                b += u64::from(w.nodes[1].admit(&w.key, now));
            }
            if ms % EXCHANGE_MS == 0 {
                w.nodes[0].exchange().await;
            }
            if ms % EXCHANGE_MS == EXCHANGE_MS / 2 && !b_cut {
                w.nodes[1].exchange().await;
            }
            w.clock.advance(1);
        }
        out.push((a, b));
    }
    out
}

fn assert_within(windows: &[(u64, u64)], what: &str) {
    for (i, (a, b)) in windows.iter().enumerate() {
        let total = a + b;
        eprintln!("{what}, window {i}: {total} ({a} + {b})");
        assert!(
            total <= LIMIT,
            "{what}: window {i} admitted {total} > {LIMIT}"
        );
        assert!(
            total >= LIMIT * 9 / 10,
            "{what}: window {i} admitted only {total} of {LIMIT}"
        );
    }
}

#[tokio::test]
async fn any_split_of_the_load_fills_the_window_never_past_the_limit() {
    let w = world().await;
    // Ten times the limit, split 50/50, 90/10, 10/90 and 100/0.
    for tenths in [5, 9, 1, 10] {
        let windows = run(&w, 2, false, |ms| {
            let to_a = u32::from(ms % 10 < tenths);
            (to_a, 1 - to_a)
        })
        .await;
        assert_within(&windows, &format!("{tenths}0 % to a"));
    }
    // Three times the limit, in bursts of 30 every 100 ms, alternating.
    let windows = run(&w, 2, false, |ms| match ms % 200 {
        0 => (30, 0),
        100 => (0, 30),
        _ => (0, 0),
    })
    .await;
    assert_within(&windows, "bursts");
    // The whole limit at once on one node, then nothing: it all passes.
    let windows = run(&w, 1, false, |ms| {
        if ms == 0 {
            (LIMIT as u32 * 2, 0)
        } else {
            (0, 0)
        }
    })
    .await;
    eprintln!("one burst: {:?}", windows[0]);
    assert!(windows[0].0 <= LIMIT);
    // A burst arrives before any exchange: the node admits its share.
    assert_eq!(windows[0].0, keyward_store::unasked_share(LIMIT, 2));
    // The load moves from a to b in the middle of a window.
    let windows = run(&w, 2, false, |ms| {
        if ms < WINDOW_MS / 2 { (1, 0) } else { (0, 1) }
    })
    .await;
    assert_within(&windows, "moving load");
}

#[tokio::test]
async fn a_node_that_cannot_exchange_admits_its_share_and_the_other_the_rest() {
    let w = world().await;
    let windows = run(&w, 3, true, |_| (1, 1)).await;
    for (i, (a, b)) in windows.iter().enumerate() {
        eprintln!("b cut off, window {i}: {a} + {b}");
        let share = keyward_store::unasked_share(LIMIT, 2);
        assert_eq!(*b, share, "b admits its share, exactly");
        assert!(a + b <= LIMIT, "never past the limit");
        assert!(*a >= (LIMIT - share) * 9 / 10, "a admits the rest: {a}");
    }
}

#[tokio::test]
async fn leaving_hands_the_lease_back() {
    let w = world().await;
    // b takes a large lease, then leaves.
    let windows = run(&w, 1, false, |ms| if ms < 300 { (0, 5) } else { (0, 0) }).await;
    assert!(windows[0].1 > 0);
    let now = w.clock.now_ms();
    w.clock.advance(WINDOW_MS - now % WINDOW_MS);
    let now = w.clock.now_ms();
    for _ in 0..10 {
        assert!(w.nodes[1].admit(&w.key, now));
    }
    w.nodes[1].exchange().await;
    w.nodes[1]
        .app
        .leave_limits(w.nodes[1].snapshot.sharing(), "b")
        .await
        .unwrap();
    // a, alone now (a heartbeat later), is granted all that b did not use.
    w.clock.advance(keyward_app::limits::HEARTBEAT_MS);
    w.nodes[0].exchange().await;
    assert_eq!(w.nodes[0].snapshot.sharing().nodes(), 1);
    let mut admitted = 0;
    for _ in 0..20 {
        for _ in 0..200 {
            admitted += u64::from(w.nodes[0].admit(&w.key, now));
        }
        w.nodes[0].exchange().await;
    }
    assert_eq!(admitted, LIMIT - 10);
}

#[tokio::test]
async fn two_limits_on_a_key_fill_the_one_that_binds() {
    // 1 000 per 10 s, and 1 500 per 20 s: over 20 s the second binds.
    let w = world_with(&["burst=1000/10s", "slow=1500/20s"]).await;
    let now = w.clock.now_ms();
    w.clock.advance(2 * WINDOW_MS - now % (2 * WINDOW_MS));
    let windows = run(&w, 4, false, |ms| {
        let to_a = u32::from(ms % 2 == 0);
        (to_a, 1 - to_a)
    })
    .await;
    for (i, pair) in windows.chunks(2).enumerate() {
        let (first, second) = (pair[0].0 + pair[0].1, pair[1].0 + pair[1].1);
        eprintln!("two limits, 20 s window {i}: {first} + {second}");
        assert!(
            (900..=1000).contains(&first),
            "the burst limit binds first: {first}"
        );
        let total = first + second;
        assert!(total <= 1500, "never past the slow limit: {total}");
        assert!(total >= 1350, "the slow limit filled within 10 %: {total}");
    }
}

#[tokio::test]
async fn a_node_no_longer_counted_present_admits_nothing_unasked() {
    // b stops exchanging (its heartbeats fail, its requests go on): the
    // other node counts it present for 40 s after its last heartbeat; b
    // stops admitting its unasked share 5 s before that.
    let w = world().await;
    let windows = run(&w, 6, true, |_| (1, 1)).await;
    let share = keyward_store::unasked_share(LIMIT, 2);
    for (i, (a, b)) in windows.iter().enumerate() {
        eprintln!("b silent, window {i}: {a} + {b}");
        assert!(a + b <= LIMIT, "never past the limit: {a} + {b}");
        assert!(*b <= share);
    }
    let (a, b) = windows[5];
    assert_eq!(b, 0, "b no longer admits its share");
    assert!(a >= LIMIT * 9 / 10, "a, alone, admits the limit: {a}");
}

#[tokio::test]
async fn a_keys_counts_survive_a_sync_that_replaces_its_entry() {
    // One node, not shared: a roll changes the old key (its expiry), the
    // sync replaces its entry, and its counts carry over.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let app = App::new(
        SqliteStore::connect(&url).await.unwrap(),
        catalog.clone(),
        Digester::sha256(),
        clock.clone(),
        Arc::new(OsRng),
    );
    let actor = Actor::operator("cli:test", &catalog);
    let (org, _) = app.bootstrap(&actor).await.unwrap();
    let created = app
        .create_key(
            &actor,
            &org,
            CreateKey {
                name: "counted".into(),
                grants: GrantRequest {
                    scopes: vec!["vehicles:read".into()],
                    ..GrantRequest::default()
                },
                limits: vec![Limit::parse_flag("limits", "hourly=3/1h").unwrap()],
                ..CreateKey::default()
            },
        )
        .await
        .unwrap();
    let snapshot = app.load_snapshot(&mut |_| {}).await.unwrap();
    let digest = Digester::sha256().digest(&created.key);
    let admit = |snapshot: &Snapshot| {
        let entry = snapshot.get(&digest).unwrap();
        matches!(
            entry
                .limits
                .as_deref()
                .unwrap()
                .admit(clock.now_ms(), snapshot.sharing()),
            Admission::Allowed { .. }
        )
    };
    assert!(admit(&snapshot) && admit(&snapshot));
    app.roll_key(&actor, &org, &created.record.id, 600_000)
        .await
        .unwrap();
    assert!(app.sync_snapshot(&snapshot).await.unwrap() > 0);
    assert!(admit(&snapshot), "the third of three");
    assert!(!admit(&snapshot), "the count carried over the sync");
}
