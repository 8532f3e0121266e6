//! The server's one error type and its one mapping to the contract's error
//! document (SPEC §3): `{"errors": [{"code", "message", "details"}]}`.
//!
//! Every refusal keyward writes goes through [`ApiError::into_response`], so
//! status, code, body shape and RFC 6750 `WWW-Authenticate` headers cannot
//! disagree between the gateway, the verify service and the admin API.

use crate::body::Body;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use keyward_app::AppError;
use keyward_core::AuthFailure;
use serde_json::{Map, Value, json};
use std::borrow::Cow;

/// A refusal or failure, ready to be written.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code, e.g. `FORBIDDEN`.
    pub code: &'static str,
    /// Human message.
    pub message: Cow<'static, str>,
    /// Extra facts (`required`, `available`, `reason`, `field`…).
    pub details: Map<String, Value>,
    /// `WWW-Authenticate` value, for 401 and 403.
    pub challenge: Option<String>,
    /// `Retry-After` seconds, for 503 `BUSY` and the like.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            challenge: None,
            retry_after: None,
        }
    }

    /// Adds one `details` entry.
    #[must_use]
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// 401 with `details.reason` and the RFC 6750 challenge.
    pub fn unauthorized(failure: AuthFailure) -> Self {
        let message = match failure {
            AuthFailure::Missing => "Missing credentials: send `Authorization: Bearer <key>`",
            AuthFailure::Malformed => "Malformed credentials: not a valid API key",
            AuthFailure::Unknown => "Invalid API key",
            AuthFailure::Revoked => "This API key has been revoked",
            AuthFailure::Expired => "This API key has expired",
        };
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
            .detail("reason", failure.reason());
        e.challenge = Some(r#"Bearer realm="keyward""#.to_owned());
        e
    }

    /// 403 naming the missing scopes (`required`) and the key's granted ones
    /// (`available`), with the `insufficient_scope` challenge.
    pub fn forbidden(missing: Vec<&str>, available: Vec<&str>) -> Self {
        let scope = missing.join(" ");
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "Insufficient permissions",
        )
        .detail("required", missing)
        .detail("available", available);
        e.challenge = Some(format!(
            r#"Bearer realm="keyward", error="insufficient_scope", scope="{scope}""#
        ));
        e
    }

    /// 404 for a method and path no catalog route covers.
    pub fn no_route(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("No route for {method} {path}"),
        )
    }

    /// 400 for a request keyward will not interpret.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    /// 422 naming the offending field.
    pub fn validation(field: &str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            message,
        )
        .detail("field", field)
    }

    /// 413 naming the limit, for the gateway's and keyward's own bodies.
    pub fn payload_too_large(limit_bytes: u64) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("Request body exceeds the limit of {limit_bytes} bytes"),
        )
        .detail("limit_bytes", limit_bytes)
    }

    /// 503: keyward cannot decide safely right now (storage unreachable).
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    }

    /// The error document as a response. `request_id` is echoed in
    /// `X-Request-Id` so a client can quote it.
    pub fn into_response(self, request_id: Option<&HeaderValue>) -> Response<Body> {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code));
        error.insert("message".into(), Value::from(self.message.into_owned()));
        if !self.details.is_empty() {
            error.insert("details".into(), Value::Object(self.details));
        }
        let doc = json!({ "errors": [Value::Object(error)] });
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        let mut res = Response::new(Body::full(bytes));
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::try_from(c).ok()) {
            h.insert(WWW_AUTHENTICATE, c);
        }
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(id) = request_id {
            h.insert(crate::telemetry::X_REQUEST_ID.clone(), id.clone());
        }
        res
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Validation { field, message } => ApiError::validation(&field, message),
            AppError::Grants(errors) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "VALIDATION_FAILED",
                errors.to_string(),
            ),
            AppError::BroadAccessUnacknowledged { ref sets } => {
                let sets = sets.clone();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "BROAD_ACCESS_UNACKNOWLEDGED",
                    e.to_string(),
                )
                .detail("permission_sets", sets)
            }
            AppError::Escalation { ref lacking } => {
                let lacking = lacking.clone();
                ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", e.to_string())
                    .detail("required", lacking)
            }
            AppError::RollWouldBroaden { ref extra } => {
                let extra = extra.clone();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "ROLL_WOULD_BROADEN",
                    e.to_string(),
                )
                .detail("scopes", extra)
            }
            AppError::Policy(ref problems) => {
                let fields: Vec<serde_json::Value> = problems
                    .iter()
                    .map(|p| serde_json::json!({"field": p.field, "message": p.message}))
                    .collect();
                let first = problems.first().map_or("policy", |p| p.field);
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "VALIDATION_FAILED",
                    e.to_string(),
                )
                .detail("field", first)
                .detail("fields", fields)
            }
            AppError::ExpiryExceedsPolicy {
                latest,
                ref lifetime,
            } => {
                let lifetime = lifetime.clone();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "EXPIRY_EXCEEDS_POLICY",
                    e.to_string(),
                )
                .detail("field", "expires_at")
                .detail("max_key_lifetime", lifetime)
                .detail(
                    "latest_expires_at",
                    keyward_app::views::human_time(Some(latest)),
                )
            }
            AppError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", e.to_string())
            }
            AppError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", m),
            AppError::SignInFailed => {
                ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string())
            }
            AppError::Throttled { retry_after_s, .. } => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOO_MANY_REQUESTS",
                    e.to_string(),
                )
                .detail("retry_after_s", retry_after_s);
                e.retry_after = u64::try_from(retry_after_s).ok();
                e
            }
            AppError::Busy { retry_after_s } => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "BUSY", e.to_string())
                    .detail("retry_after", retry_after_s);
                e.retry_after = u64::try_from(retry_after_s).ok();
                e
            }
            AppError::Store(ref s) if s.is_unavailable() => {
                // Logged once per outage by whoever watches the database
                // (the sync, the audit writer), not once per request.
                tracing::debug!(error = %e, "database unavailable");
                let mut e =
                    ApiError::unavailable("The database did not answer in time; try again shortly");
                e.retry_after = Some(1);
                e
            }
            AppError::Catalog(_) | AppError::Store(_) | AppError::Rng(_) => {
                tracing::error!(error = %e, "internal failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "Internal error; see the server log",
                )
            }
        }
    }
}
