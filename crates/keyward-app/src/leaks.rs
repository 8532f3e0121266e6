//! Leaked keys (SPEC §11): what a key seen somewhere it should not be is,
//! and what its sighting does. Finding keys in text is the core's
//! (`keyward_core::text::find_keys`); walking files is the CLI's; GitHub's
//! reports are the server's.
//!
//! A live key reported leaked is told once, as `key.leaked` (an audit
//! record and the key's `leaked` flag, in one transaction), then revoked
//! (reason `leaked`) when asked to or when the organization's `on_leak` is
//! `revoke`. Telling comes first: a crash between the two leaves a flagged
//! live key that the next report revokes, never a revoked key nobody was
//! told about.

use crate::views::human_time;
use crate::{Actor, App, AppError};
use keyward_core::policy::OnLeak;
use keyward_store::{KeyNotice, Store};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use utoipa::ToSchema;

/// What a sighted key is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeakStatus {
    /// It works: whoever found it can use it.
    Live,
    /// Revoked (before, or by this report).
    Revoked,
    /// Past its expiry.
    Expired,
    /// No key of this deployment (another deployment's, or made up with a
    /// valid checksum).
    Unknown,
}

impl LeakStatus {
    /// The word, for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakStatus::Live => "live",
            LeakStatus::Revoked => "revoked",
            LeakStatus::Expired => "expired",
            LeakStatus::Unknown => "unknown",
        }
    }
}

/// A key seen somewhere: where, and the key itself (kept in memory only,
/// never shown: `Debug` prints the place alone).
pub struct Sighting {
    /// `file:line`, or the URL a report names.
    pub place: String,
    /// The full key text as found.
    pub key: String,
}

impl std::fmt::Debug for Sighting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sighting({})", self.place)
    }
}

/// What to do with the live keys among the sightings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSighting {
    /// Only say what each key is.
    Report,
    /// Tell `key.leaked` and revoke (`keyward scan --revoke`).
    Revoke,
    /// Tell `key.leaked`, then do what the key's organization's `on_leak`
    /// says (GitHub's reports).
    Policy,
}

/// One sighting, as reported back: never the key, only its display prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct LeakFinding {
    /// Where it was seen.
    pub place: String,
    /// `insp_live_AbC1`, then `…` when shown.
    pub display_prefix: String,
    /// What the key is now (after this report's revocation, if any).
    pub status: LeakStatus,
    /// What it was when seen.
    pub was: LeakStatus,
    /// The key, when it is one of this deployment's.
    pub key_id: Option<String>,
    /// Its organization.
    pub org_id: Option<String>,
    /// Revoked by this report.
    pub revoked_now: bool,
}

impl<S: Store> App<S> {
    /// Looks up each sighted key (by digest, in every organization) and,
    /// unless `on` is [`OnSighting::Report`], handles the live ones as
    /// leaked: `key.leaked` told once per key (audited with `source` and
    /// the first place it was seen), then revoked with reason `leaked` as
    /// `on` says. A key seen in several places is handled once and
    /// reported at each.
    ///
    /// # Errors
    /// Storage failures (what was done before stays done).
    pub async fn handle_sightings(
        &self,
        actor: &Actor,
        sightings: &[Sighting],
        on: OnSighting,
        source: &str,
    ) -> Result<Vec<LeakFinding>, AppError> {
        let now = self.now();
        // digest -> (record, was, now, revoked_now), once per key.
        let mut seen: HashMap<
            Vec<u8>,
            (
                Option<keyward_store::KeyRecord>,
                LeakStatus,
                LeakStatus,
                bool,
            ),
        > = HashMap::new();
        let mut out = Vec::with_capacity(sightings.len());
        for s in sightings {
            let display_prefix = keyward_core::key::parse(&s.key)
                .map(|k| k.display_prefix())
                .unwrap_or_default();
            let digest = self.digester.digest(&s.key);
            let id = digest.as_bytes().to_vec();
            if !seen.contains_key(&id) {
                let record = self.store.key_by_digest(&digest).await?;
                let was = match &record {
                    None => LeakStatus::Unknown,
                    Some(r) if r.revoked_at.is_some() => LeakStatus::Revoked,
                    Some(r) if r.expires_at.is_some_and(|t| t <= now) => LeakStatus::Expired,
                    Some(_) => LeakStatus::Live,
                };
                let mut status = was;
                let mut revoked_now = false;
                if let (Some(r), LeakStatus::Live, false) = (&record, was, on == OnSighting::Report)
                {
                    revoked_now = self.leaked(actor, r, &s.place, on, source, now).await?;
                    if revoked_now {
                        status = LeakStatus::Revoked;
                    }
                }
                seen.insert(id.clone(), (record, was, status, revoked_now));
                out.push((s, display_prefix, id, true));
            } else {
                out.push((s, display_prefix, id, false));
            }
        }
        Ok(out
            .into_iter()
            .map(|(s, display_prefix, id, first)| {
                let (record, was, status, revoked_now) = &seen[&id];
                LeakFinding {
                    place: s.place.clone(),
                    display_prefix,
                    status: *status,
                    was: *was,
                    key_id: record.as_ref().map(|r| r.id.clone()),
                    org_id: record.as_ref().map(|r| r.org_id.clone()),
                    revoked_now: *revoked_now && first,
                }
            })
            .collect())
    }

    /// Tells `key.leaked` for a live key (once), then revokes it if `on`
    /// (or its organization's `on_leak`) says so; whether it was revoked.
    async fn leaked(
        &self,
        actor: &Actor,
        key: &keyward_store::KeyRecord,
        place: &str,
        on: OnSighting,
        source: &str,
        now: i64,
    ) -> Result<bool, AppError> {
        let org = self.org_by_id(&key.org_id).await?;
        let revoke = match on {
            OnSighting::Report => false,
            OnSighting::Revoke => true,
            OnSighting::Policy => self.policy(&org).await?.on_leak == OnLeak::Revoke,
        };
        let entry = self.audit(
            actor,
            &org,
            "key.leaked",
            Some(&key.id),
            json!({
                "name": key.name,
                "source": source,
                "where": place,
                "action": if revoke { "revoke" } else { "flag" },
                "reported_at": human_time(Some(now)),
            }),
        );
        self.store
            .note_keys(&[(
                KeyNotice::Leaked {
                    key_id: key.id.clone(),
                    at: now,
                },
                entry,
            )])
            .await?;
        if !revoke {
            return Ok(false);
        }
        let (_, outcome) = self
            .revoke_key_because(
                actor,
                &org,
                &key.id,
                json!({"reason": "leaked", "source": source, "where": place}),
            )
            .await?;
        Ok(outcome == keyward_store::Revoked::Now)
    }
}

/// Who reported a leak, for people: the `source` of a `key.leaked` record.
fn reporter(source: &str) -> String {
    match source {
        "github" => "GitHub secret scanning".to_owned(),
        "scan" => "keyward scan".to_owned(),
        other => other.to_owned(),
    }
}

/// The plain sentence for an audit record about a leak, when it is one:
/// `key.leaked` (who reported it, where it was found, what was done) and
/// `key.revoked` for reason `leaked`. The console shows it beside the
/// record; other records have none.
pub fn leak_sentence(action: &str, details: &serde_json::Value) -> Option<String> {
    let text = |field: &str| details[field].as_str().unwrap_or_default();
    match action {
        "key.leaked" => Some(format!(
            "Reported leaked by {}, found at {}; {}",
            reporter(text("source")),
            if text("where").is_empty() {
                "an unnamed place"
            } else {
                text("where")
            },
            if text("action") == "revoke" {
                "revoked"
            } else {
                "flagged, still working (the key policy's on_leak is flag)"
            }
        )),
        "key.revoked" if text("reason") == "leaked" => Some(format!(
            "Revoked because {} reported it leaked",
            reporter(text("source"))
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::leak_sentence;
    use serde_json::json;

    #[test]
    fn leaks_are_told_plainly_and_other_records_are_not() {
        assert_eq!(
            leak_sentence(
                "key.leaked",
                &json!({"source": "github", "where": "https://github.com/o/r", "action": "revoke"})
            )
            .as_deref(),
            Some(
                "Reported leaked by GitHub secret scanning, found at https://github.com/o/r; revoked"
            )
        );
        assert!(
            leak_sentence(
                "key.leaked",
                &json!({"source": "scan", "where": "a.py:3", "action": "flag"})
            )
            .unwrap()
            .contains("by keyward scan, found at a.py:3; flagged, still working")
        );
        assert_eq!(
            leak_sentence(
                "key.revoked",
                &json!({"reason": "leaked", "source": "github"})
            )
            .as_deref(),
            Some("Revoked because GitHub secret scanning reported it leaked")
        );
        assert_eq!(leak_sentence("key.revoked", &json!({})), None);
        assert_eq!(
            leak_sentence("key.created", &json!({"source": "github"})),
            None
        );
    }
}
