//! The HTTP plumbing every room of the server shares: the client of a
//! connection, JSON replies, reading bodies within their limits, and the
//! extractors and replies of the routed rooms (the admin API, the console):
//! whatever a client sends is refused in the one error shape, with one
//! status per kind of fault, whichever room it reached.

use crate::body::Body;
use crate::error::ApiError;
use crate::telemetry::X_REQUEST_ID;
use axum::extract::{FromRequest, FromRequestParts, Path, Request as AxRequest};
use axum::response::IntoResponse;
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
/// JSON strings written by hand (verify's answer) escape as audit details do.
pub(crate) use keyward_app::push_json_str;
use keyward_core::limits::Network;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// The peer of a connection, its address rendered once per connection and
/// shared by its requests: `X-Forwarded-For`, audit records, sign-in throttles.
#[derive(Clone)]
pub(crate) struct Client {
    /// The address as a header value (`X-Forwarded-For`).
    pub(crate) ip: HeaderValue,
    /// The address, for a key's allowed networks.
    pub(crate) addr: std::net::IpAddr,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Client {
            ip: HeaderValue::try_from(addr.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            addr: addr.ip(),
        }
    }

    /// The client behind trusted proxies. When the peer is one of
    /// `trusted`, `X-Forwarded-For` (every such header, in order) is read
    /// from the right: each address that is itself a trusted proxy is a hop
    /// to pass over, and the first that is not is the client. A malformed
    /// entry ends the walk at the last address read, so a client cannot
    /// make itself anyone by writing garbage. Otherwise the peer is the
    /// client and the header is ignored.
    pub(crate) fn behind(&self, headers: &http::HeaderMap, trusted: &[Network]) -> Client {
        let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
        if !is_trusted(self.addr) {
            return self.clone();
        }
        let mut client = self.addr;
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Client::new(std::net::SocketAddr::new(client, 0))
    }

    /// The address as text (an address renders as ASCII, so never empty).
    pub(crate) fn ip_text(&self) -> &str {
        self.ip.to_str().unwrap_or("unknown")
    }
}

/// Response helpers shared by the modules.
pub(crate) fn json_response(
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
pub(crate) fn json_bytes_response(
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

/// Largest body keyward's own endpoints read (JSON, and the console's forms).
pub(crate) const MAX_JSON_BYTES: usize = 64 * 1024;

pub(crate) fn method_not_allowed(
    method: &Method,
    path: &str,
    allowed: &[Method],
    request_id: &HeaderValue,
) -> Response<Body> {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!(
            "{method} {path} is not supported; use {}",
            names.join(" or ")
        ),
    );
    let mut res = e.into_response(Some(request_id));
    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
        res.headers_mut().insert(ALLOW, v);
    }
    res
}

/// How long a client may take to send a body to keyward's own endpoints
/// (408 beyond): a body trickled a byte at a time must not hold the
/// connection and its buffer for ever.
pub(crate) const BODY_READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) fn request_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT",
        format!(
            "The request body did not arrive within {} s",
            BODY_READ_DEADLINE.as_secs()
        ),
    )
}

/// Reads a JSON body of at most [`MAX_JSON_BYTES`].
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    tokio::time::timeout(BODY_READ_DEADLINE, read_body_now(body))
        .await
        .map_err(|_| request_timeout())?
}

async fn read_body_now(body: Incoming) -> Result<Bytes, ApiError> {
    let mut body = Limited::new(body, MAX_JSON_BYTES);
    // The common case is one data frame: take it without collecting.
    let first = match body.frame().await {
        None => return Ok(Bytes::new()),
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        Some(Err(e)) => return Err(body_error(&*e)),
    };
    if http_body::Body::is_end_stream(&body) {
        return Ok(first);
    }
    match body.collect().await {
        Ok(rest) => {
            let mut all = first.to_vec();
            all.extend_from_slice(&rest.to_bytes());
            Ok(Bytes::from(all))
        }
        Err(e) => Err(body_error(&*e)),
    }
}

pub(crate) fn body_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ApiError {
    if e.is::<http_body_util::LengthLimitError>() {
        ApiError::payload_too_large(MAX_JSON_BYTES as u64)
    } else {
        ApiError::bad_request(format!("Could not read the request body: {e}"))
    }
}

// ---- routed rooms (admin API, console) ------------------------------------

/// What dispatch knows of a request before the router sees it.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) request_id: HeaderValue,
}

impl Ctx {
    /// keyward's request id as text, for audit records.
    pub(crate) fn request_id_text(&self) -> Option<String> {
        self.request_id.to_str().ok().map(str::to_owned)
    }
}

pub(crate) fn ctx(parts: &Parts) -> Ctx {
    parts
        .extensions
        .get::<Ctx>()
        .cloned()
        .unwrap_or_else(|| Ctx {
            client: Client::new(SocketAddr::from(([0, 0, 0, 0], 0))),
            request_id: HeaderValue::from_static("unknown"),
        })
}

/// A finished response, success or error, in keyward's body type (boxed:
/// it travels in `Err` through every extractor and handler).
pub(crate) struct Reply(Box<Response<Body>>);

pub(crate) fn reply(res: Response<Body>) -> Reply {
    Reply(Box::new(res))
}

impl Reply {
    /// Its headers, to add a cookie or `Retry-After`.
    pub(crate) fn headers_mut(&mut self) -> &mut http::HeaderMap {
        self.0.headers_mut()
    }

    /// The status it answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.0.status()
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> axum::response::Response {
        (*self.0).map(axum::body::Body::new)
    }
}

pub(crate) type Answer = Result<Reply, Reply>;

pub(crate) fn fail(e: impl Into<ApiError>, ctx: &Ctx) -> Reply {
    reply(e.into().into_response(Some(&ctx.request_id)))
}

pub(crate) fn ok(status: StatusCode, value: &impl Serialize, ctx: &Ctx) -> Answer {
    let mut res = json_response(status, value, &ctx.request_id);
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(reply(res))
}

/// Parses serde output into a value or a 422 naming the offending field.
pub(crate) fn deserialize<'de, T: Deserialize<'de>>(
    de: impl serde::Deserializer<'de, Error = impl std::fmt::Display + serde::de::Error>,
    what: &str,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.inner().to_string();
        let (field, message) = if field == "." {
            // Unknown and missing fields name themselves in serde's message.
            let named = between_backticks(&inner).unwrap_or_default();
            (named, format!("Invalid {what}: {inner}"))
        } else {
            (field.clone(), format!("Invalid {what}: `{field}`: {inner}"))
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            message,
        )
        .detail("field", field)
    })
}

pub(crate) fn between_backticks(s: &str) -> Option<String> {
    let (_, rest) = s.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    Some(name.to_owned())
}

/// A JSON request body: at most 64 KiB, syntax errors 400, wrong shapes 422
/// naming the field, too large 413.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Reply;

    async fn from_request(req: AxRequest, _: &S) -> Result<Self, Reply> {
        let (parts, body) = req.into_parts();
        let ctx = ctx(&parts);
        let bytes = read(body, &ctx).await?;
        parse_json(&bytes, &ctx).map(JsonBody)
    }
}

/// Like [`JsonBody`], but an empty body means the defaults.
pub(crate) struct OptionalJsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = Reply;

    async fn from_request(req: AxRequest, _: &S) -> Result<Self, Reply> {
        let (parts, body) = req.into_parts();
        let ctx = ctx(&parts);
        let bytes = read(body, &ctx).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes, &ctx).map(OptionalJsonBody)
    }
}

/// Reads a routed room's request body whole, within [`MAX_JSON_BYTES`]:
/// 413 beyond, 400 when the client's body breaks off. The admin API's JSON
/// and the console's forms read through here.
pub(crate) async fn read_limited(body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    read_limited_to(body, MAX_JSON_BYTES).await
}

/// [`read_limited`] with another limit, for the one body that is not an
/// admin document (GitHub's secret scanning reports).
pub(crate) async fn read_limited_to(
    body: axum::body::Body,
    max: usize,
) -> Result<bytes::Bytes, ApiError> {
    let read = tokio::time::timeout(BODY_READ_DEADLINE, axum::body::to_bytes(body, max))
        .await
        .map_err(|_| request_timeout())?;
    read.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return ApiError::payload_too_large(max as u64);
            }
            source = s.source();
        }
        ApiError::bad_request(format!("Could not read the request body: {e}"))
    })
}

/// [`read_limited`], refused in the error document.
pub(crate) async fn read(body: axum::body::Body, ctx: &Ctx) -> Result<bytes::Bytes, Reply> {
    read_limited(body).await.map_err(|e| fail(e, ctx))
}

/// `%00` anywhere in a path or query: a NUL once decoded, which no id,
/// filter or name may hold (and PostgreSQL text cannot store).
pub(crate) fn has_encoded_nul(raw: &str) -> bool {
    raw.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Refuses a JSON body that is not an object. serde's derived structs also
/// take an array, mapping its items to fields in the order the code declares
/// them, which no client should come to depend on. A document that is not
/// JSON at all is 400; JSON of another type is 422 naming the body. Only
/// the first byte is looked at unless it is wrong, so the hot path (verify)
/// pays nothing.
pub(crate) fn json_object(bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(());
    }
    Err(
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => ApiError::bad_request(format!("Invalid JSON body: {syntax}")),
            Ok(_) => ApiError::validation("body", "invalid type: the body must be a JSON object"),
        },
    )
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8], ctx: &Ctx) -> Result<T, Reply> {
    // `\u0000` is the only way to put a NUL in JSON text.
    if bytes
        .windows(6)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].eq_ignore_ascii_case(b"0000"))
    {
        return Err(fail(
            ApiError::validation("body", "strings cannot contain NUL characters"),
            ctx,
        ));
    }
    json_object(bytes).map_err(|e| fail(e, ctx))?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = deserialize(&mut de, "JSON body").map_err(|e| {
        // Syntax (not shape) problems are 400: the document is not JSON.
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => fail(
                ApiError::bad_request(format!("Invalid JSON body: {syntax}")),
                ctx,
            ),
            Ok(_) => fail(e, ctx),
        }
    })?;
    de.end().map_err(|e| {
        fail(
            ApiError::bad_request(format!("Invalid JSON body: {e}")),
            ctx,
        )
    })?;
    Ok(value)
}

/// Query parameters: unknown ones and wrong types are 422 naming them.
pub(crate) struct QueryArgs<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = Reply;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Reply> {
        let ctx = ctx(parts);
        let query = parts.uri.query().unwrap_or("");
        if has_encoded_nul(query) {
            return Err(fail(
                ApiError::validation("query", "query parameters cannot contain NUL characters"),
                &ctx,
            ));
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        deserialize(de, "query parameter")
            .map(QueryArgs)
            .map_err(|e| fail(e, &ctx))
    }
}

pub(crate) fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// Path parameters, decoded; undecodable ones are 400 in the SPEC shape.
pub(crate) struct PathArgs<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathArgs<T> {
    type Rejection = Reply;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Reply> {
        let ctx = ctx(parts);
        if has_encoded_nul(parts.uri.path()) {
            return Err(fail(
                ApiError::bad_request("Invalid path: it contains a NUL character"),
                &ctx,
            ));
        }
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathArgs(v)),
            Err(e) => Err(fail(
                ApiError::bad_request(format!("Invalid path: {}", e.body_text())),
                &ctx,
            )),
        }
    }
}

pub(crate) async fn not_found(parts: Parts) -> Reply {
    let ctx = ctx(&parts);
    fail(
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!(
                "keyward has no endpoint {} {}",
                parts.method,
                parts.uri.path()
            ),
        ),
        &ctx,
    )
}

pub(crate) async fn wrong_method(parts: Parts) -> Reply {
    let ctx = ctx(&parts);
    fail(
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{} is not supported on {}", parts.method, parts.uri.path()),
        ),
        &ctx,
    )
}
