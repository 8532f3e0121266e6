//! Failure isolation across nodes (issue 15): two real nodes on one real
//! PostgreSQL, one of them reaching it through a TCP proxy of the test's own
//! that can pass, black-hole, refuse or reset its connections, and a node
//! frozen with SIGSTOP. Each test ends by verifying the audit chain.

use crate::harness::{Kw, PREFIX, Server, Upstream, pg_rows, raw, req, until};
use crate::upstream_flag;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;
const REFUSE: u8 = 2;
/// Client to server: the last 5 bytes of every large write of the node's
/// are held back (an extended-protocol `Sync` is 5 bytes): a connection cut
/// in the middle of a message, while the TCP connection itself stays up.
const HOLD_TAIL: u8 = 3;
/// Every chunk either way waits 2 ms: a node farther from the database.
const SLOW: u8 = 4;

/// A TCP proxy in front of PostgreSQL that can fail the way networks do.
pub(crate) struct PgProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped to reset (RST) every open connection.
    resets: tokio::sync::watch::Sender<u64>,
}

impl PgProxy {
    pub(crate) fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let (resets, watch) = tokio::sync::watch::channel(0u64);
        let m = mode.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    // RST on close: a reset or refused connection is torn
                    // down, not politely finished.
                    let _ = rst_on_close(&client);
                    if m.load(Ordering::SeqCst) == REFUSE {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(relay(client, target, m.clone(), watch.clone()));
                }
            });
        });
        PgProxy { addr, mode, resets }
    }

    /// `url` with its host and port replaced by the proxy's.
    pub(crate) fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap();
        let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
        format!(
            "{scheme}://{}{}/{path}",
            userinfo.unwrap_or_default(),
            self.addr
        )
    }

    pub(crate) fn pass(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }

    /// Bytes stop flowing both ways; nothing is closed (a cable pulled, a
    /// firewall dropping packets).
    pub(crate) fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Adds 2 ms each way.
    fn slow(&self) {
        self.mode.store(SLOW, Ordering::SeqCst);
    }

    /// Holds back the end of every message the node sends.
    fn hold_tail(&self) {
        self.mode.store(HOLD_TAIL, Ordering::SeqCst);
    }

    /// Every open connection is reset and new ones are refused.
    fn refuse(&self) {
        self.mode.store(REFUSE, Ordering::SeqCst);
        self.reset();
    }

    /// Every open connection is reset; new ones pass.
    fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

/// `SO_LINGER` 0: closing sends RST. Tokio deprecates `set_linger` because
/// a positive linger blocks the thread on drop; a zero one never does.
#[allow(deprecated, reason = "a zero linger does not block on drop")]
fn rst_on_close(s: &tokio::net::TcpStream) -> std::io::Result<()> {
    s.set_linger(Some(Duration::ZERO))
}

async fn relay(
    client: tokio::net::TcpStream,
    target: SocketAddr,
    mode: Arc<AtomicU8>,
    mut resets: tokio::sync::watch::Receiver<u64>,
) {
    resets.borrow_and_update();
    // Black-holed while connecting: the client's connect never completes
    // its handshake with PostgreSQL.
    while mode.load(Ordering::SeqCst) == BLACKHOLE {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let _ = rst_on_close(&server);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        () = pump(cr, sw, &mode, true) => {}
        () = pump(sr, cw, &mode, false) => {}
        _ = resets.changed() => {}
    }
    // Dropping both sockets (linger 0) resets them.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: &AtomicU8,
    to_server: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Only what is large enough to carry audit records (reads of the
        // head and the change log are a few dozen bytes).
        if to_server && n > 300 && mode.load(Ordering::SeqCst) == HOLD_TAIL {
            if to.write_all(&buf[..n - 5]).await.is_err() {
                return;
            }
            while mode.load(Ordering::SeqCst) == HOLD_TAIL {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if to.write_all(&buf[n - 5..n]).await.is_err() {
                return;
            }
            continue;
        }
        if mode.load(Ordering::SeqCst) == SLOW {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Held, not dropped: TCP would retransmit them once the path heals.
        while mode.load(Ordering::SeqCst) == BLACKHOLE {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

pub(crate) fn postgres_addr(kw: &Kw) -> SocketAddr {
    let url = kw.url();
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split_once('/').unwrap().0;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&hostport.replace("localhost", "127.0.0.1"))
        .unwrap()
        .next()
        .unwrap()
}

fn post(node: &Server, key: &str, n: usize) -> (u16, Duration) {
    let started = Instant::now();
    let status = req("POST", &format!("{PREFIX}/inspections"))
        .bearer(key)
        .json(&json!({ "n": n }))
        .send(node)
        .status;
    (status, started.elapsed())
}

fn signal(node: &Server, sig: &str) {
    let pid = node.child.as_ref().unwrap().id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The chain verifies and holds every acknowledged request.
fn chain_holds(kw: &Kw, acknowledged: usize) {
    let report: Value = serde_json::from_str(&kw.cli_ok(&["audit", "verify", "--json"])).unwrap();
    assert!(report["first_broken"].is_null(), "{report}");
    let (requests,): (i64,) = pg_rows(
        kw,
        "SELECT COUNT(*) FROM audit_log WHERE action = 'gateway.request' AND status = 200",
    )[0];
    assert!(
        usize::try_from(requests).unwrap() >= acknowledged,
        "{requests} records for {acknowledged} acknowledged requests"
    );
}

/// B's latencies for `duration`, POSTing one after another; every POST must
/// be acknowledged.
fn measure_b(
    node: &Server,
    key: &str,
    duration: Duration,
    acknowledged: &mut usize,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let (status, took) = post(node, key, latencies.len());
        assert_eq!(status, 200, "node B refused an audited write");
        *acknowledged += 1;
        latencies.push(took);
    }
    latencies.sort();
    latencies
}

/// Sets its flag when dropped: loader threads stop even when the scope's
/// body panics (a failed assertion must fail the test, not hang it).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How long node A stays frozen or cut off, each time.
const STALL: Duration = Duration::from_millis(2_500);

/// How long PostgreSQL lets a stalled node keep a transaction open
/// (keyward's `idle_in_transaction_session_timeout`).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(1);

#[test]
fn a_stalled_node_never_stops_another_nodes_audited_writes() {
    let _heavy = crate::harness::heavy();
    let Some(kw) = Kw::postgres("stalled_node") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, w) = kw.key(&["--name", "w", "--preset", "inspection-submission"]);
    let proxy = PgProxy::start(postgres_addr(&kw));
    let node_a = kw.serve_via(&proxy.url(&kw.url()), &["--upstream", &upstream_flag(&up)]);
    let node_b = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let mut acknowledged = 0;
    let before = measure_b(&node_b, &w, Duration::from_secs(2), &mut acknowledged);

    // Node A writes as fast as it can the whole time, so that each stall
    // catches it in the middle of an append as often as not.
    let stop = AtomicBool::new(false);
    let (during, a_acknowledged) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let loaders: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut ok = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if post(&node_a, &w, 0).0 == 200 {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let measured = s.spawn(|| {
            let mut acked = 0;
            let mut all = Vec::new();
            let end = Instant::now() + Duration::from_secs(17);
            while Instant::now() < end {
                all.extend(measure_b(
                    &node_b,
                    &w,
                    Duration::from_millis(500),
                    &mut acked,
                ));
            }
            all.sort();
            (all, acked)
        });
        for round in 0..6 {
            std::thread::sleep(Duration::from_millis(300));
            // Frozen (SIGSTOP), black-holed, or cut in the middle of its
            // messages, for longer than the 2 s lock timeout: a write of
            // B's that waited for A would be refused, not merely slow.
            match round % 3 {
                0 => {
                    signal(&node_a, "-STOP");
                    std::thread::sleep(STALL);
                    signal(&node_a, "-CONT");
                }
                1 => {
                    proxy.blackhole();
                    std::thread::sleep(STALL);
                    proxy.pass();
                }
                _ => {
                    proxy.hold_tail();
                    std::thread::sleep(STALL);
                    proxy.pass();
                }
            }
        }
        let (during, acked) = measured.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let a_ok: usize = loaders.into_iter().map(|l| l.join().unwrap()).sum();
        acknowledged += acked;
        (during, a_ok)
    });
    acknowledged += a_acknowledged;
    eprintln!(
        "node B audited POST: before p50 {:?} p99 {:?} max {:?}; while A stalls p50 {:?} p99 {:?} max {:?} ({} requests)",
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        before.last().unwrap(),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().unwrap(),
        during.len()
    );
    // By design A can hold the chain head for at most 1 s when it stalls
    // right after locking it (`idle_in_transaction_session_timeout`, after
    // three lost races), so B may wait that long once. Had B waited for A
    // itself, it would show as most of a stall (or as a refusal, above);
    // the rest of the margin is for a loaded test machine.
    assert!(
        *during.last().unwrap() < IDLE_IN_TRANSACTION + Duration::from_millis(700),
        "node B waited {:?} while node A stalled",
        during.last().unwrap()
    );
    // A recovers once healed.
    until(Duration::from_secs(5), "node A writes again", || {
        post(&node_a, &w, 0).0 == 200
    });
    drop((node_a, node_b));
    chain_holds(&kw, acknowledged);
}

/// A node farther from the database than a busy neighbour still gets its
/// audit records in: it loses races for the chain head, then takes it.
#[test]
fn a_distant_node_is_not_starved_of_the_chain_head() {
    let _heavy = crate::harness::heavy();
    let Some(kw) = Kw::postgres("distant_node") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, w) = kw.key(&["--name", "w", "--preset", "inspection-submission"]);
    let proxy = PgProxy::start(postgres_addr(&kw));
    let near = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let far = kw.serve_via(&proxy.url(&kw.url()), &["--upstream", &upstream_flag(&up)]);
    proxy.slow();
    let stop = AtomicBool::new(false);
    let (near_ok, far_statuses) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let busy: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let mut ok = 0;
                    while !stop.load(Ordering::Relaxed) {
                        ok += usize::from(post(&near, &w, 0).0 == 200);
                    }
                    ok
                })
            })
            .collect();
        let far_writes = s.spawn(|| {
            let mut statuses = Vec::new();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                statuses.push(post(&far, &w, 0).0);
            }
            statuses
        });
        let statuses = far_writes.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let near_ok: usize = busy.into_iter().map(|b| b.join().unwrap()).sum();
        (near_ok, statuses)
    });
    let far_ok = far_statuses.iter().filter(|s| **s == 200).count();
    eprintln!(
        "near node: {near_ok} writes; far node (2 ms each way): {far_ok} of {} acknowledged",
        far_statuses.len()
    );
    assert!(
        far_ok * 10 >= far_statuses.len() * 9,
        "the far node's writes were refused: {far_ok} of {}",
        far_statuses.len()
    );
    drop((near, far));
    chain_holds(&kw, near_ok + far_ok);
}

#[test]
fn a_cut_off_node_answers_on_time_and_forwards_no_write_it_cannot_audit() {
    let _heavy = crate::harness::heavy();
    let Some(kw) = Kw::postgres("cut_off_node") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, r) = kw.key(&["--name", "r", "--scope", "vehicles:read"]);
    let (_, w) = kw.key(&["--name", "w", "--preset", "inspection-submission"]);
    let proxy = PgProxy::start(postgres_addr(&kw));
    let node = kw.serve_via(&proxy.url(&kw.url()), &["--upstream", &upstream_flag(&up)]);
    let mut acknowledged = 0;
    let mut outages = 0;
    for (fault, cut) in [
        (
            "black-holed",
            &(|p: &PgProxy| p.blackhole()) as &dyn Fn(&PgProxy),
        ),
        ("refused", &|p: &PgProxy| p.refuse()),
        ("reset", &|p: &PgProxy| p.reset()),
    ] {
        assert_eq!(post(&node, &w, 0).0, 200, "{fault}: healthy before");
        acknowledged += 1;
        let stop = AtomicBool::new(false);
        let clients = 4;
        let (hits_at_fault, hits_after, slowest, statuses, unreachable_after) =
            std::thread::scope(|s| {
                let _stop = StopOnDrop(&stop);
                let writers: Vec<_> = (0..clients)
                    .map(|_| {
                        s.spawn(|| {
                            let mut seen = Vec::new();
                            while !stop.load(Ordering::Relaxed) {
                                seen.push(post(&node, &w, 0));
                            }
                            seen
                        })
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(500));
                let hits_at_fault = up.hits();
                let cut_at = Instant::now();
                cut(&proxy);
                // /healthz sees it within a second (a reset heals at once).
                let mut unreachable_after = None;
                while cut_at.elapsed() < Duration::from_secs(2) {
                    let h = req("GET", "/healthz").send(&node).json();
                    if h["database"] == "unreachable" {
                        unreachable_after = Some(cut_at.elapsed());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Reads go on from the snapshot meanwhile.
                let read = node.get("/vehicles", &r);
                assert_eq!(
                    read.status,
                    200,
                    "{fault}: read answered {}\n--- node log (reads, warnings) ---\n{}",
                    String::from_utf8_lossy(&read.body),
                    node.log()
                        .lines()
                        .filter(|l| l.contains("/vehicles")
                            || l.contains("WARN")
                            || l.contains("ERROR"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::thread::sleep(Duration::from_secs(4).saturating_sub(cut_at.elapsed()));
                let hits_after = up.hits();
                proxy.pass();
                stop.store(true, Ordering::Relaxed);
                let mut all = Vec::new();
                for wr in writers {
                    all.extend(wr.join().unwrap());
                }
                let slowest = all.iter().map(|(_, d)| *d).max().unwrap();
                let statuses: Vec<u16> = all.iter().map(|(s, _)| *s).collect();
                (
                    hits_at_fault,
                    hits_after,
                    slowest,
                    statuses,
                    unreachable_after,
                )
            });
        acknowledged += statuses.iter().filter(|s| **s == 200).count();
        assert!(
            statuses.iter().all(|s| [200, 503].contains(s)),
            "{fault}: {statuses:?}"
        );
        // Every write answered within the deadline (3 s) and some slack.
        assert!(
            slowest < Duration::from_secs(4),
            "{fault}: a write took {slowest:?}"
        );
        let recovered = until(Duration::from_secs(5), "writes after the heal", || {
            post(&node, &w, 0).0 == 200
        });
        acknowledged += 1;
        eprintln!(
            "{fault}: slowest answer {slowest:?}; /healthz unreachable after {unreachable_after:?}; \
             {} writes reached the upstream during the cut ({} refused); writes recovered {recovered:?} after the heal",
            hits_after - hits_at_fault,
            statuses.iter().filter(|s| **s == 503).count()
        );
        if fault == "reset" {
            continue;
        }
        outages += 1;
        assert!(
            unreachable_after.is_some_and(|d| d < Duration::from_millis(1_200)),
            "{fault}: /healthz saw the outage after {unreachable_after:?}"
        );
        // Only the writes in flight when the database went away (one per
        // client, and those that arrived before the failure was noticed)
        // reached the upstream.
        assert!(
            hits_after - hits_at_fault <= 2 * clients + 2,
            "{fault}: {} writes reached the upstream during the outage",
            hits_after - hits_at_fault
        );
        assert!(
            statuses.iter().filter(|s| **s == 503).count() > clients,
            "{fault}: writes were not refused"
        );
    }
    let log = node.log();
    drop(node);
    // A line when an outage begins (and one when it ends), not one per
    // failed batch: thousands of writes were refused above. A reset may cost
    // a short outage of its own, and a pooled connection killed by a fault
    // may fail once more after the heal.
    let failed_lines = log.matches("audit writes failed").count();
    assert!(
        (outages..=2 * (outages + 1)).contains(&failed_lines),
        "{failed_lines} lines for {outages} outages:\n{log}"
    );
    // Each outage is in the chain, with what it cost.
    let resumed: Vec<(String,)> = pg_rows(
        &kw,
        "SELECT details FROM audit_log WHERE action = 'node.audit_resumed' ORDER BY seq",
    );
    let refused: Vec<u64> = resumed
        .iter()
        .map(|(d,)| {
            serde_json::from_str::<Value>(d).unwrap()["refused_writes"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        resumed.len() >= outages && refused.iter().any(|n| *n > 0),
        "node.audit_resumed records: {resumed:?}"
    );
    chain_holds(&kw, acknowledged);
}

#[test]
fn nodes_name_themselves_to_postgres() {
    let Some(kw) = Kw::postgres("application_name") else {
        return;
    };
    kw.cli_ok(&["migrate"]);
    let node = kw.serve(&[]);
    let names: Vec<(String,)> = pg_rows(
        &kw,
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'keyward serve %'",
    );
    assert!(!names.is_empty(), "no connection named `keyward serve …`");
    drop(node);
    chain_holds(&kw, 0);
}

#[test]
fn a_large_import_leaves_every_node_fresh() {
    let Some(kw) = Kw::postgres("large_import") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, r) = kw.key(&["--name", "r", "--scope", "vehicles:read"]);
    let node_a = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let node_b = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let total = 100_000;
    let file = kw.dir.path().join("legacy.txt");
    let mut text = String::with_capacity(total * 48);
    for i in 0..total {
        text.push_str(&format!("legacy_{i:08}_abcdefghijklmnopqrstuv  Old {i}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let last = format!("legacy_{:08}_abcdefghijklmnopqrstuv", total - 1);
    let done = AtomicBool::new(false);
    let (refusals, oldest, imported_in) = std::thread::scope(|s| {
        let load: Vec<_> = [&node_a, &node_b]
            .into_iter()
            .map(|node| {
                let (done, r) = (&done, &r);
                s.spawn(move || {
                    let mut refusals = Vec::new();
                    let mut oldest = 0;
                    while !done.load(Ordering::Relaxed) {
                        let status = node.get("/vehicles", r).status;
                        if status != 200 {
                            refusals.push(status);
                        }
                        let h = req("GET", "/healthz").send(node).json();
                        oldest = oldest.max(h["snapshot"]["age_ms"].as_i64().unwrap_or(i64::MAX));
                    }
                    (refusals, oldest)
                })
            })
            .collect();
        let started = Instant::now();
        let out = kw.cli(&["keys", "import-legacy", file.to_str().unwrap(), "--json"]);
        let imported_in = started.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Both nodes accept the last imported key soon after.
        for node in [&node_a, &node_b] {
            let took = until(Duration::from_secs(10), "the last imported key", || {
                node.get("/vehicles", &last).status == 200
            });
            eprintln!("last imported key accepted {took:?} after the import ended");
        }
        done.store(true, Ordering::Relaxed);
        let mut refusals = Vec::new();
        let mut oldest = 0;
        for l in load {
            let (r, o) = l.join().unwrap();
            refusals.extend(r);
            oldest = oldest.max(o);
        }
        (refusals, oldest, imported_in)
    });
    eprintln!("imported {total} keys in {imported_in:?}; largest snapshot age seen {oldest} ms");
    assert!(
        refusals.is_empty(),
        "requests refused during the import: {refusals:?}"
    );
    assert!(oldest < 10_000, "a node fell {oldest} ms behind");
    drop((node_a, node_b));
    chain_holds(&kw, 0);
}

/// A refusal sent before the body was read says `Connection: close`, and
/// the server closes; a refusal of a request without a body keeps the
/// connection.
#[test]
fn early_refusals_close_the_connection_they_cannot_reuse() {
    let kw = Kw::new();
    let up = Upstream::start();
    let node = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let head = format!(
        "POST {PREFIX}/inspections HTTP/1.1\r\nHost: kw.test\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"partial\":"
    );
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    // The server answers 401 and closes: read to the end.
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    // A refused GET (no body) keeps its connection: two on one.
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = format!("GET {PREFIX}/vehicles HTTP/1.1\r\nHost: kw.test\r\n\r\n");
    for _ in 0..2 {
        s.write_all(get.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 401"), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
    }
    // And a whole body refused unread (no key) also says close.
    let r = raw(
        node.addr,
        format!(
            "POST {PREFIX}/inspections HTTP/1.1\r\nHost: kw.test\r\nContent-Length: 2\r\n\r\n{{}}"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), Some("close"));
}
