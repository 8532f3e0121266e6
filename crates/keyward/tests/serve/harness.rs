//! A real `keyward serve` process, a real upstream on a real socket, and a
//! raw HTTP/1.1 client that can send what well-behaved clients cannot
//! (duplicate headers, odd bytes), for the gateway tests.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");
pub const PREFIX: &str = "/api/third-party/v1";

/// An upstream that echoes what it received as JSON. A request carrying
/// `x-test-delay-ms` is answered after that many milliseconds.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests received whole (head and complete body).
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(echo_server(listener, counted));
        });
        Upstream { addr, hits }
    }

    /// How many whole requests reached the upstream so far.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn echo_server(
    listener: std::net::TcpListener,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let hits = hits.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move {
                        let delay = req
                            .headers()
                            .get("x-test-delay-ms")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        let mut headers = serde_json::Map::new();
                        for (name, value) in req.headers() {
                            let entry = headers
                                .entry(name.as_str().to_owned())
                                .or_insert_with(|| Value::Array(Vec::new()));
                            if let Value::Array(a) = entry {
                                a.push(Value::from(value.to_str().unwrap_or("<bytes>")));
                            }
                        }
                        let method = req.method().to_string();
                        let path = req.uri().to_string();
                        let body = req.into_body().collect().await.map(|c| c.to_bytes().len());
                        if body.is_ok() {
                            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        if let Some(ms) = delay {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let doc = serde_json::json!({
                            "method": method,
                            "path": path,
                            "headers": headers,
                            "body_len": body.unwrap_or(0),
                        });
                        let mut res = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(doc.to_string()),
                        ));
                        res.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        res.headers_mut()
                            .insert("connection", "x-upstream-private".parse().unwrap());
                        res.headers_mut()
                            .insert("x-upstream-private", "hop".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response as read off the socket.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// The SPEC §3 error document: asserts its shape, returns the one error.
    pub fn error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let doc = self.json();
        let errors = doc["errors"].as_array().expect("an `errors` array");
        assert_eq!(errors.len(), 1, "{doc}");
        assert_eq!(errors[0]["code"], code, "{doc}");
        assert!(
            errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{doc}"
        );
        errors[0].clone()
    }
    /// What the upstream saw (the echo document).
    pub fn seen(&self) -> Value {
        assert_eq!(
            self.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }
}

/// Sends raw bytes, reads the whole response (the request says `close`).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Resp {
    exchange(TcpStream::connect(addr).unwrap(), request)
}

/// [`raw`] from another loopback address (`127.0.0.2`): a client that is
/// not the proxy in front of keyward, though on the same machine.
pub fn raw_from(local: std::net::IpAddr, addr: SocketAddr, request: &[u8]) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    exchange(s, request)
}

fn exchange(mut s: TcpStream, request: &[u8]) -> Resp {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// A request built line by line.
pub struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

pub fn req(method: &str, path: &str) -> Req {
    Req {
        method: method.into(),
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Req {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn bearer(self, key: &str) -> Self {
        self.header("Authorization", &format!("Bearer {key}"))
    }
    pub fn json(mut self, body: &Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.header("Content-Type", "application/json")
    }
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: gateway.test\r\n",
            self.method, self.path
        );
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if !self.body.is_empty() {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
    pub fn send(&self, kw: &Server) -> Resp {
        raw(kw.addr, &self.bytes())
    }
}

/// A database, a CLI over it, and (once started) a server process.
pub struct Kw {
    pub dir: tempfile::TempDir,
    /// A PostgreSQL database instead of the SQLite file, dropped on drop.
    pub postgres: Option<ScratchPostgres>,
}

impl Kw {
    pub fn new() -> Self {
        Kw {
            dir: tempfile::tempdir().unwrap(),
            postgres: None,
        }
    }

    /// On a fresh PostgreSQL database; `None` (after a loud message) when
    /// `KEYWARD_TEST_POSTGRES_URL` is unset or unreachable.
    pub fn postgres(name: &str) -> Option<Self> {
        Some(Kw {
            postgres: Some(ScratchPostgres::create(name)?),
            ..Kw::new()
        })
    }

    pub fn url(&self) -> String {
        match &self.postgres {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", self.dir.path().join("k.db").display()),
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("KEYWARD_DATABASE_URL", self.url())
            .env_remove("KEYWARD_CATALOG")
            .env_remove("KEYWARD_ORG")
            .env_remove("KEYWARD_DIGEST_SECRET")
            .output()
            .unwrap()
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "keyward {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates a key; returns (id, full key).
    pub fn key(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["keys", "create", "--json"];
        all.extend_from_slice(args);
        let doc: Value = serde_json::from_str(&self.cli_ok(&all)).unwrap();
        (
            doc["id"].as_str().unwrap().to_owned(),
            doc["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Starts `keyward serve` on a free port with `extra` flags.
    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_via(&self.url(), extra)
    }

    /// [`Kw::serve`] reaching the database at `url` (through a proxy).
    pub fn serve_via(&self, url: &str, extra: &[&str]) -> Server {
        self.cli_ok(&["migrate"]);
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.path().join(format!("serve-{n}.log"));
        // KEYWARD_TEST_SERVE_BIN runs another build's server under the same
        // test (a before/after figure); the CLI stays this build's.
        let bin = std::env::var("KEYWARD_TEST_SERVE_BIN").unwrap_or_else(|_| BIN.to_owned());
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(if extra.contains(&"--sync-interval") {
                &[][..]
            } else {
                &["--sync-interval", "100ms"][..]
            })
            .args(extra)
            .env("KEYWARD_DATABASE_URL", url)
            .env("KEYWARD_LOG", "info,sqlx=warn")
            .env_remove("KEYWARD_CATALOG")
            .env_remove("KEYWARD_DIGEST_SECRET")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "server did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Server {
            child: Some(child),
            addr,
            log,
        }
    }
}

pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    pub fn get(&self, path: &str, key: &str) -> Resp {
        req("GET", &format!("{PREFIX}{path}"))
            .bearer(key)
            .send(self)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `f` to completion on a runtime of its own (the tests are sync).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Rows of one query against a test's SQLite database, read as the server
/// or CLI left them.
pub fn sqlite_rows<T>(kw: &Kw, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    block_on(async {
        let pool = sqlx::SqlitePool::connect(&kw.url()).await.unwrap();
        let rows: Vec<T> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    })
}

/// Runs one statement against a test's database (either backend), as an
/// operator with a SQL shell would: for states no command makes, such as a
/// key created long ago.
pub fn execute(kw: &Kw, sql: &'static str) {
    block_on(async {
        if kw.postgres.is_some() {
            let pool = sqlx::PgPool::connect(&kw.url()).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        } else {
            let pool = sqlx::SqlitePool::connect(&kw.url()).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    });
}

/// Rows of one query against a test's PostgreSQL database.
pub fn pg_rows<T>(kw: &Kw, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    block_on(async {
        let pool = sqlx::PgPool::connect(&kw.url()).await.unwrap();
        let rows: Vec<T> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    })
}

/// Polls `check` every 10 ms until it holds; returns how long it took.
pub fn until(limit: Duration, what: &str, check: impl FnMut() -> bool) -> Duration {
    until_else(limit, what, check, String::new)
}

/// [`until`], whose failure also prints what `explain` says (what was
/// seen, a server's log): a timing failure in CI must say why.
pub fn until_else(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() >= limit {
            panic!("{what}: not within {limit:?}\n{}", explain());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A message that reaches the terminal even though the test harness
/// captures `eprintln!`: a skipped test must never pass silently.
macro_rules! loud {
    ($($arg:tt)*) => {{
        let message = format!($($arg)*);
        // CI sets KEYWARD_REQUIRE_POSTGRES=1: there a skip is a failure.
        if message.contains("SKIPPED")
            && message.contains("PostgreSQL")
            && std::env::var("KEYWARD_REQUIRE_POSTGRES").as_deref() == Ok("1")
        {
            panic!("{message} (KEYWARD_REQUIRE_POSTGRES=1)");
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{message}");
    }};
}

/// Says, where the test harness cannot hide it, that a test did not run.
pub fn loud_skip(test: &str, why: &str) {
    loud!("\n*** SKIPPED {test}: {why} ***\n");
}

/// A uniquely named PostgreSQL database, created through the server at
/// `KEYWARD_TEST_POSTGRES_URL` and dropped when this value is.
pub struct ScratchPostgres {
    admin_url: String,
    pub name: String,
    pub url: String,
}

fn psql_admin(admin_url: &str, sql: &str) -> Result<(), String> {
    block_on(async {
        let pool = sqlx::PgPool::connect(admin_url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
        pool.close().await;
        Ok(())
    })
}

impl ScratchPostgres {
    /// Runs one statement as the administrator (another database).
    pub fn admin(&self, sql: &str) {
        psql_admin(&self.admin_url, sql).unwrap();
    }

    pub fn create(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var("KEYWARD_TEST_POSTGRES_URL") else {
            loud!("\n*** SKIPPED {test}: KEYWARD_TEST_POSTGRES_URL is not set (PostgreSQL) ***\n");
            return None;
        };
        let nanos = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("keyward_{test}_{}_{nanos}", std::process::id());
        if let Err(e) = psql_admin(&admin_url, &format!("CREATE DATABASE {name}")) {
            loud!("\n*** SKIPPED {test}: PostgreSQL at {admin_url} is unreachable: {e} ***\n");
            return None;
        }
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        Some(ScratchPostgres {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let _ = psql_admin(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The transit catalog shipped in `catalogs/`: its write sets make broad access
/// reachable.
pub const TRANSIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../catalogs/transit.toml");

/// Eleven write-capable permission sets of the transit catalog: one more than
/// keyward grants without an explicit acknowledgement of broad access.
pub const TRANSIT_BROAD_WRITE_SETS: [&str; 11] = [
    "trips-create",
    "trips-edit",
    "trips-cancel",
    "trips-delete",
    "riders-create",
    "riders-edit",
    "riders-delete",
    "drivers-create",
    "drivers-edit",
    "drivers-delete",
    "vehicles-create",
];

/// Taken by the tests whose timing the others would disturb: the node
/// isolation tests (which measure how long writes wait, against 500 ms
/// health thresholds) and the browser test (a Chromium beside them starves a
/// 2-core machine). Held for the whole test; poisoning is ignored, since a
/// failed test must not fail the next.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
