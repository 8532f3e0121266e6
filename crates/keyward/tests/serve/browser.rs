//! The console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/run`), driven over WebDriver by
//! fantoccini, against a real `keyward serve` on the transit catalog.
//! Screenshots of every page go to `target/console-screenshots/` (or
//! `KEYWARD_SCREENSHOTS`), for a person to look at; they are not committed.
//! Skips loudly when chromium or chromedriver is missing.

use crate::console::first_start;
use crate::harness::{Kw, Server, TRANSIT, TRANSIT_BROAD_WRITE_SETS, loud_skip, req, until};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("KEYWARD_SCREENSHOTS").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/console-screenshots"
            ))
        },
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Runs `op` on the first element matching `css`, again while a navigation
/// replaces the page under the query (a click returns before the next page
/// has loaded).
async fn on<T, F, Fut>(c: &Client, css: &str, op: F) -> T
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    let mut last = String::new();
    for _ in 0..60 {
        match c.find(Locator::Css(css)).await {
            Ok(el) => match op(el).await {
                Ok(v) => return v,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css}: {last}")
}

/// The new key the created-key page shows once.
async fn shown_secret(c: &Client) -> String {
    c.find(Locator::Css("#secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap()
}

async fn text_of(c: &Client, css: &str) -> String {
    on(c, css, |el| async move { el.text().await }).await
}

async fn disabled(c: &Client, css: &str) -> bool {
    on(c, css, |el| async move { el.prop("disabled").await })
        .await
        .as_deref()
        == Some("true")
}

async fn fill(c: &Client, css: &str, value: &str) {
    on(c, css, |el| async move {
        el.clear().await?;
        el.send_keys(value).await
    })
    .await;
}

async fn click(c: &Client, css: &str) {
    on(c, css, |el| async move { el.click().await }).await;
}

fn gateway(server: &Server, path: &str, key: &str) -> u16 {
    req("GET", &format!("/api/v1{path}"))
        .bearer(key)
        .send(server)
        .status
}

#[test]
fn the_console_in_a_real_browser() {
    let _heavy = crate::harness::heavy();
    let (Some(chromium), Some(chromedriver)) = (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) else {
        assert!(
            std::env::var_os("KEYWARD_REQUIRE_BROWSER").is_none(),
            "KEYWARD_REQUIRE_BROWSER is set but chromium or chromedriver is missing"
        );
        loud_skip(
            "the_console_in_a_real_browser",
            "chromium and chromedriver are not installed (.ci/run installs Debian's chromium and chromium-driver)",
        );
        return;
    };
    let kw = Kw::new();
    let password = first_start(&kw);
    let cli = |args: &[&str]| {
        let mut all = vec!["--catalog", TRANSIT];
        all.extend_from_slice(args);
        kw.cli_ok(&all)
    };
    cli(&[
        "users",
        "create",
        "--email",
        "dana@example.com",
        "--name",
        "Dana Ops",
        "--group",
        "trips-view",
    ]);
    let server = kw.serve(&["--catalog", TRANSIT, "--flush-interval", "200ms"]);
    let port = free_port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until(Duration::from_secs(10), "chromedriver", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let profile = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        let result = journey(&c, &server, &kw, &password).await;
        let _ = c.close().await;
        result
    });
}

async fn journey(c: &Client, server: &Server, kw: &Kw, password: &str) {
    let base = format!("http://{}", server.addr);
    let dir = screenshots();

    // Sign in with the one-time password, then choose a real one.
    c.goto(&format!("{base}/console/keys")).await.unwrap();
    at(c, "/console/sign-in").await;
    shot(c, &dir, "01-sign-in").await;
    fill(c, "#email", "owner").await;
    fill(c, "#password", password).await;
    click(c, "button[type=submit].primary").await;
    at(c, "/console/password").await;
    shot(c, &dir, "02-change-password").await;
    fill(c, "#current", password).await;
    fill(c, "#new", "a browser-chosen password").await;
    click(c, "form[action='/console/password'] button").await;
    at(c, "/console/keys").await;
    assert!(text_of(c, "main").await.contains("No API keys yet"));
    shot(c, &dir, "03-api-keys-empty").await;

    // Create New API Key: disabled until a name and a set are chosen.
    click(c, "a.button.primary").await;
    shot(c, &dir, "04-create-key").await;
    assert!(disabled(c, "#create").await, "disabled with nothing chosen");
    fill(c, "#name", "Dispatch board").await;
    assert!(
        disabled(c, "#create").await,
        "disabled without a permission set"
    );
    click(c, "input[name=set][value=trips-view]").await;
    click(c, "input[name=set][value=drivers-view]").await;
    assert!(
        !disabled(c, "#create").await,
        "enabled with a name and two sets"
    );
    click(c, "#create").await;
    wait_for("the created key", || async {
        c.find(Locator::Css("#secret")).await.is_ok()
    })
    .await;
    let key = shown_secret(c).await;
    assert!(key.contains("_live_"), "{key}");
    assert!(
        text_of(c, "main")
            .await
            .contains("You will not see it again")
    );
    click(c, "#copy").await;
    wait_for("copy confirmation", || async {
        !text_of(c, "#copied").await.is_empty()
    })
    .await;
    shot(c, &dir, "05-key-created").await;
    // The copied key works against the gateway; the other sets' routes do not.
    assert_eq!(gateway(server, "/trips", &key), 502, "allowed, no upstream");
    assert_eq!(gateway(server, "/riders", &key), 403);
    // Reloading or going back never shows it again.
    c.refresh().await.unwrap();
    let _ = c.accept_alert().await;
    assert!(!c.source().await.unwrap().contains(&key), "reload");
    c.back().await.unwrap();
    assert!(!c.source().await.unwrap().contains(&key), "back");
    c.goto(&format!("{base}/console/keys")).await.unwrap();
    let list = c.source().await.unwrap();
    assert!(list.contains("Dispatch board") && !list.contains(&key));
    shot(c, &dir, "06-api-keys").await;

    // Broad access: eleven write-capable sets need an explicit confirmation.
    c.goto(&format!("{base}/console/keys/new")).await.unwrap();
    fill(c, "#name", "Everything bot").await;
    let (ten, eleventh) = TRANSIT_BROAD_WRITE_SETS.split_at(10);
    for s in ten {
        click(c, &format!("input[name=set][value={s}]")).await;
    }
    let warning = c.find(Locator::Id("broad-warning")).await.unwrap();
    assert!(!warning.is_displayed().await.unwrap(), "ten is not broad");
    click(c, &format!("input[name=set][value={}]", eleventh[0])).await;
    assert!(warning.is_displayed().await.unwrap(), "eleven is");
    assert!(
        text_of(c, "#broad-warning")
            .await
            .contains("11 write-capable")
    );
    assert!(disabled(c, "#create").await, "waits for the confirmation");
    shot(c, &dir, "07-broad-access-warning").await;
    click(c, "#acknowledge").await;
    assert!(!disabled(c, "#create").await);
    click(c, "#create").await;
    wait_for("the broad key", || async {
        text_of(c, "main").await.contains("Copy your new API key")
    })
    .await;
    assert!(
        text_of(c, "main")
            .await
            .to_lowercase()
            .contains("broad access")
    );
    // That key leaks into a file; `keyward scan --revoke` finds it, and the
    // console says plainly when, where and what was done.
    let broad = shown_secret(c).await;
    let leak = kw.dir.path().join("deploy.env");
    std::fs::write(&leak, format!("# deploy\nTRANSIT_KEY={broad}\n")).unwrap();
    let scanned = kw.cli(&[
        "--catalog",
        TRANSIT,
        "scan",
        &leak.display().to_string(),
        "--revoke",
    ]);
    assert_eq!(scanned.status.code(), Some(1), "a live key was found");
    c.goto(&format!("{base}/console/keys")).await.unwrap();
    assert_eq!(text_of(c, "span.badge.leaked").await, "Leaked");
    c.find(Locator::LinkText("Everything bot"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the leaked key's page", || async {
        c.find(Locator::Css("#leaked")).await.is_ok()
    })
    .await;
    let notice = text_of(c, "#leaked").await;
    for needle in [
        "Reported leaked by keyward scan",
        "deploy.env:2",
        "revoked",
        "It no longer works",
    ] {
        assert!(notice.contains(needle), "{needle}: {notice}");
    }
    let trail = text_of(c, "main").await;
    assert!(
        trail.contains("Revoked because keyward scan reported it leaked"),
        "{trail}"
    );
    assert!(!c.source().await.unwrap().contains(&broad), "never the key");
    shot(c, &dir, "07b-leaked-key").await;

    // Key detail, then revoke (after the browser's confirmation).
    c.goto(&format!("{base}/console/keys")).await.unwrap();
    c.find(Locator::LinkText("Dispatch board"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // A click that navigates returns before the next page has replaced this
    // one: wait for the next page's words before reading it.
    wait_for("the key detail", || async {
        text_of(c, "main").await.contains("cannot be edited")
    })
    .await;
    let detail = text_of(c, "main").await;
    for needle in [
        "View Trips",
        "trips:read",
        "cannot be edited",
        "key.created",
    ] {
        assert!(detail.contains(needle), "{needle}: {detail}");
    }
    shot(c, &dir, "08-key-detail").await;

    // Its use: the chart (drawn by the server, shown under the CSP), and
    // the narrower key the least-privilege panel offers, shown once.
    let detail_url = c.current_url().await.unwrap();
    wait_for("the day's use in the chart", || async {
        c.refresh().await.unwrap();
        c.find(Locator::Css("svg.chart")).await.is_ok()
    })
    .await;
    let chart = c.find(Locator::Css("svg.chart")).await.unwrap();
    assert!(chart.is_displayed().await.unwrap());
    let bars = c
        .find_all(Locator::Css("svg.chart rect.allowed"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 30, "a bar a day");
    let panel = text_of(c, "#least-privilege").await;
    assert!(
        panel.contains("drivers-view") && panel.contains("trips:read"),
        "{panel}"
    );
    c.execute(
        "document.querySelector('svg.chart').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shot(c, &dir, "08b-key-usage").await;
    click(c, "#narrow").await;
    wait_for("the narrower key", || async {
        text_of(c, "main")
            .await
            .contains("narrower replacement key")
    })
    .await;
    let narrower = shown_secret(c).await;
    shot(c, &dir, "08c-narrower-key").await;
    assert_eq!(gateway(server, "/trips", &narrower), 502, "still allowed");
    assert_eq!(gateway(server, "/drivers", &narrower), 403, "narrowed");
    c.goto(detail_url.as_str()).await.unwrap();
    wait_for("the old key's page", || async {
        text_of(c, "main").await.contains("Replaced by")
    })
    .await;
    click(c, "button.danger").await;
    c.accept_alert().await.unwrap();
    wait_for("the revocation notice", || async {
        text_of(c, "main").await.contains("The key was revoked.")
    })
    .await;
    until(Duration::from_secs(2), "revocation", || {
        gateway(server, "/trips", &key) == 401
    });

    // Authorization Groups: add and remove a user on the Users tab, find the
    // key on the API Keys tab.
    c.goto(&format!("{base}/console/groups")).await.unwrap();
    shot(c, &dir, "09-groups").await;
    c.goto(&format!("{base}/console/groups/drivers-view?tab=users"))
        .await
        .unwrap();
    assert!(
        text_of(c, "main")
            .await
            .contains("No user is in this group yet.")
    );
    c.find(Locator::Css("#user"))
        .await
        .unwrap()
        .select_by_label("dana@example.com")
        .await
        .unwrap();
    click(c, "form.inline-form button").await;
    wait_for("the added user", || async {
        text_of(c, "main").await.contains("The user was added")
    })
    .await;
    let users = text_of(c, "main").await;
    assert!(
        users.contains("The user was added") && users.contains("Dana Ops"),
        "{users}"
    );
    shot(c, &dir, "10-group-users").await;
    click(c, "button[aria-label='Remove dana@example.com']").await;
    wait_for("the user's removal", || async {
        text_of(c, "main")
            .await
            .contains("No user is in this group yet.")
    })
    .await;
    c.find(Locator::LinkText("API Keys"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the API Keys tab", || async {
        text_of(c, "main").await.contains("Dispatch board")
    })
    .await;
    let keys_tab = text_of(c, "main").await;
    assert!(keys_tab.contains("Dispatch board"), "{keys_tab}");
    shot(c, &dir, "11-group-api-keys").await;

    // The audit log, chain verified.
    c.goto(&format!("{base}/console/audit")).await.unwrap();
    let audit = text_of(c, "main").await;
    assert!(audit.contains("chain verified") && audit.contains("group.member_removed"));
    assert!(
        audit.contains("Reported leaked by keyward scan, found at"),
        "{audit}"
    );
    shot(c, &dir, "12-audit-log").await;

    // A form on another site posting to the console is refused, and
    // nothing is created.
    let before = kw.cli_ok(&["--catalog", TRANSIT, "keys", "list", "--json"]);
    let evil = format!(
        "data:text/html,<form id=f method=post action='{base}/console/keys'><input name=name value=evil><input name=set value=trips-view></form><script>document.getElementById('f').submit()</script>"
    );
    c.goto(&evil).await.unwrap();
    wait_for("the cross-site post to land", || async {
        c.current_url().await.unwrap().as_str().starts_with(&base)
    })
    .await;
    let refused = text_of(c, "main").await;
    assert!(refused.contains("sent from another site"), "{refused}");
    shot(c, &dir, "13-cross-site-refused").await;
    let after = kw.cli_ok(&["--catalog", TRANSIT, "keys", "list", "--json"]);
    let count = |s: &str| {
        serde_json::from_str::<Value>(s)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&before), count(&after));
}

/// Waits until the browser shows `path` (a click's navigation may still be
/// under way when the click returns).
async fn at(c: &Client, path: &str) {
    wait_for(path, || async {
        c.current_url().await.is_ok_and(|u| u.path() == path)
    })
    .await;
}

/// Polls `check` until it holds (5 s at most).
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
