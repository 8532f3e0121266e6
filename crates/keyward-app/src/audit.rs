//! The audit chain as the use cases write and read it: one builder of
//! entries ([`App::audit`]), one way to record a refused action
//! ([`App::refuse`]), the trail of a key, and the chain's verification.

use crate::{Actor, App, AppError};
use keyward_core::audit::{AuditEntry, GENESIS, chain_link};
use keyward_store::{Org, Store};

/// Outcome of verifying the audit chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// The first record whose link does not hold, if any.
    pub first_broken: Option<BrokenLink>,
}

/// A record that breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BrokenLink {
    /// Its sequence number.
    pub seq: i64,
    /// What does not hold.
    pub reason: String,
}

/// A refused administrative action, as the chain records it: what was
/// asked, the status the client got, and the scopes it lacked.
#[derive(Default)]
pub struct Refusal<'a> {
    /// `<noun>.<verb>_refused`, e.g. `key.roll_refused`.
    pub action: &'a str,
    /// The key acted on, if any (client text when it comes from a path:
    /// recorded bounded, keys redacted).
    pub key_id: Option<&'a str>,
    /// The HTTP status the refusal answers with.
    pub status: u16,
    /// Scopes the actor lacked (escalations), else empty.
    pub required: Vec<String>,
    /// What was asked; redacted like every entry's details.
    pub details: serde_json::Value,
    /// The request's method, when the refusal is of a request as such.
    pub method: Option<&'a str>,
    /// The request's path (recorded bounded, keys redacted).
    pub path: Option<&'a str>,
}

/// What a request to the gateway or to keyward's own endpoints was, for its
/// audit record (action `gateway.request`).
pub struct RequestFacts<'a> {
    /// The key's organization, or the node's default one for anonymous
    /// requests.
    pub org_id: &'a str,
    /// The key, if the request presented a known one.
    pub key_id: Option<&'a str>,
    /// The method as sent.
    pub method: &'a str,
    /// The path as sent (recorded bounded, keys redacted).
    pub path: &'a str,
    /// The peer's address.
    pub client: &'a str,
    /// keyward's request id.
    pub request_id: Option<&'a str>,
    /// The client's own request id, when clean enough to keep beside
    /// keyward's.
    pub client_request_id: Option<&'a str>,
    /// The status answered.
    pub status: u16,
    /// Scopes the route required.
    pub required: Vec<String>,
    /// Why (`allowed`, `missing_scopes`, `unknown`, …).
    pub reason: &'a str,
}

/// The audit record of a request: the one builder of `gateway.request`
/// records, for the gateway's, verify's and the admin API's own refusals.
/// Built without `format!` or a JSON value: this runs for every write and
/// every 403, and the formatting machinery was a third of it.
#[must_use]
pub fn request_entry(facts: RequestFacts<'_>, key_prefix: &str) -> AuditEntry {
    AuditEntry {
        at_ms: 0,
        org_id: facts.org_id.to_owned(),
        actor: facts.key_id.map_or_else(
            || keyward_core::audit::actor::ANONYMOUS.to_owned(),
            keyward_core::audit::actor::key,
        ),
        action: "gateway.request".to_owned(),
        key_id: facts.key_id.map(str::to_owned),
        method: Some(facts.method.to_owned()),
        path: Some(keyward_core::text::recorded_path(facts.path, key_prefix).into_owned()),
        status: Some(facts.status),
        required: facts.required,
        client: Some(facts.client.to_owned()),
        request_id: facts.request_id.map(str::to_owned),
        details: reason_details(facts.reason, facts.client_request_id),
    }
}

/// The record that ends an audit outage on a node (`node.audit_resumed`):
/// when writes began failing, for how long, and how many writes the node
/// refused meanwhile.
#[must_use]
pub fn audit_resumed_entry(
    node: &str,
    org_id: &str,
    now: i64,
    failing_since: i64,
    refused_writes: u64,
) -> AuditEntry {
    AuditEntry {
        at_ms: now,
        org_id: org_id.to_owned(),
        actor: keyward_core::audit::actor::node(node),
        action: "node.audit_resumed".to_owned(),
        details: serde_json::json!({
            "failing_since_ms": failing_since,
            "failed_for_ms": now - failing_since,
            "refused_writes": refused_writes,
        })
        .to_string(),
        ..AuditEntry::default()
    }
}

/// The one record of refusals counted rather than chained (anonymous
/// requests and throttled sign-ins per client, rate-limited requests per key
/// and limit) for one minute: how many, and the first as a sample. A
/// gateway request is recorded as `gateway.unauthenticated` without a key
/// and `gateway.rate_limited` with one; other counted refusals keep their
/// action.
#[must_use]
pub fn tally_entry(
    sample: AuditEntry,
    client: Option<String>,
    minute_start_ms: i64,
    count: u64,
    now: i64,
) -> AuditEntry {
    let keyed = sample.key_id.is_some();
    let action = match (sample.action.as_str(), keyed) {
        ("gateway.request", false) => "gateway.unauthenticated".to_owned(),
        ("gateway.request", true) => "gateway.rate_limited".to_owned(),
        _ => sample.action.clone(),
    };
    let details: serde_json::Value = serde_json::from_str(&sample.details).unwrap_or_default();
    AuditEntry {
        at_ms: now,
        actor: if keyed {
            sample.actor.clone()
        } else {
            keyward_core::audit::actor::ANONYMOUS.to_owned()
        },
        action,
        client,
        details: serde_json::json!({
            "count": count,
            "minute_start_ms": minute_start_ms,
            "sample": details,
        })
        .to_string(),
        ..sample
    }
}

/// `{"reason":…}` (and the client's request id, if it sent a clean one),
/// the details of a request's record.
fn reason_details(reason: &str, client_request_id: Option<&str>) -> String {
    let mut out = Vec::with_capacity(12 + reason.len());
    out.extend_from_slice(b"{\"reason\":");
    push_json_str(&mut out, reason);
    if let Some(id) = client_request_id {
        out.extend_from_slice(b",\"client_request_id\":");
        push_json_str(&mut out, id);
    }
    out.push(b'}');
    // Always UTF-8: `reason` is, and the rest is ASCII.
    String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned())
}

/// A JSON string. Names and ids need no escaping and are copied as they are;
/// anything else goes through serde_json, so escaping has one definition.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing to a Vec cannot fail; keep the document well formed anyway.
        out.extend_from_slice(b"null");
    }
}

impl<S: Store> App<S> {
    pub(crate) fn audit(
        &self,
        actor: &Actor,
        org: &Org,
        action: &str,
        key_id: Option<&str>,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            at_ms: self.now(),
            org_id: org.id.clone(),
            actor: actor.id.clone(),
            action: action.to_owned(),
            key_id: key_id.map(str::to_owned),
            client: actor.client.clone(),
            request_id: actor.request_id.clone(),
            // Client text (names, refused scope names, emails) may hold a
            // key pasted into the wrong field: never stored in full.
            details: keyward_core::text::redact_secrets(
                &details.to_string(),
                self.catalog.key_prefix(),
            )
            .into_owned(),
            ..AuditEntry::default()
        }
    }

    /// The record of `refusal`, built the one way every refusal is, for a
    /// caller that commits it itself (the server's group commit).
    pub fn refusal(&self, actor: &Actor, org: &Org, refusal: Refusal<'_>) -> AuditEntry {
        let prefix = self.catalog.key_prefix();
        let recorded = |text: &str| keyward_core::text::recorded_path(text, prefix).into_owned();
        let mut entry = self.audit(actor, org, refusal.action, None, refusal.details);
        entry.key_id = refusal.key_id.map(recorded);
        entry.method = refusal.method.map(str::to_owned);
        entry.path = refusal.path.map(recorded);
        entry.status = Some(refusal.status);
        entry.required = refusal.required;
        entry
    }

    /// Records `refusal` and returns `error` for the caller to answer with;
    /// when the record cannot be written, the storage failure instead (a
    /// refusal is never silent). Every refused administrative action (create,
    /// roll, membership, user, password reset) goes through here.
    pub(crate) async fn refuse(
        &self,
        actor: &Actor,
        org: &Org,
        refusal: Refusal<'_>,
        error: AppError,
    ) -> AppError {
        let entry = self.refusal(actor, org, refusal);
        match self.store.append_audit(&[entry]).await {
            Ok(_) => error,
            Err(e) => e.into(),
        }
    }

    /// The audit trail of one key, newest first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn key_audit(
        &self,
        org: &Org,
        key_id: &str,
        limit: u32,
    ) -> Result<Vec<keyward_store::AuditRecord>, AppError> {
        Ok(self.store.audit_for_key(&org.id, key_id, limit).await?)
    }

    /// Recomputes every link of the audit chain; reports the first that fails.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn verify_audit(
        &self,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<ChainReport, AppError> {
        let mut prev = GENESIS;
        let mut expected = 1;
        let mut records = 0;
        loop {
            let page = self.store.audit_chain(expected - 1, 1000).await?;
            if page.is_empty() {
                // The head row is updated in every appending transaction: a
                // chain that ends before it lost its most recent records.
                let (head_seq, head_hash) = self.store.audit_head().await?;
                let first_broken = (head_seq != expected - 1 || head_hash != prev).then(|| BrokenLink {
                    seq: expected,
                    reason: format!(
                        "the chain ends at record {} but its head says {head_seq}: the most recent records were removed",
                        expected - 1
                    ),
                });
                return Ok(ChainReport {
                    records,
                    first_broken,
                });
            }
            for r in page {
                let reason = if r.seq != expected {
                    Some(format!(
                        "expected record {expected}, found {}: records are missing",
                        r.seq
                    ))
                } else if r.prev_hash != prev {
                    Some("its previous-hash does not match the record before it".to_owned())
                } else if r.hash != chain_link(&prev, r.seq, &r.entry) {
                    Some("its content does not match its hash: the record was altered".to_owned())
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Ok(ChainReport {
                        records,
                        first_broken: Some(BrokenLink {
                            seq: expected,
                            reason,
                        }),
                    });
                }
                prev = r.hash;
                expected += 1;
                records += 1;
            }
            progress(records);
        }
    }

    /// Appends audit records of requests, in one transaction.
    ///
    /// # Errors
    /// Storage failures: nothing was recorded.
    pub async fn record(&self, entries: &[AuditEntry]) -> Result<(), AppError> {
        self.store.append_audit(entries).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::reason_details;

    #[test]
    fn details_are_the_json_of_the_reason() {
        for reason in ["allowed", "missing_scopes", "a \"quoted\"\\ reason\n", ""] {
            assert_eq!(
                reason_details(reason, None),
                serde_json::json!({ "reason": reason }).to_string()
            );
            let with_id: serde_json::Value =
                serde_json::from_str(&reason_details(reason, Some("abc-1"))).expect("JSON");
            assert_eq!(
                with_id,
                serde_json::json!({ "reason": reason, "client_request_id": "abc-1" })
            );
        }
    }
}
