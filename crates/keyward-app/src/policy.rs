//! An organization's key policy (SPEC §10): read, set (audited), and
//! applied where keys are made. The rules of a valid policy are the core's
//! ([`keyward_core::policy`]).

use crate::{Actor, views::human_time};
use crate::{App, AppError, Org};
use keyward_core::audit::AuditEntry;
use keyward_core::policy::{OnLeak, Policy, PolicyText};
use keyward_store::{KeyFilter, KeyNotice, Store, StoreError, StoredPolicy};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

/// `GET /v1/policy`: the policy as written, and when and by whom it was set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicyView {
    /// Creation without expiry gets this expiry; a longer one is refused
    /// (`EXPIRY_EXCEEDS_POLICY`). Null: no limit.
    pub max_key_lifetime: Option<String>,
    /// Keys unused this long are flagged `unused`. Null: never.
    pub flag_unused_after: Option<String>,
    /// Keys unused this long are revoked (actor `policy`, reason `unused`).
    /// Null: never.
    pub revoke_unused_after: Option<String>,
    /// How long before its expiry each `key.expiring` is sent.
    pub expiry_warning: Vec<String>,
    /// What a leaked-key report does: `revoke` or `flag`.
    #[schema(value_type = String, example = "revoke")]
    pub on_leak: OnLeak,
    /// When the policy was last set (RFC 3339), null if never.
    pub updated_at: Option<String>,
    /// Who set it last, null if never.
    pub updated_by: Option<String>,
}

impl PolicyView {
    fn of(text: PolicyText, stored: Option<&StoredPolicy>) -> Self {
        PolicyView {
            max_key_lifetime: text.max_key_lifetime,
            flag_unused_after: text.flag_unused_after,
            revoke_unused_after: text.revoke_unused_after,
            expiry_warning: text.expiry_warning,
            on_leak: text.on_leak,
            updated_at: stored.map(|s| human_time(Some(s.updated_at))),
            updated_by: stored.map(|s| s.updated_by.clone()),
        }
    }
}

impl<S: Store> App<S> {
    /// The organization's policy as stored (the default when never set),
    /// checked.
    pub(crate) async fn read_policy(
        &self,
        org: &Org,
    ) -> Result<(PolicyText, Policy, Option<StoredPolicy>), AppError> {
        let stored = self.store.get_policy(&org.id).await?;
        let text = match &stored {
            None => PolicyText::default(),
            Some(s) => serde_json::from_str(&s.text).map_err(|e| {
                StoreError::Corrupt(format!(
                    "the stored policy of `{}` is unreadable: {e}",
                    org.id
                ))
            })?,
        };
        let policy = text.check().map_err(|problems| {
            StoreError::Corrupt(format!(
                "the stored policy of `{}` no longer checks: {}",
                org.id,
                problems
                    .iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        Ok((text, policy, stored))
    }

    /// The checked policy, for the use cases that apply it.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn policy(&self, org: &Org) -> Result<Policy, AppError> {
        Ok(self.read_policy(org).await?.1)
    }

    /// `GET /v1/policy`, `keyward policy show`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn show_policy(&self, org: &Org) -> Result<PolicyView, AppError> {
        let (text, _, stored) = self.read_policy(org).await?;
        Ok(PolicyView::of(text, stored.as_ref()))
    }

    /// Replaces the organization's policy (`PUT /v1/policy`, `keyward
    /// policy set`), audited as `policy.updated` with the old and new
    /// policy. Existing keys are untouched.
    ///
    /// # Errors
    /// [`AppError::Policy`] naming every bad field (nothing written);
    /// storage failures.
    pub async fn set_policy(
        &self,
        actor: &Actor,
        org: &Org,
        text: PolicyText,
    ) -> Result<PolicyView, AppError> {
        text.check().map_err(AppError::Policy)?;
        let (old, _, _) = self.read_policy(org).await?;
        let stored = StoredPolicy {
            text: serde_json::to_string(&text).map_err(|e| {
                StoreError::Corrupt(format!("the policy could not be encoded: {e}"))
            })?,
            updated_at: self.now(),
            updated_by: actor.id.clone(),
        };
        let entry = self.audit(
            actor,
            org,
            "policy.updated",
            None,
            json!({"old": old, "new": text}),
        );
        self.store.put_policy(&org.id, &stored, &entry).await?;
        Ok(PolicyView::of(text, Some(&stored)))
    }
}

/// One key a policy run flagged or revoked (or would have).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicyAction {
    /// The key.
    pub key_id: String,
    /// Its name.
    pub name: String,
    /// Its last use (RFC 3339), null if never used.
    pub last_used_at: Option<String>,
}

/// What `keyward policy run` did, or with `--dry-run` would do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicyRun {
    /// Nothing was changed.
    pub dry_run: bool,
    /// When it ran (RFC 3339).
    pub at: String,
    /// Active keys unused for `flag_unused_after` (and not revoked now):
    /// every key flagged, whether now or before.
    pub flagged: Vec<PolicyAction>,
    /// Those of them flagged by this run (each told once, as `key.unused`).
    pub newly_flagged: Vec<PolicyAction>,
    /// Keys revoked for being unused for `revoke_unused_after`.
    pub revoked: Vec<PolicyAction>,
    /// Keys warned by this run that they expire within an
    /// `expiry_warning` (`key.expiring`).
    pub expiring: Vec<PolicyAction>,
    /// Keys announced as expired by this run (`key.expired`).
    pub expired: Vec<PolicyAction>,
}

/// The duty of applying the policy, held by one node at a time.
pub const POLICY_DUTY: &str = "policy";

/// Keys read per page while a run looks for unused keys.
const RUN_PAGE: u32 = 500;

impl<S: Store> App<S> {
    /// Applies the policy now (SPEC §10): flags the active keys unused for
    /// `flag_unused_after` (never used counts from creation; each newly
    /// flagged key sends `key.unused`, once per flag), revokes those unused
    /// for `revoke_unused_after` (actor `policy`, reason `unused`), and
    /// announces expiries: `key.expiring` once per `expiry_warning`
    /// threshold crossed (only the nearest, when several are crossed at
    /// once) and `key.expired` once. Keys rolled or revoked are not
    /// announced: their change already was. With `dry_run`, changes
    /// nothing and says what it would do.
    ///
    /// # Errors
    /// Storage failures (what was done before stays done).
    pub async fn run_policy(&self, org: &Org, dry_run: bool) -> Result<PolicyRun, AppError> {
        let (text, policy, _) = self.read_policy(org).await?;
        let now = self.now();
        let mut run = PolicyRun {
            dry_run,
            at: human_time(Some(now)),
            flagged: Vec::new(),
            newly_flagged: Vec::new(),
            revoked: Vec::new(),
            expiring: Vec::new(),
            expired: Vec::new(),
        };
        let actor = Actor {
            id: keyward_core::audit::actor::POLICY.to_owned(),
            effective: self.catalog.available_scopes(),
            client: None,
            request_id: None,
        };
        // Each notice, and the key as the run reports it.
        let mut notes: Vec<(KeyNotice, AuditEntry)> = Vec::new();
        let mut about: Vec<PolicyAction> = Vec::new();
        if let Some(flag_ms) = policy.flag_unused_after_ms {
            if !dry_run {
                self.store
                    .clear_unused_flags(&org.id, Some(now - flag_ms))
                    .await?;
            }
            self.unused_keys(
                org, &actor, &text, &policy, dry_run, &mut run, &mut notes, &mut about,
            )
            .await?;
        } else if !dry_run {
            self.store.clear_unused_flags(&org.id, None).await?;
        }
        let horizon = now.saturating_add(policy.expiry_warning_ms.first().copied().unwrap_or(0));
        for k in self.store.keys_expiring(&org.id, horizon).await? {
            let action = PolicyAction {
                key_id: k.id.clone(),
                name: k.name.clone(),
                last_used_at: None,
            };
            let expires_at = human_time(Some(k.expires_at));
            if k.expires_at <= now {
                let entry = self.audit(
                    &actor,
                    org,
                    "key.expired",
                    Some(&k.id),
                    json!({"name": k.name, "expires_at": expires_at}),
                );
                notes.push((KeyNotice::Expired { key_id: k.id }, entry));
                about.push(action);
                continue;
            }
            // The nearest threshold crossed (thresholds are longest first),
            // named as the policy spells it.
            let left = k.expires_at - now;
            let Some(&threshold_ms) = policy
                .expiry_warning_ms
                .iter()
                .rev()
                .find(|ms| left <= **ms)
            else {
                continue;
            };
            let threshold = text
                .expiry_warning
                .iter()
                .find(|t| keyward_core::parse_duration_ms(t) == Ok(threshold_ms))
                .cloned()
                .unwrap_or_else(|| format!("{threshold_ms}ms"));
            if k.warned_ms.is_some_and(|w| w <= threshold_ms) {
                continue;
            }
            let entry = self.audit(
                &actor,
                org,
                "key.expiring",
                Some(&k.id),
                json!({"name": k.name, "expires_at": expires_at, "threshold": threshold}),
            );
            notes.push((
                KeyNotice::Expiring {
                    key_id: k.id,
                    threshold_ms,
                },
                entry,
            ));
            about.push(action);
        }
        // A dry run reports every notice it would tell; a run only those it
        // told (another run may have told one first).
        let mut told = Vec::with_capacity(notes.len());
        for chunk in notes.chunks(RUN_PAGE as usize) {
            if dry_run {
                told.extend(std::iter::repeat_n(true, chunk.len()));
            } else {
                told.extend(self.store.note_keys(chunk).await?);
            }
        }
        for (((notice, _), action), told) in notes.iter().zip(about).zip(told) {
            if told {
                match notice {
                    KeyNotice::Unused { .. } => run.newly_flagged.push(action),
                    KeyNotice::Expiring { .. } => run.expiring.push(action),
                    KeyNotice::Expired { .. } => run.expired.push(action),
                    // Not a policy notice: never in a policy run.
                    KeyNotice::Leaked { .. } => {}
                }
            }
        }
        Ok(run)
    }

    /// The keys unused for the flag: revoked when unused for the
    /// revocation too, else listed, and noted as flagged when they were
    /// not yet.
    #[allow(
        clippy::too_many_arguments,
        reason = "one run's state, split for length"
    )]
    async fn unused_keys(
        &self,
        org: &Org,
        actor: &Actor,
        text: &PolicyText,
        policy: &Policy,
        dry_run: bool,
        run: &mut PolicyRun,
        notes: &mut Vec<(KeyNotice, AuditEntry)>,
        about: &mut Vec<PolicyAction>,
    ) -> Result<(), AppError> {
        let now = self.now();
        let flag_ms = policy.flag_unused_after_ms.unwrap_or(i64::MAX);
        let revoke_before = policy.revoke_unused_after_ms.map(|ms| now - ms);
        let mut filter = KeyFilter {
            active_at: Some(now),
            unused_since: Some(now.saturating_sub(flag_ms)),
            limit: Some(RUN_PAGE),
            ..KeyFilter::default()
        };
        loop {
            let page = self.list_keys(org, &filter).await?;
            for k in &page {
                let action = PolicyAction {
                    key_id: k.id.clone(),
                    name: k.name.clone(),
                    last_used_at: k.last_used_at.map(|t| human_time(Some(t))),
                };
                let idle_since = k.last_used_at.unwrap_or(k.created_at);
                if revoke_before.is_some_and(|before| idle_since < before) {
                    if !dry_run {
                        self.revoke_key_because(
                            actor,
                            org,
                            &k.id,
                            json!({"reason": "unused", "idle_since": human_time(Some(idle_since))}),
                        )
                        .await?;
                    }
                    run.revoked.push(action);
                    continue;
                }
                if k.flags.is_empty() {
                    let entry = self.audit(
                        actor,
                        org,
                        "key.unused",
                        Some(&k.id),
                        json!({
                            "name": k.name,
                            "idle_since": human_time(Some(idle_since)),
                            "flag_unused_after": text.flag_unused_after,
                        }),
                    );
                    notes.push((
                        KeyNotice::Unused {
                            key_id: k.id.clone(),
                            at: now,
                        },
                        entry,
                    ));
                    about.push(action.clone());
                }
                run.flagged.push(action);
            }
            match page.last() {
                Some(last) if page.len() == RUN_PAGE as usize => {
                    filter.before = Some((last.created_at, last.id.clone()));
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// A server's periodic application of every organization's policy:
    /// only the node holding the policy duty (for `hold_ms`, renewed on
    /// each of its runs) applies it, so several nodes never race to revoke.
    /// `None` when another node holds the duty.
    ///
    /// # Errors
    /// Storage failures (what was done before stays done).
    pub async fn apply_policies(
        &self,
        node: &str,
        hold_ms: i64,
    ) -> Result<Option<Vec<(Org, PolicyRun)>>, AppError> {
        if !self
            .store
            .claim_duty(POLICY_DUTY, node, self.now(), hold_ms)
            .await?
        {
            return Ok(None);
        }
        let mut runs = Vec::new();
        for org in self.list_orgs().await? {
            let run = self.run_policy(&org, false).await?;
            runs.push((org, run));
        }
        Ok(Some(runs))
    }
}
