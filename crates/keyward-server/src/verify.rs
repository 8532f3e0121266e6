//! `POST /v1/verify`: the decision for a key another service received,
//! written by hand because it sits on integrations' hot paths.

use crate::auth::{Asked, Question, caller, check_limits, check_token, decide, find_key, require};
use crate::body::Body;
use crate::error::ApiError;
use crate::state::State;
use crate::web::{Client, json_bytes_response, push_json_str, read_body};
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use keyward_core::{AuthFailure, GrantRequest, Outcome, ScopeSet, path};
use serde::Deserialize;
use std::borrow::Cow;

/// `POST /v1/verify` body. Unknown fields are refused so a typo in `scopes`
/// cannot silently verify nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    path: Option<Cow<'a, str>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// The address the key was presented from, for its allowed networks.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    client_ip: Option<Cow<'a, str>>,
}

/// An optional string borrowed from the body where it has no escapes: serde
/// copies `Option<Cow<str>>` even under `#[serde(borrow)]`.
fn borrowed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|b| b.0))
}

/// `POST /v1/verify`'s answer (the shape of `admin::VerifyResponseDoc`).
struct VerifyResponse<'a, S, R, M> {
    valid: bool,
    allowed: bool,
    key_id: Option<&'a str>,
    org_id: Option<&'a str>,
    scopes: S,
    required: R,
    missing: M,
    reason: &'static str,
    /// Seconds until a rate limit admits again; written only when refused
    /// by one.
    retry_after: Option<i64>,
}

impl<'a, S, R, M> VerifyResponse<'a, S, R, M>
where
    S: Iterator<Item = &'a str>,
    R: Iterator<Item = &'a str>,
    M: Iterator<Item = &'a str>,
{
    /// Written by hand rather than through serde: verify is on integrations'
    /// hot path, and this answer is most of its own work (the scope names go
    /// straight from the catalog into the buffer, with no `Vec` per list).
    /// The unit tests hold it byte for byte to serde_json's output.
    fn into_json(self) -> Vec<u8> {
        // Enough for a key holding a dozen scopes without growing.
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"valid\":");
        out.extend_from_slice(bool_json(self.valid));
        out.extend_from_slice(b",\"allowed\":");
        out.extend_from_slice(bool_json(self.allowed));
        out.extend_from_slice(b",\"key_id\":");
        push_json_opt(&mut out, self.key_id);
        out.extend_from_slice(b",\"org_id\":");
        push_json_opt(&mut out, self.org_id);
        out.extend_from_slice(b",\"scopes\":");
        push_json_names(&mut out, self.scopes);
        out.extend_from_slice(b",\"required\":");
        push_json_names(&mut out, self.required);
        out.extend_from_slice(b",\"missing\":");
        push_json_names(&mut out, self.missing);
        out.extend_from_slice(b",\"reason\":");
        push_json_str(&mut out, self.reason);
        if let Some(secs) = self.retry_after {
            out.extend_from_slice(b",\"retry_after\":");
            out.extend_from_slice(secs.to_string().as_bytes());
        }
        out.push(b'}');
        out
    }
}

fn bool_json(b: bool) -> &'static [u8] {
    if b { b"true" } else { b"false" }
}

fn push_json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A list of scope names. The catalog admits only `[a-z0-9:-]` names
/// (`is_valid_scope_name`), which JSON takes as they are.
fn push_json_names<'a>(out: &mut Vec<u8>, names: impl Iterator<Item = &'a str>) {
    out.push(b'[');
    for (i, name) in names.enumerate() {
        debug_assert!(keyward_core::scope::is_valid_scope_name(name), "{name}");
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
    }
    out.push(b']');
}

/// Parses a JSON body; syntax errors are 400, wrong shapes 422.
fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    crate::web::json_object(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| {
        let message = format!("Invalid JSON body: {e}");
        match e.classify() {
            serde_json::error::Category::Data => match wrong_field(bytes) {
                Some(field) => ApiError::validation(field, message),
                None => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "VALIDATION_FAILED",
                    message,
                ),
            },
            _ => ApiError::bad_request(message),
        }
    })
}

/// The field of a verify body that has the wrong type, is unknown or is
/// missing, for the 422's `details.field` (only on the error path: serde's
/// message says what is wrong, not where).
fn wrong_field(bytes: &[u8]) -> Option<&'static str> {
    use serde_json::Value;
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    let text = |v: Option<&Value>| matches!(v, None | Some(Value::Null | Value::String(_)));
    if !matches!(body.get("key"), Some(Value::String(_))) {
        return Some("key");
    }
    for field in ["method", "path", "client_ip"] {
        if !text(body.get(field)) {
            return Some(field);
        }
    }
    match body.get("scopes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => return Some("scopes"),
    }
    None
}

pub(crate) async fn verify(
    state: &State,
    client: &Client,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let asked = Asked::of(state, &req, client, request_id);
    let caller_entry = match caller(state, &asked, false).await {
        Ok(e) => e,
        Err(res) => return res,
    };
    if let Err(res) = require(state, &asked, &caller_entry, state.verify_scope).await {
        return res;
    }
    let catalog = state.app.catalog();
    let now = asked.now;
    let bytes = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return e.into_response(Some(request_id)),
    };
    let body: VerifyRequest<'_> = match parse_json(&bytes) {
        Ok(b) => b,
        Err(e) => return e.into_response(Some(request_id)),
    };
    let question = match (&body.method, &body.path, &body.scopes) {
        (Some(m), Some(p), None) => {
            let route_path = p.split('?').next().unwrap_or(p);
            if let Err(e) = path::check_normal(route_path) {
                return ApiError::validation(
                    "path",
                    format!("path `{p}` is not in normal form: {e}"),
                )
                .into_response(Some(request_id));
            }
            let route_path = path::strip_gateway_prefix(catalog.gateway_prefix(), route_path)
                .unwrap_or(route_path);
            // Decided as the gateway decides: as sent, case and all.
            if let Err(e) = path::check_method(m) {
                return ApiError::validation("method", e.to_string())
                    .into_response(Some(request_id));
            }
            Question::Route(m, route_path)
        }
        (None, None, Some(scopes)) => {
            let req = GrantRequest {
                scopes: scopes.clone(),
                ..GrantRequest::default()
            };
            match catalog.resolve_grants(&req) {
                Ok(r) => Question::Scopes(r.granted),
                Err(e) => {
                    return ApiError::validation("scopes", e.to_string())
                        .into_response(Some(request_id));
                }
            }
        }
        _ => {
            return ApiError::validation("method", "send either `method` and `path`, or `scopes`")
                .into_response(Some(request_id));
        }
    };
    let found = match find_key(state, check_token(&body.key)).await {
        Ok(f) => f,
        Err(e) => return e.into_response(Some(request_id)),
    };
    // Another organization's key is unknown here.
    let found = found.and_then(|e| {
        if e.org_id == caller_entry.org_id {
            Ok(e)
        } else {
            Err(AuthFailure::Unknown)
        }
    });
    let access = found.as_ref().map(|e| e.access()).map_err(|f| *f);
    let decision = decide(catalog, access.as_ref().map_err(|f| *f), now, &question);
    let entry = found.as_ref().ok();
    let valid = !matches!(decision.outcome, Outcome::Unauthenticated(_));
    // Limits, for an authenticated key, before its route and scopes, as
    // the gateway decides them; counted like a gateway request.
    let mut limited: Option<(&'static str, Option<i64>)> = None;
    if valid && let Some(limits) = entry.and_then(|e| e.limits.as_deref()) {
        let client = match body
            .client_ip
            .as_deref()
            .map(str::parse::<std::net::IpAddr>)
        {
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => {
                return ApiError::validation("client_ip", "is not an IPv4 or IPv6 address")
                    .into_response(Some(request_id));
            }
            None => None,
        };
        limited = match client {
            // A key bound to networks is not allowed from nowhere.
            None if !limits.networks.is_empty() => Some(("ip_not_allowed", None)),
            // Networks hold only addresses: the unspecified one matches none.
            client => match check_limits(
                state,
                limits,
                client.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                now,
            )
            .await
            {
                Ok(_) => None,
                Err(refused) => Some((refused.reason, refused.note.map(|n| n.reset_secs))),
            },
        };
    }
    // The key's use, like a gateway request to the same route; asked by
    // scopes, a use without a route (which keeps every grant in the
    // suggestion: what it needed is not known). Its last use either way.
    if let Some(key) = entry.filter(|_| valid) {
        let method = match &question {
            Question::Route(method, _) => method,
            Question::Scopes(_) | Question::Outside => "VERIFY",
        };
        crate::auth::count_use(state, key, &decision, method, limited.map(|(r, _)| r), now);
        state.snapshot.record_use(key, now);
    }
    let answer = VerifyResponse {
        valid,
        allowed: decision.is_allowed() && limited.is_none(),
        key_id: entry.filter(|_| valid).map(|e| &*e.key_id),
        org_id: entry.filter(|_| valid).map(|e| &*e.org_id),
        scopes: catalog.name_iter(if valid {
            decision.effective
        } else {
            ScopeSet::EMPTY
        }),
        required: catalog.name_iter(decision.required),
        missing: catalog.name_iter(decision.missing),
        reason: limited.map_or(decision.reason(), |(reason, _)| reason),
        retry_after: limited.and_then(|(_, secs)| secs),
    };
    json_bytes_response(StatusCode::OK, answer.into_json(), request_id)
}

/// The verify service's side of the `json_bodies` fuzz target: its body
/// parser and path check refuse with a 4xx, never a panic.
pub(crate) fn fuzz_verify_body(data: &[u8]) {
    match parse_json::<VerifyRequest<'_>>(data) {
        Ok(body) => {
            let _ = check_token(&body.key);
            if let Some(p) = body.path.as_deref() {
                let route_path = p.split('?').next().unwrap_or(p);
                let _ = path::check_normal(route_path);
            }
        }
        Err(e) => assert!(e.status.is_client_error(), "{} for a body", e.status),
    }
}

#[cfg(test)]
mod tests {
    use super::VerifyResponse;

    /// The serde shape the hand-written answer must match byte for byte.
    #[derive(serde::Serialize)]
    struct Oracle<'a> {
        valid: bool,
        allowed: bool,
        key_id: Option<&'a str>,
        org_id: Option<&'a str>,
        scopes: Vec<&'a str>,
        required: Vec<&'a str>,
        missing: Vec<&'a str>,
        reason: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<i64>,
    }

    fn both(o: &Oracle<'_>) -> (String, String) {
        let hand = VerifyResponse {
            valid: o.valid,
            allowed: o.allowed,
            key_id: o.key_id,
            org_id: o.org_id,
            scopes: o.scopes.iter().copied(),
            required: o.required.iter().copied(),
            missing: o.missing.iter().copied(),
            reason: o.reason,
            retry_after: o.retry_after,
        }
        .into_json();
        (
            String::from_utf8(hand).expect("hand-written JSON is UTF-8"),
            serde_json::to_string(o).expect("serializes"),
        )
    }

    /// Scope names as the catalog admits them.
    const NAMES: [&str; 3] = ["vehicles:read", "keyward-api-keys:verify", "a2:b-c"];

    #[test]
    fn verify_answer_matches_serde_byte_for_byte() {
        let odd = [
            "key_abc",
            "",
            "quote\"inside",
            "back\\slash",
            "new\nline\ttab\u{1}\u{1f}\u{7f}",
            "ünïcødé ✓ 🔑",
            "</script>",
        ];
        for (i, s) in odd.iter().enumerate() {
            let o = Oracle {
                valid: i % 2 == 0,
                allowed: i % 3 == 0,
                key_id: Some(s),
                org_id: (i % 2 == 1).then_some(*s),
                scopes: NAMES[..i.min(NAMES.len())].to_vec(),
                required: vec![NAMES[i % NAMES.len()]],
                missing: Vec::new(),
                reason: "missing_scopes",
                retry_after: (i % 2 == 0).then_some(i64::try_from(i).unwrap_or(0) * 7),
            };
            let (hand, serde) = both(&o);
            assert_eq!(hand, serde, "case {i}: {s:?}");
            let parsed: serde_json::Value = serde_json::from_str(&hand).expect("valid JSON");
            assert_eq!(parsed["key_id"], *s);
        }
        let none = Oracle {
            valid: false,
            allowed: false,
            key_id: None,
            org_id: None,
            scopes: Vec::new(),
            required: vec!["vehicles:read", "vehicles:write"],
            missing: vec!["vehicles:write"],
            reason: "revoked",
            retry_after: None,
        };
        let (hand, serde) = both(&none);
        assert_eq!(hand, serde);
    }
}
