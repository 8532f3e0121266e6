//! keyward's HTTP server: the gateway in front of an upstream API, the verify
//! service, and the operations endpoints (`/healthz`, `/metrics`).
//!
//! Every key lives in an in-memory [`keyward_app::Snapshot`] that follows the store's
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
mod auth;
mod authorize;
mod background;
mod body;
mod config;
mod console;
pub mod embedded;
mod error;
mod gateway;
mod github;
mod own;
mod proxy;
mod state;
mod telemetry;
mod verify;
mod web;
mod webhooks;

pub use admin::openapi;
pub use config::{Config, MAX_REQUEST_TARGET, STORE_DEADLINE};
pub use telemetry::X_REQUEST_ID;

/// The bodies of keyward-server's fuzz targets (`fuzz/fuzz_targets/`),
/// shared with the corpus replay test. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Every JSON request body keyward reads: the admin API's and the
    /// verify service's.
    pub fn json_bodies(data: &[u8]) {
        crate::admin::fuzz_json_bodies(data);
        crate::verify::fuzz_verify_body(data);
    }
}
pub use body::Body;
pub use error::ApiError;

use audit::{AnonymousTally, AuditWriter};
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use keyward_app::{AnyStore, App, AppError};
use state::State;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use telemetry::{Metrics, Outage, RequestIds};
use tokio::net::TcpListener;
use web::Client;

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
        check_gateway_prefix(app.catalog().gateway_prefix()).map_err(ServerError::Config)?;
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
        // Several nodes share one PostgreSQL database, and with it each
        // key's limits; SQLite is one node's, counted exactly in memory.
        if app.store().backend() == "postgres" {
            snapshot.sharing().share(config.limit_exchange_interval);
            // Counted present before the first request: until then its
            // unasked share is not held back by the others.
            let alive = background::limits_alive_ms(&config);
            if let Err(e) = app
                .exchange_limits(snapshot.sharing(), &node_id, alive)
                .await
            {
                tracing::warn!(error = %e, "could not join the nodes sharing limits yet; retrying in the background");
            }
        }
        let github = config
            .github_scanning_keys
            .as_deref()
            .map(github::GithubKeyFile::open)
            .transpose()
            .map_err(ServerError::Config)?;
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
            request_ids: RequestIds::new(node_id.clone()),
            usage: keyward_app::usage::Usage::default(),
            node: node_id,
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
            github,
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
            tokio::spawn(background::limits_loop(state.clone())),
            tokio::spawn(background::policy_loop(state.clone())),
            tokio::spawn(webhooks::webhook_loop(state.clone())),
        ];
        let admin = Arc::new(own::Routes::new(&state));
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
        background::finish(state, background.into(), audit_task).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Starts this node without a listener, for a Rust service that checks
    /// keys in-process ([`embedded`]): the snapshot is kept in sync and
    /// uses, limits and audit records are written exactly as `serve` does.
    pub fn embed(self) -> embedded::Embedded {
        let Server { state, audit_task } = self;
        embedded::Embedded::start(state, audit_task)
    }
}

/// Refuses a catalog's gateway prefix that overlaps keyward's own
/// endpoints (they are matched before the gateway, so its routes there
/// would never be reached). `serve` refuses to start with one, and
/// `keyward catalog check` refuses the file, with the same message.
///
/// # Errors
/// What overlaps, and a prefix to choose instead.
pub fn check_gateway_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix == "/"
        || own::is_own_path(prefix)
        || own::is_own_path(&format!("{prefix}/"))
    {
        return Err(format!(
            "the catalog's gateway prefix `{prefix}` overlaps keyward's own endpoints (/v1, /console, /healthz, /metrics, /openapi.json); choose a prefix such as `/api/v1`"
        ));
    }
    Ok(())
}

/// Routes a request: keyward's own endpoints, else the gateway.
async fn dispatch(
    state: Arc<State>,
    client: Client,
    admin: Option<Arc<own::Routes>>,
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
    // Behind trusted proxies, the client is who they say it is.
    let client = if state.config.trusted_proxies.is_empty() {
        client
    } else {
        client.behind(req.headers(), &state.config.trusted_proxies)
    };
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
