//! Forwarding to the upstream: header rewriting and a lean connection pool.
//!
//! The pool is a lock-free queue of idle HTTP/1 connections (hyper's
//! `client::conn` handles, no pool keyed by host, no waiters, no timers): a
//! request pops one or dials a new one, and the connection goes back when the
//! response body has been read to its end. A response dropped half-read
//! closes its connection instead, so a connection in the queue is always
//! between messages. A request that could not be written on a reused
//! connection (the upstream closed it while idle) is retried once on a new
//! one; nothing is retried once sent.

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Errors a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body sent upstream: the client's, streamed, with a size cap.
pub type ForwardBody = Limited<Incoming>;

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 1024;

/// Why forwarding failed. Each maps to one status in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 502: could not connect, or the connection failed mid-exchange.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// 504: no response head within the timeout.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// 413: the client's body exceeded the limit while streaming.
    #[error("request body exceeds the limit")]
    BodyTooLarge,
    /// 400: the client's body could not be read (invalid chunked framing, a
    /// body cut short): the client's fault, not the upstream's.
    #[error("{0}")]
    ClientBody(String),
}

/// One upstream origin (`http://host:port`).
pub struct Upstream {
    /// `host:port` to dial.
    address: String,
    /// Value of `Host` sent upstream.
    host: HeaderValue,
    idle: ArrayQueue<SendRequest<ForwardBody>>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Upstream {
    /// An upstream at `uri` (`http://host[:port]`, no path).
    ///
    /// # Errors
    /// A message naming what is wrong with the URL.
    pub fn new(uri: &Uri, connect_timeout: Duration, timeout: Duration) -> Result<Self, String> {
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--upstream `{uri}`: only http:// upstreams are supported (keyward sits beside the API it protects; terminate TLS in front of keyward)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--upstream `{uri}`: missing host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "--upstream `{uri}`: must not have a path; requests are forwarded with their own path"
            ));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("--upstream `{uri}`: {e}"))?;
        Ok(Upstream {
            address: format!("{}:{port}", authority.host()),
            host,
            idle: ArrayQueue::new(MAX_IDLE),
            connect_timeout,
            timeout,
        })
    }

    /// The `Host` header value for forwarded requests.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    async fn connect(&self) -> Result<SendRequest<ForwardBody>, ProxyError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        .map_err(|_| {
            ProxyError::Unreachable(format!(
                "connecting to {} timed out after {:?}",
                self.address, self.connect_timeout
            ))
        })?
        .map_err(|e| ProxyError::Unreachable(format!("connecting to {}: {e}", self.address)))?;
        stream.set_nodelay(true).ok();
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// An idle connection ready for a request, if the pool has one.
    async fn pooled(&self) -> Option<SendRequest<ForwardBody>> {
        while let Some(mut sender) = self.idle.pop() {
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        None
    }

    /// Sends `req` and waits for the response head.
    ///
    /// # Errors
    /// [`ProxyError`].
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ForwardBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut req = req;
        let mut fresh = false;
        let (sender, result) = loop {
            let mut sender = match self.pooled().await {
                Some(s) => s,
                None => {
                    fresh = true;
                    self.connect().await?
                }
            };
            let sent = tokio::time::timeout_at(deadline, sender.try_send_request(req)).await;
            match sent {
                Err(_) => return Err(ProxyError::Timeout(self.timeout)),
                Ok(Ok(res)) => break (sender, res),
                Ok(Err(mut e)) => match e.take_message() {
                    // Not written: the idle connection was closed under us.
                    Some(back) if !fresh => req = back,
                    _ => return Err(classify(e.into_error())),
                },
            }
        };
        let (parts, body) = result.into_parts();
        Ok(Response::from_parts(
            parts,
            UpstreamBody {
                inner: body,
                sender: Some(sender),
                pool: self.clone(),
                done: false,
            },
        ))
    }
}

fn classify(e: hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge;
        }
        source = s.source();
    }
    // A "user" error of the upstream connection is the body we streamed
    // into it failing: the client's body, read as it was forwarded.
    if e.is_user() {
        let cause =
            std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        return ProxyError::ClientBody(cause);
    }
    ProxyError::Unreachable(e.to_string())
}

/// An upstream response body that hands its connection back to the pool once
/// read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    sender: Option<SendRequest<ForwardBody>>,
    pool: Arc<Upstream>,
    done: bool,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            // A full queue simply closes the surplus connection.
            let _ = self.pool.idle.push(sender);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.done = true;
            this.release();
        }
        polled.map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.done || http_body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus `Expect`, which keyward answers itself.
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    header::EXPECT,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names they do carry is
    // cheaper than ten hashed lookups.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Removes the request headers an upstream could take for keyward's own or
/// act on instead of the request keyward judged: every name that, with `_`
/// read as `-` (as CGI and WSGI servers fold it), is `x-keyward-*`,
/// `x-forwarded-*`, `x-request-id`, a method override, a URL rewrite or a
/// client address ([`OVERRIDES`]); and, unless `allow_underscores`, every
/// name holding a `_` at all (nginx's default), so no other folded spelling
/// can shadow a header the upstream trusts. keyward then writes
/// `X-Forwarded-For` (the peer), `-Proto` and `-Host` itself.
pub fn strip_spoofable_headers(headers: &mut HeaderMap, allow_underscores: bool) {
    // One pass over the names (most requests carry none of these).
    if !headers
        .keys()
        .any(|n| is_spoofable(n.as_str().as_bytes(), allow_underscores))
    {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_spoofable(n.as_str().as_bytes(), allow_underscores))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// Headers that make common back ends act on another method or path than
/// the request line's: method overrides (Rails, Symfony, ASP.NET, Express)
/// and original-URL rewrites (IIS, Symfony, Envoy). The gateway strips them;
/// `/v1/authorize`, whose proxy passes the client's headers on, refuses them
/// (`crate::authorize::acts_instead`).
pub const METHOD_AND_PATH_OVERRIDES: [&[u8]; 6] = [
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
    b"x-original-url",
    b"x-rewrite-url",
    b"x-envoy-original-path",
];

/// Further headers that make common back ends act on another request or
/// client than the one keyward authorized: nginx's `auth_request`
/// originals, RFC 7239 `Forwarded` (preferred over `X-Forwarded-*` by
/// Spring), and the client-address headers of other proxies and CDNs.
/// keyward writes none of them, nor [`METHOD_AND_PATH_OVERRIDES`].
pub const OVERRIDES: [&[u8]; 19] = [
    b"x-original-uri",
    b"x-original-method",
    b"forwarded",
    b"x-real-ip",
    b"true-client-ip",
    b"x-client-ip",
    b"client-ip",
    b"x-cluster-client-ip",
    b"cf-connecting-ip",
    b"fastly-client-ip",
    b"x-envoy-external-address",
    b"x-envoy-internal",
    b"forwarded-for",
    b"x-original-forwarded-for",
    b"x-original-host",
    b"x-host",
    b"front-end-https",
    b"x-scheme",
    b"x-url-scheme",
];

/// Whether a (lower-case) header name must not reach the upstream.
fn is_spoofable(name: &[u8], allow_underscores: bool) -> bool {
    if name.starts_with(b"x-keyward-")
        || name.starts_with(b"x-forwarded-")
        || name == b"x-request-id"
        || OVERRIDES.contains(&name)
        || METHOD_AND_PATH_OVERRIDES.contains(&name)
    {
        return true;
    }
    if name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
        return false;
    }
    // Punctuation other than `-`: dropped (nginx's `ignore_invalid_headers`),
    // except `_` when allowed. CGI and WSGI servers fold `_` into `-`, and
    // lighttpd's CGI folds every other character too.
    if !allow_underscores
        || name
            .iter()
            .any(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return true;
    }
    // Underscores allowed: still never a folded spelling of those.
    folded_starts(name, b"x-keyward-")
        || folded_starts(name, b"x-forwarded-")
        || folded_eq(name, b"x-request-id")
        || OVERRIDES.iter().any(|o| folded_eq(name, o))
        || METHOD_AND_PATH_OVERRIDES.iter().any(|o| folded_eq(name, o))
}

/// Whether header `name` reads as `canonical` once every character other
/// than a letter or digit is folded into `-`, as CGI, WSGI and lighttpd do
/// (`x_keyward.scopes` is `x-keyward-scopes` to them).
pub(crate) fn folded_eq(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(&x, &y)| (if x.is_ascii_alphanumeric() { x } else { b'-' }) == y)
}

/// [`folded_eq`] for a prefix.
pub(crate) fn folded_starts(name: &[u8], prefix: &[u8]) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| folded_eq(head, prefix))
}

#[cfg(test)]
mod tests {
    use super::is_spoofable;

    #[test]
    fn keyward_headers_in_every_spelling_are_spoofable() {
        // Header names reach us lower-cased.
        for name in [
            "x-keyward-scopes",
            "x_keyward_scopes",
            "x-keyward_org_id",
            "x_keyward-key-id",
            "x-keyward-anything",
            "x_request_id",
            "x_forwarded_for",
            "x-forwarded_host",
            "x-http-method-override",
            "x_http_method_override",
            "x-http-method",
            "x-method-override",
            "x-original-url",
            "x_original_url",
            "x-rewrite-url",
            "x-original-method",
            "forwarded",
            "x-forwarded-prefix",
            "x-forwarded-for",
            "x-forwarded-uri",
            "x-forwarded-port",
            "x-request-id",
            "x-real-ip",
            "x_real_ip",
            "true-client-ip",
            "x-envoy-original-path",
            "x-keyward.scopes",
            "x-keyward~scopes",
            "x-forwarded.for",
            "fastly-client-ip",
            "x-original-host",
            "forwarded-for",
        ] {
            for allow in [false, true] {
                assert!(is_spoofable(name.as_bytes(), allow), "{name} allow={allow}");
            }
        }
        for name in ["x.api.version", "x~custom", "x!y"] {
            for allow in [false, true] {
                assert!(is_spoofable(name.as_bytes(), allow), "{name} allow={allow}");
            }
        }
        for name in ["my_header", "x_api_version", "some_thing"] {
            assert!(is_spoofable(name.as_bytes(), false), "{name}");
            assert!(!is_spoofable(name.as_bytes(), true), "{name}");
        }
        for name in ["content-type", "x-keywardish", "x-requestid"] {
            for allow in [false, true] {
                assert!(
                    !is_spoofable(name.as_bytes(), allow),
                    "{name} allow={allow}"
                );
            }
        }
    }
}
