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
pub(crate) struct Refusal<'a> {
    /// `<noun>.<verb>_refused`, e.g. `key.roll_refused`.
    pub(crate) action: &'a str,
    /// The key acted on, if any.
    pub(crate) key_id: Option<&'a str>,
    /// The HTTP status the refusal answers with.
    pub(crate) status: u16,
    /// Scopes the actor lacked (escalations), else empty.
    pub(crate) required: Vec<String>,
    /// What was asked; redacted like every entry's details.
    pub(crate) details: serde_json::Value,
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
        let mut entry = self.audit(actor, org, refusal.action, refusal.key_id, refusal.details);
        entry.status = Some(refusal.status);
        entry.required = refusal.required;
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
