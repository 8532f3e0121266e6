//! Forward authentication (SPEC §12): `/v1/authorize` answers, for a proxy
//! in front of the API (nginx `auth_request`, Caddy `forward_auth`,
//! Traefik `ForwardAuth`, Envoy `ext_authz`), whether the request it
//! describes may pass. The decision is the gateway's own
//! ([`crate::gateway::admit`]: prefix, normal form, staleness, key, limits,
//! route, scopes, refusals and their audit); only where the method and
//! path come from differs, and that an allowed request is answered 200
//! with the caller's identity instead of being forwarded.
//!
//! The request is described by exactly one of two header pairs,
//! `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik, Caddy) or
//! `X-Original-Method` + `X-Original-URI` (nginx), or, for Envoy's
//! `path_prefix`, by the path after `/v1/authorize` and the request's own
//! method. A request carrying both pairs, half of one, or either twice is
//! refused (400): nginx passes the client's headers on to its subrequest,
//! so a client could otherwise add the pair nginx does not set and have a
//! request judged that is not the one it sends.

use crate::auth::{Exchange, is_write};
use crate::body::Body;
use crate::error::ApiError;
use crate::gateway::{admit, put_identity, write_gate};
use crate::state::State;
use crate::telemetry::{X_REQUEST_ID, monotonic};
use crate::web::Client;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;

/// The endpoint; `/v1/authorize/<path>` is Envoy's form.
pub(crate) const PATH: &str = "/v1/authorize";

/// On refusals of nginx's form: the status, and the error document, since
/// `auth_request` answers the client itself and drops the subrequest's
/// body (docs/proxies.md shows how nginx puts them back).
static X_KEYWARD_STATUS: HeaderName = HeaderName::from_static("x-keyward-status");
static X_KEYWARD_ERROR: HeaderName = HeaderName::from_static("x-keyward-error");

/// Where the described request came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `X-Forwarded-Method` + `X-Forwarded-Uri`.
    Forwarded,
    /// `X-Original-Method` + `X-Original-URI` (nginx).
    Original,
    /// `/v1/authorize/<path>` with the request's method (Envoy).
    Prefixed,
}

/// Answers one forward authentication request.
pub(crate) async fn authorize(
    state: &State,
    peer: &Client,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let started = monotonic();
    let (parts, body) = req.into_parts();
    // The body is never read: a connection that still carries one is closed
    // after the answer, and the proxy is told so.
    let body_pending = !hyper::body::Body::is_end_stream(&body);
    let (form, method, path) = match described(&parts, state.config.max_body_bytes) {
        Ok(d) => d,
        Err(e) => {
            state.metrics.refused(e.status.as_u16(), e.code);
            // nginx's form (recognised by its headers) gets the document in
            // headers whatever went wrong.
            let form = if parts.headers.contains_key("x-original-uri")
                || parts.headers.contains_key("x-original-method")
            {
                Form::Original
            } else {
                Form::Forwarded
            };
            return for_the_proxy(e.into_response(Some(request_id)), form);
        }
    };
    let client_request_id =
        crate::telemetry::client_request_id(parts.headers.get(&X_REQUEST_ID)).cloned();
    let write = is_write(&method);
    let ex = Exchange {
        method: &method,
        path: &path,
        client: peer,
        request_id,
        client_request_id: client_request_id.as_ref(),
        key: None,
    };
    let (key, decision, limited) =
        match admit(state, ex, &parts.headers, write, Some(started)).await {
            Ok(admitted) => admitted,
            Err(refused) => return for_the_proxy(refused, form),
        };
    if write {
        if let Some(refused) = write_gate(state, request_id) {
            return for_the_proxy(refused, form);
        }
        let ex = Exchange {
            key: Some(&key),
            ..ex
        };
        let entry = ex.audit(
            state.app.catalog().key_prefix(),
            &state.default_org,
            200,
            crate::auth::required_names(state, &decision),
            "authorized",
        );
        if state.record(entry).await.is_err() {
            let refused = crate::auth::audit_unavailable(state, request_id, None);
            return for_the_proxy(refused, form);
        }
    }
    let mut res = Response::new(Body::empty());
    put_identity(res.headers_mut(), &key, request_id);
    if body_pending {
        res.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(note) = limited {
        note.write(res.headers_mut());
    }
    res
}

/// The method and path of the request the proxy asks about.
fn described(
    parts: &http::request::Parts,
    max_body_bytes: u64,
) -> Result<(Form, Method, String), ApiError> {
    let own_path = parts.uri.path();
    let h = &parts.headers;
    refuse_what_the_api_may_act_on(h, max_body_bytes)?;
    if let Some(rest) = own_path.strip_prefix(PATH)
        && rest.starts_with('/')
    {
        // Described twice, by the path and by headers: refused like two
        // header pairs.
        if DESCRIBING.iter().any(|name| h.contains_key(*name)) {
            return Err(ApiError::bad_request(
                "Send exactly one description of the request: /v1/authorize/<path>, or a header pair, not both",
            ));
        }
        return Ok((Form::Prefixed, parts.method.clone(), rest.to_owned()));
    }
    let forwarded = (one(h, "x-forwarded-method")?, one(h, "x-forwarded-uri")?);
    let original = (one(h, "x-original-method")?, one(h, "x-original-uri")?);
    let (form, method, uri) = match (forwarded, original) {
        ((Some(m), Some(u)), (None, None)) => (Form::Forwarded, m, u),
        ((None, None), (Some(m), Some(u))) => (Form::Original, m, u),
        ((None, None), (None, None)) => {
            return Err(ApiError::bad_request(
                "Describe the request to authorize: X-Forwarded-Method and X-Forwarded-Uri (Traefik, Caddy), X-Original-Method and X-Original-URI (nginx), or /v1/authorize/<path> with its method (Envoy)",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "Send exactly one description of the request: both X-Forwarded-Method and X-Forwarded-Uri, or both X-Original-Method and X-Original-URI, not parts of both",
            ));
        }
    };
    let method = method
        .to_str()
        .ok()
        .filter(|m| keyward_core::path::check_method(m).is_ok())
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| ApiError::bad_request("The described method is not an HTTP method"))?;
    let uri = uri
        .to_str()
        .map_err(|_| ApiError::bad_request("The described URI is not ASCII"))?;
    if uri.len() > crate::config::MAX_REQUEST_TARGET {
        return Err(ApiError::new(
            http::StatusCode::URI_TOO_LONG,
            "URI_TOO_LONG",
            format!(
                "The described URI is longer than {} bytes",
                crate::config::MAX_REQUEST_TARGET
            ),
        ));
    }
    // Origin form only: the path, then the query, which no rule reads. A
    // `#` is refused with the path (never cut off: nginx forwards it).
    if !uri.starts_with('/') {
        return Err(ApiError::bad_request(
            "The described URI must be a path starting with `/`",
        ));
    }
    let path = uri.split_once('?').map_or(uri, |(p, _)| p);
    Ok((form, method, path.to_owned()))
}

/// The identity headers a proxy copies from keyward's 200 onto the request
/// to the API, replacing the client's.
const IDENTITY: [&str; 3] = ["x-keyward-key-id", "x-keyward-org-id", "x-keyward-scopes"];

/// Refuses what the gateway would never let reach the API but a proxy
/// would: a protocol upgrade (after a 101 the proxy tunnels bytes it never
/// asks about), a method or path override, an `X-Keyward-*` header from
/// the client in any spelling (back ends that fold `_` and other
/// punctuation into `-` would read it as keyward's), and a declared body
/// over `--max-body-bytes` (as the gateway answers 413).
fn refuse_what_the_api_may_act_on(h: &HeaderMap, max_body_bytes: u64) -> Result<(), ApiError> {
    if h.contains_key(http::header::UPGRADE)
        || h.get_all(http::header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
    {
        return Err(ApiError::bad_request(
            "Protocol upgrades are not authorized: after one, the proxy would pass on a connection keyward is never asked about",
        ));
    }
    if let Some(name) = h.keys().find(|n| acts_instead(n)) {
        return Err(ApiError::bad_request(format!(
            "The request carries `{name}`, which the API could act on instead of what keyward judged: send it without"
        ))
        .detail("header", name.as_str()));
    }
    let declared = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes) {
        return Err(ApiError::payload_too_large(max_body_bytes));
    }
    Ok(())
}

/// Whether a request header could make the API act on something other
/// than what keyward judged: a method or path override, an `X-Keyward-*`
/// other than the identity headers as spelled (which the proxy, or the
/// embedded layer, replaces), or a folded spelling of a header the proxy
/// or keyward sets (CGI and WSGI back ends read `X_Keyward_Scopes` and
/// `X-Request_Id` as the real ones).
pub(crate) fn acts_instead(name: &HeaderName) -> bool {
    use crate::proxy::{METHOD_AND_PATH_OVERRIDES, folded_eq, folded_starts};
    let name = name.as_str().as_bytes();
    // Most names cannot be one: decided on the first byte.
    if name.first() != Some(&b'x') {
        return false;
    }
    // Spelled with punctuation other than `-`: a folded spelling.
    let respelled = name
        .iter()
        .any(|&b| !(b.is_ascii_alphanumeric() || b == b'-'));
    let shadowing = respelled
        && (folded_eq(name, b"x-request-id")
            || folded_starts(name, b"x-forwarded-")
            || folded_starts(name, b"x-original-"));
    let keyward = folded_starts(name, b"x-keyward-")
        && (respelled || !IDENTITY.iter().any(|i| i.as_bytes() == name));
    shadowing || keyward || METHOD_AND_PATH_OVERRIDES.iter().any(|o| folded_eq(name, o))
}

/// The headers that describe a request.
const DESCRIBING: [&str; 4] = [
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-original-method",
    "x-original-uri",
];

/// The one value of header `name`, if any; a repeated header is refused.
fn one<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h HeaderValue>, ApiError> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "`{name}` is repeated: the request to authorize must be described once"
        )));
    }
    Ok(first)
}

/// A refusal as the proxy passes it on. nginx's form also carries the
/// status and the error document in headers.
fn for_the_proxy(mut refused: Response<Body>, form: Form) -> Response<Body> {
    if form != Form::Original {
        return refused;
    }
    let status = refused.status();
    let body = match std::mem::replace(refused.body_mut(), Body::empty()) {
        Body::Full(bytes) => bytes.unwrap_or_default(),
        other => {
            *refused.body_mut() = other;
            return refused;
        }
    };
    if let Ok(v) = HeaderValue::from_str(status.as_str()) {
        refused.headers_mut().insert(X_KEYWARD_STATUS.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&ascii_json(&body)) {
        refused.headers_mut().insert(X_KEYWARD_ERROR.clone(), v);
    }
    *refused.body_mut() = Body::full(body);
    refused
}

/// A JSON document in printable ASCII only (other characters as `\uXXXX`),
/// so that it fits in a header value.
fn ascii_json(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' '..='~' => out.push(c),
            other => {
                let mut units = [0u16; 2];
                for u in other.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

    use super::ascii_json;

    #[test]
    fn documents_in_headers_are_printable_ascii_and_the_same_json() {
        let doc = serde_json::json!({"errors": [{"message": "No route for /é/☃/𝄞\t\"x\""}]});
        let text = ascii_json(doc.to_string().as_bytes());
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "{text}");
        assert!(http::HeaderValue::from_str(&text).is_ok());
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }
}
