//! Webhook endpoints (SPEC §10): made, listed and deleted (audited), and
//! the decisions of delivery: the payload of an event, the back-off after a
//! failure, disabling after a day of them. The network side (dialling,
//! TLS, timeouts) is the server's; what an event is and when it is queued
//! is storage's (`keyward_store::Webhooks`).

use crate::views::human_time;
use crate::{Actor, App, AppError, Org};
use keyward_core::audit::actor;
use keyward_core::webhook::{self, DISABLE_AFTER_MS, WebhookUrl};
use keyward_store::{Attempt, DeliveryRecord, EndpointState, PendingEvent, Store, WebhookRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;
use utoipa::ToSchema;

/// Longest description kept.
const MAX_DESCRIPTION: usize = 1_000;

/// How long creation waits for a name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Endpoints per organization: each costs every node a look at every event.
const MAX_WEBHOOKS: usize = 50;

/// `POST /v1/webhooks`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `https://…` (or `http://`): where events are POSTed.
    pub url: String,
    /// The events to send (SPEC §10).
    pub events: Vec<String>,
    /// A note for people.
    #[serde(default)]
    pub description: String,
}

/// An endpoint, as listed (never with its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct WebhookView {
    /// `wh_…`.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The operator's note.
    pub description: String,
    /// Subscribed events.
    pub events: Vec<String>,
    /// `enabled`, `failing` (retrying with back-off) or `disabled` (failed
    /// for 24 h; delete and re-create it to resume).
    pub status: String,
    /// Events not delivered yet.
    pub pending: i64,
    /// Since when every attempt failed (RFC 3339), if failing.
    pub failing_since: Option<String>,
    /// When it was disabled (RFC 3339).
    pub disabled_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
}

impl WebhookView {
    fn of(w: &WebhookRecord) -> Self {
        let status = match (w.disabled_at, w.failing_since) {
            (Some(_), _) => "disabled",
            (None, Some(_)) => "failing",
            (None, None) => "enabled",
        };
        WebhookView {
            id: w.id.clone(),
            url: w.url.clone(),
            description: w.description.clone(),
            events: w.events.clone(),
            status: status.to_owned(),
            pending: w.pending,
            failing_since: w.failing_since.map(|t| human_time(Some(t))),
            disabled_at: w.disabled_at.map(|t| human_time(Some(t))),
            created_at: human_time(Some(w.created_at)),
            created_by: w.created_by.clone(),
        }
    }
}

/// `201` of `POST /v1/webhooks`: the endpoint and its signing secret, shown
/// this once. `Debug` leaves the secret out.
#[derive(Clone, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verifies `webhook-signature` (Standard Webhooks). Shown
    /// only now.
    pub secret: String,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook")
            .field("webhook", &self.webhook)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// One event of an endpoint's history.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` it is sent with.
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event: String,
    /// The key concerned, if any.
    pub key_id: Option<String>,
    /// `delivered` or `pending`.
    pub status: String,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When a receiver accepted it (RFC 3339).
    pub delivered_at: Option<String>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// One attempt at delivering an event.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1, 2, …
    pub attempt: i64,
    /// RFC 3339.
    pub at: String,
    /// The node that made it.
    pub node: String,
    /// The receiver's status, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed (`timeout`, `connection refused`, …).
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

impl DeliveryView {
    fn of(d: DeliveryRecord) -> Self {
        DeliveryView {
            id: webhook::message_id(d.audit_seq),
            event: d.event,
            key_id: d.key_id,
            status: if d.delivered_at.is_some() {
                "delivered"
            } else {
                "pending"
            }
            .to_owned(),
            created_at: human_time(Some(d.created_at)),
            delivered_at: d.delivered_at.map(|t| human_time(Some(t))),
            attempts: d
                .attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: human_time(Some(a.at)),
                    node: a.node,
                    status_code: a.status,
                    error: a.error,
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}

/// A page of an endpoint's history, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeliveriesPage {
    /// The events.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `before` for the next page; null at the end.
    pub next_before: Option<i64>,
}

fn not_found(id: &str) -> AppError {
    AppError::NotFound {
        what: "webhook",
        id: id.to_owned(),
    }
}

/// Checks that every address `url` stands for is public, resolving its
/// name; `allow_private` (tests, private networks) skips the check.
///
/// # Errors
/// A 422 on `url` naming the non-public address or the failed lookup.
pub async fn check_destination(url: &WebhookUrl, allow_private: bool) -> Result<(), AppError> {
    if allow_private {
        return Ok(());
    }
    let addrs: Vec<IpAddr> = match url.ip {
        Some(ip) => vec![ip],
        None => {
            let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                Ok(Err(e)) => {
                    return Err(AppError::validation(
                        "url",
                        format!("`{}` does not resolve: {e}", url.host),
                    ));
                }
                Err(_) => {
                    return Err(AppError::validation(
                        "url",
                        format!("`{}` did not resolve in time", url.host),
                    ));
                }
            }
        }
    };
    match addrs.iter().find(|ip| !webhook::is_public(**ip)) {
        Some(ip) => Err(AppError::validation(
            "url",
            webhook::UrlProblem::Private(*ip).to_string(),
        )),
        None if addrs.is_empty() => Err(AppError::validation(
            "url",
            format!("`{}` has no address", url.host),
        )),
        None => Ok(()),
    }
}

impl<S: Store> App<S> {
    /// Creates an endpoint (`POST /v1/webhooks`, `keyward webhooks create`),
    /// audited as `webhook.created`; its secret is in the answer only.
    ///
    /// # Errors
    /// 422 naming `url` (not http(s), credentials, a non-public address
    /// unless `allow_private`), `events` (none, or unknown ones, listed) or
    /// `description`; storage failures.
    pub async fn create_webhook(
        &self,
        actor: &Actor,
        org: &Org,
        req: NewWebhook,
        allow_private: bool,
    ) -> Result<CreatedWebhook, AppError> {
        let url =
            webhook::check_url(&req.url).map_err(|p| AppError::validation("url", p.to_string()))?;
        let events = match webhook::check_events(&req.events) {
            Ok(e) if e.is_empty() => {
                return Err(AppError::validation(
                    "events",
                    format!("name at least one of: {}", webhook::EVENTS.join(", ")),
                ));
            }
            Ok(e) => e,
            Err(unknown) => {
                return Err(AppError::validation(
                    "events",
                    format!(
                        "unknown events: {}; known: {}",
                        unknown
                            .iter()
                            .map(|u| format!("`{u}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        webhook::EVENTS.join(", ")
                    ),
                ));
            }
        };
        if req.description.chars().count() > MAX_DESCRIPTION {
            return Err(AppError::validation(
                "description",
                "is longer than 1000 characters",
            ));
        }
        if req.description.chars().any(char::is_control) {
            return Err(AppError::validation(
                "description",
                "must not contain control characters",
            ));
        }
        check_destination(&url, allow_private).await?;
        if self.store.list_webhooks(&org.id).await?.len() >= MAX_WEBHOOKS {
            return Err(AppError::Conflict(format!(
                "the organization has {MAX_WEBHOOKS} webhooks, the most it may have; delete one first"
            )));
        }
        let mut random = [0u8; 24];
        self.rng.fill(&mut random)?;
        let record = WebhookRecord {
            id: self.random_id("wh", 16)?,
            org_id: org.id.clone(),
            url: req.url,
            description: req.description,
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            secret: webhook::secret_text(&random),
            created_at: self.now(),
            created_by: actor.id.clone(),
            disabled_at: None,
            failures: 0,
            failing_since: None,
            next_attempt_at: 0,
            pending: 0,
        };
        let entry = self.audit(
            actor,
            org,
            "webhook.created",
            None,
            json!({"webhook_id": record.id, "url": record.url, "events": record.events}),
        );
        self.store.create_webhook(&record, &entry).await?;
        Ok(CreatedWebhook {
            webhook: WebhookView::of(&record),
            secret: record.secret,
        })
    }

    /// The organization's endpoints, oldest first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_webhooks(&self, org: &Org) -> Result<Vec<WebhookView>, AppError> {
        let hooks = self.store.list_webhooks(&org.id).await?;
        Ok(hooks.iter().map(WebhookView::of).collect())
    }

    /// Deletes an endpoint with its queue and history (audited).
    ///
    /// # Errors
    /// [`AppError::NotFound`]; storage failures.
    pub async fn delete_webhook(&self, actor: &Actor, org: &Org, id: &str) -> Result<(), AppError> {
        let entry = self.audit(
            actor,
            org,
            "webhook.deleted",
            None,
            json!({"webhook_id": id}),
        );
        if self.store.delete_webhook(&org.id, id, &entry).await? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// An endpoint's events, newest first, `limit` (1–200) before the audit
    /// position `before`.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; storage failures.
    pub async fn webhook_deliveries(
        &self,
        org: &Org,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<DeliveriesPage, AppError> {
        if self.store.get_webhook(&org.id, id).await?.is_none() {
            return Err(not_found(id));
        }
        let limit = limit.clamp(1, 200);
        let rows = self.store.deliveries(id, before, limit).await?;
        let next_before = (rows.len() == limit as usize)
            .then(|| rows.last().map(|d| d.audit_seq))
            .flatten();
        Ok(DeliveriesPage {
            deliveries: rows.into_iter().map(DeliveryView::of).collect(),
            next_before,
        })
    }

    /// Leases an endpoint with events due to `node` for `lease_ms`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn claim_webhook(
        &self,
        node: &str,
        lease_ms: i64,
    ) -> Result<Option<WebhookRecord>, AppError> {
        Ok(self.store.claim_webhook(node, self.now(), lease_ms).await?)
    }

    /// Up to `limit` of an endpoint's undelivered events, oldest first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn pending_events(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<PendingEvent>, AppError> {
        Ok(self.store.pending_events(webhook_id, limit).await?)
    }

    /// Gives an endpoint's lease back.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn release_webhook(&self, node: &str, webhook_id: &str) -> Result<(), AppError> {
        Ok(self.store.release_webhook(node, webhook_id).await?)
    }

    /// Records an attempt and decides what follows: success clears the
    /// endpoint's failures; a failure backs off
    /// ([`webhook::retry_delay_ms`]), and disables the endpoint (audited as
    /// `webhook.disabled`) once it has failed for 24 h. `hook` is updated to
    /// match. Whether `node` still held the lease (if not, stop).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn record_attempt(
        &self,
        node: &str,
        hook: &mut WebhookRecord,
        attempt: &Attempt,
        lease_ms: i64,
    ) -> Result<bool, AppError> {
        let now = self.now();
        let state = if attempt.delivered {
            EndpointState {
                failures: 0,
                failing_since: None,
                next_attempt_at: 0,
                disabled_at: None,
                lease_until: now.saturating_add(lease_ms),
            }
        } else {
            let failures = hook.failures.saturating_add(1);
            let since = hook.failing_since.unwrap_or(attempt.at);
            let disable = now.saturating_sub(since) >= DISABLE_AFTER_MS;
            EndpointState {
                failures,
                failing_since: Some(since),
                next_attempt_at: now.saturating_add(webhook::retry_delay_ms(failures)),
                disabled_at: disable.then_some(now),
                lease_until: now.saturating_add(lease_ms),
            }
        };
        let audit = match state.disabled_at {
            Some(_) => {
                let org = self.org_by_id(&hook.org_id).await?;
                let system = Actor {
                    id: actor::node(node),
                    effective: keyward_core::ScopeSet::default(),
                    client: None,
                    request_id: None,
                };
                Some(self.audit(
                    &system,
                    &org,
                    "webhook.disabled",
                    None,
                    json!({
                        "webhook_id": hook.id,
                        "url": hook.url,
                        "failing_since": human_time(Some(state.failing_since.unwrap_or(now))),
                        "failures": state.failures,
                        "pending": hook.pending,
                    }),
                ))
            }
            None => None,
        };
        let held = self
            .store
            .record_attempt(node, &hook.id, attempt, &state, audit.as_ref())
            .await?;
        hook.failures = state.failures;
        hook.failing_since = state.failing_since;
        hook.next_attempt_at = state.next_attempt_at;
        hook.disabled_at = state.disabled_at;
        Ok(held)
    }

    /// Forgets delivered events older than `keep_ms`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn prune_deliveries(&self, keep_ms: i64) -> Result<u64, AppError> {
        Ok(self
            .store
            .prune_deliveries(self.now().saturating_sub(keep_ms))
            .await?)
    }
}

/// The body an event is sent with: `{"type", "timestamp", "org_id",
/// "data"}`, `data` being the audit record's facts with its key and actor.
/// The same bytes on every attempt.
pub fn event_body(event: &PendingEvent) -> Vec<u8> {
    let e = &event.entry;
    let mut data = match serde_json::from_str::<serde_json::Value>(&e.details) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(other) => {
            let mut m = serde_json::Map::new();
            m.insert("details".into(), other);
            m
        }
        Err(_) => serde_json::Map::new(),
    };
    data.insert("key_id".into(), json!(e.key_id));
    data.insert("actor".into(), json!(e.actor));
    let body = json!({
        "type": e.action,
        "timestamp": human_time(Some(e.at_ms)),
        "org_id": e.org_id,
        "data": data,
    });
    body.to_string().into_bytes()
}
