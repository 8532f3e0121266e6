//! Webhook delivery: the network side of SPEC §10's outbox.
//!
//! Every node polls for an endpoint with events due and leases it
//! (`keyward_store::Webhooks::claim_webhook`: one node per endpoint), then
//! sends its events oldest first over one connection, stopping at the first
//! failure: an endpoint's events arrive in the order they happened, and a
//! failing endpoint waits out its back-off as a whole. Each attempt is
//! recorded before the next is sent, and only while the lease holds.
//!
//! The dialler trusts no name: each address a name resolves to is checked
//! at every connection ([`keyward_core::webhook::is_public`]), so a name
//! that resolved to a public address at creation and to `127.0.0.1` now
//! is refused (unless `--allow-private-webhooks`). Redirects are not
//! followed; every step has a deadline; a receiver's body is read up to
//! 64 KiB and ignored. None of this runs on a request path.

use crate::state::State;
use crate::telemetry::Outage;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use keyward_app::{Attempt, PendingEvent, WebhookRecord};
use keyward_core::webhook::{self, WebhookUrl};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// How often an idle node looks for events due.
const POLL: Duration = Duration::from_millis(500);

/// Endpoints one node delivers to at once (an organization holds at most
/// `keyward_store`'s `LEASES_PER_ORG` of them, over all nodes).
const PARALLEL: usize = 16;

/// Events read per batch.
const BATCH: u32 = 100;

/// The most of a receiver's answer read (the rest is not waited for).
const MAX_ANSWER: usize = 64 * 1024;

/// Delivered events are kept in the history this long.
const HISTORY_MS: i64 = 30 * 86_400_000;

/// What a delivery needs besides the endpoint: TLS roots, the deadline of
/// one attempt, and whether private addresses may be dialled.
pub(crate) struct Dialer {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    allow_private: bool,
}

impl Dialer {
    pub(crate) fn new(timeout: Duration, allow_private: bool) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS for webhooks: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Dialer {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
            allow_private,
        })
    }

    /// The addresses to try for `url`: all it resolves to, minus the
    /// non-public ones unless they are allowed.
    async fn addresses(&self, url: &WebhookUrl) -> Result<Vec<SocketAddr>, String> {
        let found: Vec<SocketAddr> = match url.ip {
            Some(ip) => vec![SocketAddr::new(ip, url.port)],
            None => tokio::net::lookup_host((url.host.as_str(), url.port))
                .await
                .map_err(|e| format!("`{}` does not resolve: {e}", url.host))?
                .collect(),
        };
        if self.allow_private {
            return Ok(found);
        }
        let public: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|a| webhook::is_public(a.ip()))
            .collect();
        if public.is_empty() {
            return Err(match found.first() {
                Some(a) => webhook::UrlProblem::Private(a.ip()).to_string(),
                None => format!("`{}` has no address", url.host),
            });
        }
        Ok(public)
    }

    /// A new connection to `url`, ready for requests.
    async fn connect(&self, url: &WebhookUrl) -> Result<SendRequest<Full<Bytes>>, String> {
        let mut last = String::from("no address to connect to");
        for addr in self.addresses(url).await? {
            let tcp = match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    last = format!("connecting to {addr}: {e}");
                    continue;
                }
            };
            tcp.set_nodelay(true).ok();
            return if url.https {
                let name = rustls::pki_types::ServerName::try_from(
                    url.host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                )
                .map_err(|e| format!("`{}` is not a TLS server name: {e}", url.host))?;
                let tls = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {addr}: {e}"))?;
                handshake(tls).await
            } else {
                handshake(tcp).await
            };
        }
        Err(last)
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One POST of one event; the receiver's status, or why there is none.
/// Leaves `conn` open for the next event when the receiver keeps it.
async fn post(
    dialer: &Dialer,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    url: &WebhookUrl,
    headers: [(&'static str, String); 3],
    body: Bytes,
) -> Result<u16, String> {
    let host = match (url.https, url.port) {
        (true, 443) | (false, 80) => url.host.clone(),
        (_, port) => format!("{}:{port}", url.host),
    };
    let request = || {
        let mut request = Request::post(url.path_and_query.as_str())
            .header(header::HOST, host.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("keyward/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &headers {
            request = request.header(*name, value.as_str());
        }
        request
            .body(Full::new(body.clone()))
            .map_err(|e| format!("building the request: {e}"))
    };
    let kept = conn.take().filter(SendRequest::is_ready);
    let (mut sender, response) = match kept {
        Some(mut s) => match s.send_request(request()?).await {
            Ok(r) => (s, r),
            // The receiver closed the kept connection meanwhile: once more
            // on a new one (the event may then arrive twice: at least once).
            Err(_) => fresh(dialer, url, request()?).await?,
        },
        None => fresh(dialer, url, request()?).await?,
    };
    let status = response.status().as_u16();
    // Read what the receiver sent (bounded) so the connection can carry the
    // next event; an answer too long just closes it.
    if Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .is_ok()
        && sender.ready().await.is_ok()
    {
        *conn = Some(sender);
    }
    if (300..400).contains(&status) {
        return Err(format!("answered {status}; redirects are not followed"));
    }
    Ok(status)
}

/// Sends `request` on a new connection.
async fn fresh(
    dialer: &Dialer,
    url: &WebhookUrl,
    request: Request<Full<Bytes>>,
) -> Result<
    (
        SendRequest<Full<Bytes>>,
        http::Response<hyper::body::Incoming>,
    ),
    String,
> {
    let mut sender = dialer.connect(url).await?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    Ok((sender, response))
}

/// Delivers, until aborted: polls for endpoints due and delivers to up to
/// [`PARALLEL`] of them at once.
pub(crate) async fn webhook_loop(state: Arc<State>) {
    let dialer = match Dialer::new(
        state.config.webhook_timeout,
        state.config.allow_private_webhooks,
    ) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!(error = %e, "webhooks will not be delivered by this node");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let outage = Outage::new(
        "finding webhook deliveries",
        "events wait in the database until it answers",
    );
    let mut pruned = state.app.now();
    loop {
        // Lease endpoints while there are free slots and endpoints due.
        loop {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                break;
            };
            match state.app.claim_webhook(&state.node, lease_ms(&state)).await {
                Ok(Some(hook)) => {
                    outage.recovered();
                    let (state, dialer) = (state.clone(), dialer.clone());
                    tokio::spawn(async move {
                        deliver(&state, &dialer, hook).await;
                        drop(slot);
                    });
                }
                Ok(None) => {
                    outage.recovered();
                    break;
                }
                Err(e) => {
                    outage.failed(&e, 0);
                    break;
                }
            }
        }
        if state.app.now().saturating_sub(pruned) > 3_600_000 {
            pruned = state.app.now();
            if let Err(e) = state.app.prune_deliveries(HISTORY_MS).await {
                tracing::warn!(error = %e, "could not prune the webhook history; trying again in an hour");
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long a lease lasts: enough for an attempt and its record, renewed at
/// each.
fn lease_ms(state: &State) -> i64 {
    i64::try_from(state.config.webhook_timeout.as_millis())
        .unwrap_or(i64::MAX / 8)
        .saturating_mul(3)
        .saturating_add(5_000)
}

/// Sends a leased endpoint's events in order until none is left, one fails,
/// or the lease is lost; then gives the lease back.
async fn deliver(state: &State, dialer: &Dialer, mut hook: WebhookRecord) {
    let node = state.node.as_str();
    let (url, key) = match (
        webhook::check_url(&hook.url),
        webhook::signing_key(&hook.secret),
    ) {
        (Ok(u), Some(k)) => (u, k),
        // Stored only after these checks; unreadable means tampered.
        _ => {
            tracing::error!(webhook = %hook.id, "stored webhook has an unreadable URL or secret; not delivering");
            return;
        }
    };
    let mut conn = None;
    'endpoint: loop {
        let events = match state.app.pending_events(&hook.id, BATCH).await {
            Ok(e) if e.is_empty() => break,
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(webhook = %hook.id, error = %e, "could not read webhook events; the lease runs out and they are sent later");
                return;
            }
        };
        for event in events {
            let attempt = attempt(state, dialer, &mut conn, &url, &key, &event).await;
            match state
                .app
                .record_attempt(node, &mut hook, &attempt, lease_ms(state))
                .await
            {
                Ok(true) if attempt.delivered => {}
                Ok(true) => {
                    if hook.disabled_at.is_some() {
                        tracing::warn!(webhook = %hook.id, url = %hook.url, "webhook disabled after failing for 24 h");
                    }
                    break 'endpoint;
                }
                Ok(false) => {
                    tracing::warn!(webhook = %hook.id, "lost the webhook's lease mid-delivery; another node continues");
                    return;
                }
                Err(e) => {
                    // Sent but not recorded: the next holder sends it again
                    // (at least once).
                    tracing::warn!(webhook = %hook.id, error = %e, "could not record a webhook attempt; it is sent again later");
                    return;
                }
            }
        }
    }
    if let Err(e) = state.app.release_webhook(node, &hook.id).await {
        tracing::debug!(webhook = %hook.id, error = %e, "could not release the webhook lease; it runs out");
    }
}

/// One signed attempt at `event`, within the attempt deadline.
async fn attempt(
    state: &State,
    dialer: &Dialer,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    url: &WebhookUrl,
    key: &[u8],
    event: &PendingEvent,
) -> Attempt {
    let body = Bytes::from(keyward_app::webhooks::event_body(event));
    let id = webhook::message_id(event.audit_seq);
    let at = state.app.now();
    let timestamp = at.div_euclid(1_000);
    let signature = webhook::sign(key, &id, timestamp, &body);
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    let started = crate::telemetry::monotonic();
    let result = tokio::time::timeout(dialer.timeout, post(dialer, conn, url, headers, body))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", dialer.timeout)));
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let (status, error) = match result {
        Ok(s) if (200..300).contains(&s) => (Some(s), None),
        Ok(s) => (Some(s), Some(format!("answered {s}"))),
        Err(e) => (None, Some(e)),
    };
    if error.is_some() {
        *conn = None;
    }
    Attempt {
        audit_seq: event.audit_seq,
        at,
        status,
        delivered: error.is_none(),
        error,
        duration_ms,
    }
}
