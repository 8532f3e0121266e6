//! The HTTP plumbing every room of the server shares: the client of a
//! connection, JSON replies, reading bodies within their limits.

use crate::body::Body;
use crate::error::ApiError;
use crate::telemetry::X_REQUEST_ID;
use bytes::Bytes;
use http::header::{ALLOW, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::net::SocketAddr;

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

/// Largest JSON body keyward's own endpoints read.
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

/// A JSON string. Names and ids need no escaping and are copied as they are;
/// anything else goes through serde_json, so escaping has one definition.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing to a Vec cannot fail; keep the document well formed anyway.
        out.extend_from_slice(b"null");
    }
}

/// Reads a JSON body of at most [`MAX_JSON_BYTES`].
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
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
