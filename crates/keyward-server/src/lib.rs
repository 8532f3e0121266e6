//! keyward's HTTP server: the gateway in front of an upstream API, the verify
//! service, and the operations endpoints (`/healthz`, `/metrics`).
//!
//! Every key lives in an in-memory [`Snapshot`] that follows the store's
//! change log, so deciding a request reads no database. Writes that must
//! happen (audit records of write requests and 403s, last-use times) go
//! through the app layer: audit records by group commit before the response,
//! last-use times in periodic batches. The server reaches storage only
//! through [`keyward_app::App`].
//!
//! Connections are served with hyper's HTTP/1 server directly; keyward's own
//! endpoints (`/v1/…`, `/healthz`, `/metrics`) are dispatched by path before
//! the gateway, so a catalog's gateway prefix may not overlap them.

mod admin;
mod audit;
mod background;
mod body;
mod console;
mod error;
mod gateway;
mod own;
mod proxy;
mod telemetry;

pub use admin::openapi;

/// The bodies of keyward-server's fuzz targets (`fuzz/fuzz_targets/`),
/// shared with the corpus replay test. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Every JSON request body keyward reads: the admin API's and the
    /// verify service's.
    pub fn json_bodies(data: &[u8]) {
        crate::admin::fuzz_json_bodies(data);
        crate::own::fuzz_verify_body(data);
    }
}
pub use body::Body;
pub use error::ApiError;

use audit::{AnonymousTally, AuditWriter};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use keyward_app::AnyStore;
use keyward_app::{App, AppError, Snapshot};
use keyward_core::ScopeSet;
use keyward_core::audit::AuditEntry;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use telemetry::Outage;
use telemetry::{Metrics, RequestIds};
use tokio::net::TcpListener;

/// `X-Request-Id`, echoed on every response and forwarded upstream.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How `keyward serve` runs. Defaults are what a first start needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where allowed gateway requests go (`http://host:port`); `None` answers
    /// 502 `UPSTREAM_NOT_CONFIGURED` where a request would be forwarded.
    pub upstream: Option<Uri>,
    /// Largest request body forwarded (413 beyond).
    pub max_body_bytes: u64,
    /// Largest total size of request headers (431 beyond).
    pub max_header_bytes: usize,
    /// Time allowed to connect to the upstream (502 beyond).
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response head (504 beyond).
    pub upstream_timeout: Duration,
    /// How often the snapshot reads the change log.
    pub sync_interval: Duration,
    /// How often last-use times are written.
    pub flush_interval: Duration,
    /// Oldest snapshot a node still decides with; older, it answers 503.
    pub max_staleness: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Forward request headers whose names hold `_` (dropped by default, as
    /// nginx does: CGI and WSGI back ends fold `_` into `-`, so such a name
    /// can shadow a header the upstream trusts). Folded spellings of the
    /// headers keyward sets are dropped either way.
    pub allow_underscore_headers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: None,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            sync_interval: Duration::from_millis(250),
            flush_interval: Duration::from_secs(2),
            max_staleness: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            allow_underscore_headers: false,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration, named.
    #[error("{0}")]
    Config(String),
    /// Storage or other app failure at start.
    #[error(transparent)]
    App(#[from] AppError),
    /// Socket failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// State shared by every request.
pub struct State {
    app: Arc<App<AnyStore>>,
    snapshot: Snapshot,
    config: Config,
    upstream: Option<Arc<proxy::Upstream>>,
    audit: AuditWriter,
    /// Refusals of unauthenticated requests, counted instead of chained.
    anonymous: AnonymousTally,
    metrics: Arc<Metrics>,
    request_ids: RequestIds,
    default_org: String,
    verify_scope: ScopeSet,
    /// When the snapshot was last known to hold everything committed (the
    /// start of the last sync that caught up): its age is how far behind
    /// the change log this node may be.
    last_sync_ms: AtomicI64,
    /// When the database last answered the sync now running (its start, or
    /// its latest page; 0: none is running): a sync that has heard nothing
    /// for long means the database is not answering.
    sync_started_ms: AtomicI64,
    /// `Snapshot::answers` when `sync_started_ms` was set.
    sync_answers: std::sync::atomic::AtomicU64,
    sync_error: Mutex<Option<String>>,
    /// The last sync failed (what `sync_error` says, readable without a lock
    /// on the write path).
    sync_failed: std::sync::atomic::AtomicBool,
    /// Lookups of unknown keys that could not reach the database, logged
    /// once per outage.
    lookups: Outage,
    /// When the audit chain was last verified, and whether it held.
    chain_check: tokio::sync::Mutex<Option<(i64, bool)>>,
}

impl State {
    /// 431 when the request's headers are larger than configured.
    fn check_headers(&self, headers: &HeaderMap) -> Option<ApiError> {
        let total: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        (total > self.config.max_header_bytes).then(|| {
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "REQUEST_HEADER_FIELDS_TOO_LARGE",
                format!(
                    "Request headers total {total} bytes; the limit is {}",
                    self.config.max_header_bytes
                ),
            )
            .detail("limit_bytes", self.config.max_header_bytes)
        })
    }

    /// Milliseconds since the snapshot last caught up with the change log.
    fn snapshot_age_ms(&self) -> i64 {
        self.snapshot_age_ms_at(self.app.now())
    }

    fn snapshot_age_ms_at(&self, now: i64) -> i64 {
        now - self.last_sync_ms.load(Ordering::Acquire)
    }

    /// 503 when the snapshot is too old to trust (revocations may be missed).
    fn stale(&self) -> Option<ApiError> {
        self.stale_at(self.app.now())
    }

    /// [`State::stale`] at `now`, for a request that has read the clock.
    fn stale_at(&self, now: i64) -> Option<ApiError> {
        let age = self.snapshot_age_ms_at(now);
        let max = i64::try_from(self.config.max_staleness.as_millis()).unwrap_or(i64::MAX);
        (age > max).then(|| {
            ApiError::unavailable(format!(
                "This node has not reached the database for {}s and will not decide on possibly revoked keys",
                age / 1000
            ))
            .detail("snapshot_age_ms", age)
        })
    }

    /// Whether the audit chain verifies, checked at most once a minute per
    /// node: verification reads the whole log, and the console's audit page
    /// must not let anyone make the node do that on every request.
    async fn chain_verified(&self) -> Result<bool, AppError> {
        let mut last = self.chain_check.lock().await;
        let now = self.app.now();
        if let Some((at, ok)) = *last
            && now - at < 60_000
        {
            return Ok(ok);
        }
        let ok = self
            .app
            .verify_audit(&mut |_| {})
            .await?
            .first_broken
            .is_none();
        *last = Some((now, ok));
        Ok(ok)
    }

    /// The snapshot holds everything committed before `as_of` (the time a
    /// sync that has now caught up started).
    fn note_sync_ok(&self, as_of: i64) {
        self.last_sync_ms.fetch_max(as_of, Ordering::AcqRel);
    }

    /// Whether the database looks unreachable from here: the last sync
    /// failed, or the one running has had no answer for [`UNANSWERED`].
    /// Writes are then refused before they are forwarded, as when the audit
    /// fails: their records would not be written either.
    fn database_down(&self) -> bool {
        self.sync_failed.load(Ordering::Acquire) || self.sync_silent().is_some()
    }

    /// How long the running sync has waited for a first or next answer, if
    /// that is at least [`UNANSWERED`].
    fn sync_silent(&self) -> Option<i64> {
        let started = self.sync_started_ms.load(Ordering::Acquire);
        if started == 0 {
            return None;
        }
        let now = self.app.now();
        // A long sync that keeps getting pages is catching up, not stuck:
        // restart the count from now.
        let answers = self.snapshot.answers();
        if self.sync_answers.swap(answers, Ordering::AcqRel) != answers {
            // Unless the sync ended meanwhile (then it stays 0).
            let _ = self.sync_started_ms.compare_exchange(
                started,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return None;
        }
        let waited = now - started;
        let unanswered = i64::try_from(UNANSWERED.as_millis()).unwrap_or(i64::MAX);
        (waited >= unanswered).then_some(waited)
    }

    /// Why the database looks unreachable from here, if it does: the last
    /// sync failed, or the one running has had no answer for
    /// [`UNANSWERED`] (a black-holed database never fails, it just does
    /// not answer, and the deadline is longer).
    fn database_error(&self) -> Option<String> {
        if let Some(e) = self
            .sync_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Some(e);
        }
        self.sync_silent()
            .map(|waited| format!("the change log has not answered for {waited} ms"))
    }

    /// Boxed: the wait for the group commit is large, and inline it would
    /// grow every request's future (moved by hyper on each request), audited
    /// or not, to its size.
    fn record(
        &self,
        mut entry: AuditEntry,
    ) -> Pin<Box<dyn Future<Output = Result<(), audit::AuditUnavailable>> + Send + '_>> {
        entry.at_ms = self.app.now();
        Box::pin(self.audit.record(entry))
    }
}

/// A configured server, snapshot loaded, not yet accepting connections.
pub struct Server {
    state: Arc<State>,
    audit_task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Loads the snapshot and checks the configuration. `progress` receives
    /// the number of keys loaded so far.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming the problem, or storage failures.
    pub async fn start(
        app: App<AnyStore>,
        config: Config,
        node_id: String,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Self, ServerError> {
        let prefix = app.catalog().gateway_prefix();
        if prefix.is_empty()
            || prefix == "/"
            || own::is_own_path(prefix)
            || own::is_own_path(&format!("{prefix}/"))
        {
            return Err(ServerError::Config(format!(
                "the catalog's gateway prefix `{prefix}` overlaps keyward's own endpoints (/v1, /console, /healthz, /metrics, /openapi.json); choose a prefix such as `/api/v1`"
            )));
        }
        let upstream = config
            .upstream
            .as_ref()
            .map(|u| proxy::Upstream::new(u, config.connect_timeout, config.upstream_timeout))
            .transpose()
            .map_err(ServerError::Config)?
            .map(Arc::new);
        let verify_scope = app
            .catalog()
            .scope_set(&[keyward_core::catalog::reserved::API_KEYS_VERIFY])
            .ok_or_else(|| {
                ServerError::Config("the catalog lacks keyward's reserved scopes".into())
            })?;
        let default_org = app.resolve_org(None).await?.id;
        let snapshot = app.load_snapshot(progress).await?;
        let metrics = Arc::new(Metrics::new().map_err(ServerError::Config)?);
        let app = Arc::new(app);
        let (audit, audit_task) = AuditWriter::start(
            app.clone(),
            metrics.clone(),
            audit::WriterIdentity {
                node: node_id.clone(),
                org_id: default_org.clone(),
            },
        );
        let now = app.now();
        let state = Arc::new(State {
            snapshot,
            config,
            upstream,
            audit,
            anonymous: AnonymousTally::new(),
            metrics,
            request_ids: RequestIds::new(node_id),
            default_org,
            verify_scope,
            last_sync_ms: AtomicI64::new(now),
            sync_started_ms: AtomicI64::new(0),
            sync_answers: std::sync::atomic::AtomicU64::new(0),
            sync_error: Mutex::new(None),
            sync_failed: std::sync::atomic::AtomicBool::new(false),
            lookups: Outage::new(
                "looking up unknown keys",
                "requests with keys this node has not seen are answered 503",
            ),
            chain_check: tokio::sync::Mutex::new(None),
            app,
        });
        Ok(Server { state, audit_task })
    }

    /// Keys in the snapshot.
    pub fn keys(&self) -> usize {
        self.state.snapshot.len()
    }

    /// Serves `listener` until `shutdown` completes, then stops accepting,
    /// drains in-flight requests (up to the drain timeout), and flushes
    /// pending audit records and last-use times.
    ///
    /// # Errors
    /// Accept failures that are not transient.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let Server { state, audit_task } = self;
        let background = [
            tokio::spawn(background::sync_loop(state.clone())),
            tokio::spawn(background::flush_loop(state.clone())),
        ];
        let admin = Arc::new(admin::Admin::new(state.clone()));
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Some(Duration::from_secs(30)))
            .max_buf_size(64 * 1024)
            .max_headers(256);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            stream.set_nodelay(true).ok();
            let state = state.clone();
            let admin = admin.clone();
            let client = Client::new(peer);
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let client = client.clone();
                // Only keyward's own endpoints need the admin router.
                let admin = own::is_own_path(req.uri().path()).then(|| admin.clone());
                async move { Ok::<_, Infallible>(dispatch(state, client, admin, req).await) }
            });
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        // The admin router holds the state too; it must go before the state.
        drop(admin);
        tracing::info!("shutting down: draining in-flight requests");
        let drain = state.config.drain_timeout;
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "some connections were still open after the drain timeout"
            );
        }
        for task in background {
            task.abort();
            let _ = task.await;
        }
        let (uses, anonymous) = background::flush_outages();
        background::flush_uses(&state, &mut Vec::new(), &uses).await;
        background::flush_anonymous(&state, &mut Vec::new(), true, &anonymous).await;
        // The last reference to the audit writer goes with the state; the
        // writer then commits what is queued and stops.
        drop(state);
        if tokio::time::timeout(Duration::from_secs(10), audit_task)
            .await
            .is_err()
        {
            tracing::error!("audit writer did not finish within 10s");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The peer of a connection, its address rendered once per connection and
/// shared by its requests: `X-Forwarded-For`, audit records, sign-in throttles.
#[derive(Clone)]
pub(crate) struct Client {
    /// The address as a header value (`X-Forwarded-For`).
    pub(crate) ip: HeaderValue,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Client {
            ip: HeaderValue::try_from(addr.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }

    /// The address as text (an address renders as ASCII, so never empty).
    pub(crate) fn ip_text(&self) -> &str {
        self.ip.to_str().unwrap_or("unknown")
    }
}

/// Routes a request: keyward's own endpoints, else the gateway.
async fn dispatch(
    state: Arc<State>,
    client: Client,
    admin: Option<Arc<admin::Admin>>,
    req: Request<Incoming>,
) -> Response<Body> {
    if let Some(e) = check_request_line(&req) {
        // Refused before anything is recorded or logged.
        state.metrics.refused(e.status.as_u16(), e.code);
        let mut res = e.into_response(Some(&state.request_ids.next()));
        if !hyper::body::Body::is_end_stream(req.body()) {
            res.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return res;
    }
    // A body not yet read when keyward refuses the request stays unread:
    // hyper then closes the connection after the response, and the client
    // must be told so, or its next request on the connection fails.
    let body_pending = !hyper::body::Body::is_end_stream(req.body());
    let mut res = match admin {
        Some(admin) => own::handle(state, client, &admin, req).await,
        None => gateway::handle(state, client, req).await,
    };
    if body_pending && refused_here(&res) {
        res.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A refusal keyward wrote itself (not the upstream's answer, which read or
/// forwarded the whole body).
fn refused_here(res: &Response<Body>) -> bool {
    (res.status().is_client_error() || res.status().is_server_error())
        && !matches!(res.body(), Body::Upstream(_))
}

/// How long a sync may wait for the database before `/healthz` reports it
/// unreachable.
const UNANSWERED: Duration = Duration::from_millis(500);

/// How long one call to the database may take on a server before the
/// request waiting for it is answered 503: a node whose database stalls
/// answers on time instead of holding its clients (docs/design.md,
/// "Failure isolation").
pub const STORE_DEADLINE: Duration = Duration::from_secs(3);

/// What every request must be before keyward looks further: a method it
/// can decide on (`path::check_method`), a target of at most
/// [`MAX_REQUEST_TARGET`] bytes (414), and one `Host` that is a plain
/// `host[:port]` (RFC 9112 §3.2: a missing, repeated or malformed `Host` is
/// a 400), or an absolute-form target, whose authority then wins.
fn check_request_line(req: &Request<Incoming>) -> Option<ApiError> {
    // hyper's parser admits only token methods, so of `check_method`'s rule
    // only the length is left to check here (the verify service and
    // `explain` check the whole rule on methods they read from a body).
    let method = req.method().as_str();
    if method.len() > keyward_core::path::MAX_METHOD {
        return Some(ApiError::bad_request(format!(
            "The request method is refused: {}",
            keyward_core::path::MethodError::Length
        )));
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_REQUEST_TARGET {
        return Some(
            ApiError::new(
                StatusCode::URI_TOO_LONG,
                "URI_TOO_LONG",
                format!("The request target is {target} bytes; the limit is {MAX_REQUEST_TARGET}"),
            )
            .detail("limit_bytes", MAX_REQUEST_TARGET),
        );
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(ApiError::bad_request(
            "The request has more than one `Host` header",
        ));
    }
    match host {
        Some(h) if !plain_host(h.as_bytes()) => {
            return Some(ApiError::bad_request(
                "The `Host` header is not a plain `host[:port]`",
            ));
        }
        // HTTP/1.0 may omit it; from 1.1 on it is required.
        None if req.version() >= http::Version::HTTP_11 => {
            return Some(ApiError::bad_request("The request has no `Host` header"));
        }
        _ => {}
    }
    let uri = req.uri();
    let scheme_ok = matches!(uri.scheme_str(), None | Some("http" | "https"));
    if !scheme_ok
        || uri
            .authority()
            .is_some_and(|a| !plain_host(a.as_str().as_bytes()))
    {
        return Some(ApiError::bad_request(
            "An absolute request target must be `http://host[:port]/…`",
        ));
    }
    None
}

/// `host[:port]` with nothing a back end could split or misread: a name of
/// letters, digits, `.`, `-` and `_`, or a bracketed IPv6 address; a port
/// of 1 to 65535. No user info, no commas, no other punctuation.
fn plain_host(text: &[u8]) -> bool {
    // One pass for the common case (a name, maybe a port); brackets go the
    // long way.
    let (host_ok, port) = match text.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => {
                let v6 = std::str::from_utf8(rest.get(..end).unwrap_or_default());
                let ok = v6.is_ok_and(|v| v.parse::<std::net::Ipv6Addr>().is_ok());
                (ok, rest.get(end + 1..).unwrap_or_default())
            }
            None => return false,
        },
        None => {
            let end = text
                .iter()
                .position(|&b| !HOST_NAME_BYTE[usize::from(b)])
                .unwrap_or(text.len());
            // What follows the name must be a port (checked below) or nothing.
            (
                (1..=253).contains(&end),
                text.get(end..).unwrap_or_default(),
            )
        }
    };
    host_ok
        && match port.strip_prefix(b":") {
            None => port.is_empty(),
            Some(p) => {
                (1..=5).contains(&p.len())
                    && p.iter().all(u8::is_ascii_digit)
                    && (1..=65_535)
                        .contains(&p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
            }
        }
}

/// Bytes of a host name: letters, digits, `.`, `-`, `_`.
static HOST_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        #[expect(clippy::cast_possible_truncation, reason = "b < 256")]
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

/// Longest request target (path and query) keyward reads; 414 beyond.
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;

/// Response helpers shared by the modules.
fn json_response(
    status: StatusCode,
    value: &impl serde::Serialize,
    request_id: &HeaderValue,
) -> Response<Body> {
    let mut bytes = Vec::with_capacity(512);
    if serde_json::to_writer(&mut bytes, value).is_err() {
        bytes.clear();
    }
    json_bytes_response(status, bytes, request_id)
}

/// [`json_response`] for a body already written.
fn json_bytes_response(
    status: StatusCode,
    bytes: Vec<u8>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let mut res = Response::new(Body::full(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_are_plain_or_refused() {
        for ok in [
            "a.example",
            "a.example:81",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[2001:db8::1]",
            "gateway.test",
            "svc_internal",
        ] {
            assert!(super::plain_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a.example,evil.example",
            "a.example;x",
            "a!b$&()*+=",
            "a'b.example",
            "a.example:8x",
            "a.example:99999",
            "a.example:0",
            "a.example:",
            "a:",
            "[zz]",
            "[::1",
            "u:p@a.example",
            "a b",
            "a.example:81:82",
            "evil/../x",
        ] {
            assert!(!super::plain_host(bad.as_bytes()), "{bad}");
        }
    }

    /// The size of what `f` returns, without calling it.
    fn returned_size<F, A, B, C, D, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// hyper moves every request's service future into place, so its size is
    /// paid in copying on every request: at 11 KB that copy was a quarter of
    /// `POST /v1/verify`'s instructions. Rare, large awaits (the store's
    /// catch-up lookup, the audit commit, the admin router) are boxed to keep
    /// it small; this holds the line.
    #[test]
    fn the_request_future_stays_small() {
        let size = returned_size(super::dispatch);
        assert!(size <= 4096, "dispatch's future is {size} bytes");
    }
}
