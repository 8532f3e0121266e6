//! What use cases return: the shapes the CLI's `--json` and the admin API
//! serialise, defined once so the two cannot drift (`keyward keys create
//! --json` prints the same object as `POST /v1/keys`). Times are RFC 3339.

use keyward_core::{Catalog, Decision, ScopeSet};
use keyward_store::KeyRecord;
use serde::{Serialize, Serializer};
use std::fmt;

/// Serialises unix milliseconds as an RFC 3339 timestamp (or `null`).
pub fn ser_time<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
        Some(t) => s.serialize_str(&t.to_string()),
        None => s.serialize_none(),
    }
}

fn ser_time_req<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    ser_time(&Some(*ms), s)
}

/// Formats unix milliseconds for people: `2026-11-23T12:00:00Z`, or `never`.
pub fn human_time(ms: Option<i64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| {
            t.round(jiff::Unit::Second)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| t.to_string())
        })
        .unwrap_or_else(|| "never".to_owned())
}

/// Whether a key works now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Revoked; never usable again.
    Revoked,
    /// Past `expires_at` (including a roll's grace period).
    Expired,
}

impl KeyStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
        }
    }
}

/// A key as shown to administrators. Never contains the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// `key_…`
    pub id: String,
    /// Owning organization id.
    pub org_id: String,
    /// Name given at creation.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `live` or `test`.
    pub environment: String,
    /// `insp_live_AbC1`: identifies the key without revealing it.
    pub display_prefix: String,
    /// Imported from before scopes existed: full access, cannot be edited.
    pub legacy: bool,
    /// `active`, `revoked` or `expired`.
    pub status: KeyStatus,
    /// Creation time.
    #[serde(serialize_with = "ser_time_req")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Actor that created it.
    pub created_by: String,
    /// Expiry, if any.
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// Revocation time, if revoked.
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<i64>,
    /// The key that replaced it in a roll.
    pub rolled_to: Option<String>,
    /// Last time a request used it (flushed in batches).
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
    /// Scopes granted directly.
    pub scopes: Vec<String>,
    /// Permission sets granted.
    pub permission_sets: Vec<String>,
    /// Every scope granted (direct and through sets), not expanded.
    pub granted_scopes: Vec<String>,
    /// Closure of the granted scopes under `implies`: what the key can do.
    pub effective_scopes: Vec<String>,
    /// Stored grants the current catalog no longer defines (they grant nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub unknown_grants: Vec<String>,
    /// Named rate limits and quotas (SPEC §8), when the key has any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub limits: Vec<LimitView>,
    /// What is known against it: `unused` while flagged as unused for the
    /// policy's `flag_unused_after` (cleared when it is used again);
    /// `leaked` once reported leaked (a scan, GitHub's secret scanning).
    pub flags: Vec<String>,
    /// Networks the key may be used from, when restricted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub allowed_cidrs: Vec<String>,
}

/// A limit as shown: `{"name": "burst", "requests": 100, "per": "1m"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LimitView {
    /// Unique within the key.
    pub name: String,
    /// Requests admitted per window.
    pub requests: u64,
    /// The window: `1s` to `30d`.
    pub per: String,
}

impl LimitView {
    /// The view of a limit.
    #[must_use]
    pub fn of(l: &keyward_core::limits::Limit) -> Self {
        LimitView {
            name: l.name.clone(),
            requests: l.requests,
            per: l.per(),
        }
    }
}

impl KeyView {
    pub(crate) fn new(catalog: &Catalog, r: KeyRecord, now: i64) -> Self {
        let (granted, effective, unknown) = access_sets(catalog, &r);
        let status = if r.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if r.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        };
        KeyView {
            status,
            granted_scopes: names(catalog, granted),
            effective_scopes: names(catalog, effective),
            unknown_grants: unknown,
            id: r.id,
            org_id: r.org_id,
            name: r.name,
            description: r.description,
            environment: r.environment,
            display_prefix: r.display_prefix,
            legacy: r.legacy,
            created_at: r.created_at,
            created_by: r.created_by,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            rolled_to: r.rolled_to,
            last_used_at: r.last_used_at,
            scopes: r.scopes,
            permission_sets: r.permission_sets,
            limits: r.limits.iter().map(LimitView::of).collect(),
            allowed_cidrs: r.allowed_cidrs.iter().map(ToString::to_string).collect(),
            flags: [
                r.flagged_unused_at.map(|_| "unused"),
                r.leaked_at.map(|_| "leaked"),
            ]
            .into_iter()
            .flatten()
            .map(str::to_owned)
            .collect(),
        }
    }
}

/// (granted, effective, unknown grant names) of a stored key under `catalog`,
/// by the core's rule (`Catalog::key_holdings`).
pub(crate) fn access_sets(catalog: &Catalog, r: &KeyRecord) -> (ScopeSet, ScopeSet, Vec<String>) {
    catalog.key_holdings(
        r.legacy,
        r.scopes.iter().map(String::as_str),
        r.permission_sets.iter().map(String::as_str),
    )
}

pub(crate) fn names(catalog: &Catalog, set: ScopeSet) -> Vec<String> {
    catalog.names(set).into_iter().map(str::to_owned).collect()
}

/// A key just created or rolled: the record plus the full key, shown once.
#[derive(Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The stored record.
    #[serde(flatten)]
    pub record: KeyView,
    /// The full key. Returned exactly once; keyward keeps only its digest.
    pub key: String,
    /// Set when more than 10 write-capable sets were selected (and acknowledged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broad_access_warning: Option<String>,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedKey")
            .field("record", &self.record)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A decision as clients see it: `/v1/verify`, `keyward explain`, 403 bodies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionView {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// HTTP status the gateway answers.
    pub status: u16,
    /// Error code, when refused.
    pub code: Option<&'static str>,
    /// `allowed`, `no_route`, `missing_scopes`, `revoked`, `expired`, …
    pub reason: &'static str,
    /// `METHODS template` of the matched route.
    pub route: Option<String>,
    /// Scopes the route or request requires.
    pub required: Vec<String>,
    /// Required scopes the key lacks.
    pub missing: Vec<String>,
    /// Scopes granted to the key, as granted.
    pub granted: Vec<String>,
    /// Scopes the key holds after closure.
    pub effective: Vec<String>,
}

impl DecisionView {
    /// Renders a core decision with scope names.
    pub fn new(catalog: &Catalog, d: &Decision) -> Self {
        DecisionView {
            allowed: d.is_allowed(),
            status: d.status(),
            code: d.code(),
            reason: d.reason(),
            route: d.route.map(|r| {
                let route = catalog.route(r);
                format!("{} {}", route.methods().join(", "), route.template())
            }),
            required: names(catalog, d.required),
            missing: names(catalog, d.missing),
            granted: names(catalog, d.granted),
            effective: names(catalog, d.effective),
        }
    }
}

/// The catalog as clients read it (`GET /v1/catalog`, `keyward catalog show
/// --json`): what can be granted and what each route requires.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogView {
    /// Catalog id.
    pub name: String,
    /// Display title.
    pub title: String,
    /// Prefix of every key, e.g. `insp`.
    pub key_prefix: String,
    /// Path prefix of gateway routes.
    pub gateway_prefix: String,
    /// Every scope, keyward's reserved ones last.
    pub scopes: Vec<ScopeView>,
    /// Permission sets, including one per available scope.
    pub permission_sets: Vec<PermissionSetView>,
    /// Named selections offered at key creation.
    pub presets: Vec<PresetView>,
    /// Routes and the scopes each requires.
    pub routes: Vec<RouteView>,
}

/// One scope of the catalog.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ScopeView {
    /// `resource:action`.
    pub name: String,
    /// What it allows.
    pub description: String,
    /// Product area.
    pub area: String,
    /// `available`, `planned`, `under-review` or `deprecated`.
    pub status: String,
    /// Whether it allows writes.
    pub write: bool,
    /// One of keyward's own `keyward-*` scopes.
    pub reserved: bool,
    /// Scopes it implies directly.
    pub implies: Vec<String>,
    /// Endpoints it covers, as the catalog describes them.
    pub endpoints: Option<String>,
}

/// One permission set (and authorization group).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PermissionSetView {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Product area.
    pub area: String,
    /// What it is for.
    pub description: String,
    /// Whether any of its scopes allows writes.
    pub write: bool,
    /// Derived from one available scope.
    pub single_scope: bool,
    /// Scopes it grants.
    pub scopes: Vec<String>,
}

/// One preset.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PresetView {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Scopes it selects.
    pub scopes: Vec<String>,
    /// Permission sets it selects.
    pub permission_sets: Vec<String>,
}

/// One gateway route.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    /// HTTP methods.
    pub methods: Vec<String>,
    /// Path template under the gateway prefix.
    pub path: String,
    /// Scopes required (all of them).
    pub scopes: Vec<String>,
}

impl CatalogView {
    /// Renders `c`.
    pub fn new(c: &Catalog) -> Self {
        let scope_names = |ids: &[keyward_core::ScopeId]| -> Vec<String> {
            ids.iter().map(|i| c.scope(*i).name().to_owned()).collect()
        };
        CatalogView {
            name: c.name().to_owned(),
            title: c.title().to_owned(),
            key_prefix: c.key_prefix().to_owned(),
            gateway_prefix: c.gateway_prefix().to_owned(),
            scopes: c
                .scopes()
                .iter()
                .map(|s| ScopeView {
                    name: s.name().to_owned(),
                    description: s.description().to_owned(),
                    area: s.area().to_owned(),
                    status: s.status().as_str().to_owned(),
                    write: s.is_write(),
                    reserved: s.is_reserved(),
                    implies: scope_names(s.implies()),
                    endpoints: s.endpoints().map(str::to_owned),
                })
                .collect(),
            permission_sets: c
                .permission_sets()
                .iter()
                .map(|p| PermissionSetView {
                    id: p.id().to_owned(),
                    name: p.name().to_owned(),
                    area: p.area().to_owned(),
                    description: p.description().to_owned(),
                    write: p.is_write(),
                    single_scope: p.is_single_scope(),
                    scopes: scope_names(p.scopes()),
                })
                .collect(),
            presets: c
                .presets()
                .iter()
                .map(|p| PresetView {
                    id: p.id().to_owned(),
                    name: p.name().to_owned(),
                    description: p.description().to_owned(),
                    scopes: p.scopes().to_vec(),
                    permission_sets: p.permission_sets().to_vec(),
                })
                .collect(),
            routes: c
                .routes()
                .iter()
                .map(|r| RouteView {
                    methods: r.methods().to_vec(),
                    path: r.template().to_owned(),
                    scopes: names(c, r.required()),
                })
                .collect(),
        }
    }
}
