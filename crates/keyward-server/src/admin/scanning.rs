//! GitHub secret scanning's partner endpoint (SPEC §11). GitHub finds
//! keyward keys in public code by their format and posts them here; the
//! signature over the raw body is the only credential, so it is checked
//! before the body is even parsed, and a report that does not verify
//! changes nothing.

use super::common::Shared;
use super::docs::ErrorDoc;
use crate::error::ApiError;
use crate::github::{GithubKeys, Unsigned};
use crate::web::{Answer, Ctx, ctx, fail, ok, read_limited_to};
use http::StatusCode;
use keyward_app::Actor;
use keyward_app::leaks::{LeakStatus, OnSighting, Sighting};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest report read: GitHub sends a few tokens at a time; a megabyte
/// holds thousands, and bounds what an unsigned sender makes the node read
/// before it is turned away.
pub(crate) const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// The longest place (the report's `url`) kept in the audit record.
const MAX_PLACE_BYTES: usize = 1024;

/// The partner endpoint, with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new().routes(routes!(github_report))
}

/// One token GitHub found. Fields GitHub may add later are ignored.
#[derive(Deserialize, ToSchema)]
pub(crate) struct ReportedToken {
    /// The string found, in full.
    token: String,
    /// The secret type GitHub matched it as.
    #[serde(default, rename = "type")]
    token_type: Option<String>,
    /// Where it was found.
    #[serde(default)]
    url: Option<String>,
    /// What held it: `content`, `commit`, `pull_request_description`, …
    #[serde(default)]
    source: Option<String>,
}

/// GitHub's verdict field for one reported token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum Label {
    /// A key of this deployment (live, revoked or expired).
    TruePositive,
    /// Not a key of this deployment.
    FalsePositive,
}

/// The answer for one distinct reported token.
#[derive(Serialize, ToSchema)]
struct TokenLabel {
    token_raw: String,
    token_type: String,
    label: Label,
}

/// GitHub's report of keys found in public code. Each live key is told
/// (`key.leaked`) and handled by its organization's `on_leak` policy:
/// revoked (the default) or flagged. No key is needed: the request is
/// believed only when `Github-Public-Key-Signature` (base64 DER ECDSA
/// P-256/SHA-256) verifies over the raw body with the key
/// `Github-Public-Key-Identifier` names in `--github-scanning-keys`.
#[utoipa::path(
    post, path = "/v1/secret-scanning/github", tag = "secret scanning",
    security(()),
    request_body = Vec<ReportedToken>,
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "The published key that signed the report"),
        ("Github-Public-Key-Signature" = String, Header, description = "Base64 DER ECDSA P-256/SHA-256 signature of the raw body"),
    ),
    responses(
        (status = 200, description = "One label per distinct token reported", body = Vec<TokenLabel>),
        (status = "default", description = "Error: 401 when the signature does not verify or the server has no `--github-scanning-keys` (nothing changed), 400/422 for a body that is not a report, 413 beyond 1 MiB", body = ErrorDoc),
    )
)]
async fn github_report(state: axum::extract::State<Shared>, req: axum::extract::Request) -> Answer {
    let (parts, body) = req.into_parts();
    let ctx = ctx(&parts);
    // Without GitHub's keys no report can be believed: refused as an
    // unverifiable one is, saying why.
    let Some(file) = state.github.as_ref() else {
        return Err(fail(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "GitHub secret scanning is not set up on this server, so no report can be verified: start it with --github-scanning-keys FILE",
            )
            .detail("reason", "not_configured"),
            &ctx,
        ));
    };
    // Refused before any of it is read: a body declared too large, and
    // more unverified reports at once than GitHub ever sends (each holds up
    // to a megabyte until its signature is checked).
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES as u64) {
        return Err(fail(
            ApiError::payload_too_large(MAX_REPORT_BYTES as u64),
            &ctx,
        ));
    }
    // Headers first: a report without them is refused before its body is
    // read or a reading slot is taken.
    let verified = match signed_by(&parts.headers) {
        Ok((Some(identifier), Some(signature))) => {
            let Some(_reading) = file.start_reading(ctx.client.addr) else {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "BUSY",
                    "Too many secret scanning reports are being read at once; try again shortly",
                );
                e.retry_after = Some(1);
                return Err(fail(e, &ctx));
            };
            let raw = read_limited_to(body, MAX_REPORT_BYTES)
                .await
                .map_err(|e| fail(e, &ctx))?;
            file.keys()
                .await
                .verify(Some(&identifier), Some(&signature), &raw)
                .map(|()| raw)
        }
        Ok((identifier, signature)) => Err(GithubKeys::unsigned(
            identifier.as_deref(),
            signature.as_deref(),
        )),
        Err(why) => Err(why),
    };
    let raw = match verified {
        Ok(raw) => raw,
        Err(why) => {
            state.metrics.scanning_unsigned.increment(1);
            if file.log_refusal(state.app.now()) {
                tracing::warn!(client = %ctx.client.ip_text(), reason = %why, "refused a secret scanning report (logged once a minute; keyward_secret_scanning_reports_total counts them): if GitHub sent it, the key file is out of date");
            }
            return Err(fail(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    format!("Not a report signed by GitHub: {why}"),
                )
                .detail("reason", "signature"),
                &ctx,
            ));
        }
    };
    state.metrics.scanning_reports.increment(1);
    let reported = parse_report(&raw).map_err(|e| fail(e, &ctx))?;
    report(&state, &ctx, reported).await
}

/// The identifier and signature headers, each at most once. An identifier
/// that is not ASCII names no published key; a signature that is not ASCII
/// is not base64.
fn signed_by(headers: &http::HeaderMap) -> Result<(Option<String>, Option<String>), Unsigned> {
    let one = |name: &'static str, not_ascii: Unsigned| -> Result<Option<String>, Unsigned> {
        let mut all = headers.get_all(name).iter();
        let first = all.next();
        if all.next().is_some() {
            return Err(Unsigned::Repeated(name));
        }
        first
            .map(|v| v.to_str().map(str::to_owned).map_err(|_| not_ascii.clone()))
            .transpose()
    };
    Ok((
        one("github-public-key-identifier", Unsigned::UnknownKey)?,
        one("github-public-key-signature", Unsigned::Malformed)?,
    ))
}

/// Applies a verified report: each distinct token once, in the order
/// first reported.
async fn report(state: &Shared, ctx: &Ctx, reported: Vec<ReportedToken>) -> Answer {
    let prefix = state.app.catalog().key_prefix();
    let mut seen = HashSet::new();
    let mut ours = Vec::new();
    let mut answer = Vec::new();
    for t in reported {
        if !seen.insert(t.token.clone()) {
            continue;
        }
        let is_ours = keyward_core::key::parse(&t.token).is_ok_and(|k| k.prefix() == prefix);
        answer.push(TokenLabel {
            token_raw: t.token.clone(),
            token_type: t.token_type.clone().unwrap_or_default(),
            label: Label::FalsePositive,
        });
        if is_ours {
            ours.push((answer.len() - 1, place(&t), t.token));
        }
    }
    if !ours.is_empty() {
        let actor = Actor {
            id: keyward_core::audit::actor::GITHUB_SECRET_SCANNING.to_owned(),
            // Like the policy: it may revoke any key it is shown.
            effective: state.app.catalog().available_scopes(),
            client: Some(ctx.client.ip_text().to_owned()),
            request_id: ctx.request_id_text(),
        };
        let sightings: Vec<Sighting> = ours
            .iter()
            .map(|(_, place, key)| Sighting {
                place: place.clone(),
                key: key.clone(),
            })
            .collect();
        let found = state
            .app
            .handle_sightings(&actor, &sightings, OnSighting::Policy, "github")
            .await
            .map_err(|e| fail(e, ctx))?;
        for ((at, _, _), finding) in ours.iter().zip(&found) {
            if finding.was != LeakStatus::Unknown
                && let Some(label) = answer.get_mut(*at)
            {
                label.label = Label::TruePositive;
            }
            if finding.revoked_now || finding.was == LeakStatus::Live {
                tracing::info!(
                    key = finding.key_id.as_deref().unwrap_or_default(),
                    revoked = finding.revoked_now,
                    "GitHub reported a live key leaked"
                );
            }
        }
    }
    ok(StatusCode::OK, &answer, ctx)
}

/// Where a token was found, for the audit record: its URL (else its
/// source), any key in it redacted, clipped.
fn place(t: &ReportedToken) -> String {
    let text = t
        .url
        .as_deref()
        .filter(|u| !u.is_empty())
        .or(t.source.as_deref().filter(|s| !s.is_empty()))
        .unwrap_or("GitHub");
    let redacted = keyward_core::text::redact_keys(text);
    keyward_core::text::clip(&redacted, MAX_PLACE_BYTES).into_owned()
}

/// The report's tokens. The error names where the shape is wrong but never
/// repeats the body's text: serde quotes the strings it did not expect,
/// and those may be keys.
pub(crate) fn parse_report(raw: &[u8]) -> Result<Vec<ReportedToken>, ApiError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
        return Err(ApiError::bad_request(format!(
            "Invalid JSON body at line {} column {}",
            e.line(),
            e.column()
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let tokens: Vec<ReportedToken> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        ApiError::validation(
            if field == "." { "body" } else { &field },
            "a report is a JSON array of objects, each with a string `token` (and optional string `type`, `url` and `source`)",
        )
    })?;
    // NUL cannot be stored as text (PostgreSQL), and no key holds one.
    if tokens.iter().any(|t| {
        [
            Some(&t.token),
            t.url.as_ref(),
            t.source.as_ref(),
            t.token_type.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|s| s.contains('\0'))
    }) {
        return Err(ApiError::validation(
            "body",
            "strings cannot contain NUL characters",
        ));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

    use super::*;

    #[test]
    fn shape_errors_never_repeat_the_body() {
        let key = "insp_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for body in [
            format!("\"{key}\""),
            format!("[\"{key}\"]"),
            format!("{{\"token\": \"{key}\"}}"),
            format!("[{{\"url\": \"{key}\"}}]"),
            format!("[{{\"token\": [\"{key}\"]}}]"),
            format!("[{{\"token\": \"{key}\", \"url\": 5}}]"),
            format!("[{{\"token\": \"{key}\""),
            format!("[{{\"token\": \"{key}\\u0000\"}}]"),
        ] {
            let e = parse_report(body.as_bytes()).err().unwrap();
            let text = format!("{e:?}");
            assert!(!text.contains("AAAAAAAA"), "{body}: {text}");
            assert!(e.status.is_client_error(), "{body}");
        }
        let fine = parse_report(
            br#"[{"token":"x","type":"t","url":"u","source":"content","new_field":1}]"#,
        )
        .unwrap();
        assert_eq!(fine.len(), 1);
        assert!(parse_report(b"[]").unwrap().is_empty());
    }
}
