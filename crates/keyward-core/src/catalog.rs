//! The catalog: an operator's permission model, loaded from TOML and compiled.
//!
//! Loading validates everything and reports **every** problem with its line
//! and column ([`CatalogErrors`]), so `keyward catalog check` can print them
//! all at once. A compiled [`Catalog`] is immutable: scopes are numbered,
//! closures under `implies` are precomputed as bitsets, routes are in a trie.
//! keyward's reserved `keyward-*` scopes are added to every catalog.
//!
//! This module does not read files: callers pass the text and a name for
//! messages.

use crate::route::{RouteId, RouteTable};
use crate::scope::{ScopeId, ScopeSet, ScopeStatus};
use std::collections::HashMap;
use std::fmt;

/// The fleet catalog of the contract, compiled into the binary as the default.
pub const FLEET_TOML: &str = include_str!("../../../catalogs/fleet.toml");

/// A permission set selecting more than this many write-capable sets is broad
/// access and must be acknowledged.
pub const BROAD_ACCESS_THRESHOLD: usize = 10;

/// Product area of keyward's own reserved scopes.
pub const KEYWARD_AREA: &str = "keyward";

/// The names of keyward's own scopes, as constants: code that requires one
/// names it here, so a typo is a compile error, not a scope nobody holds.
pub mod reserved {
    /// `keyward-api-keys:verify`
    pub const API_KEYS_VERIFY: &str = "keyward-api-keys:verify";
    /// `keyward-api-keys:read`
    pub const API_KEYS_READ: &str = "keyward-api-keys:read";
    /// `keyward-api-keys:write`
    pub const API_KEYS_WRITE: &str = "keyward-api-keys:write";
    /// `keyward-groups:read`
    pub const GROUPS_READ: &str = "keyward-groups:read";
    /// `keyward-groups:write`
    pub const GROUPS_WRITE: &str = "keyward-groups:write";
    /// `keyward-users:read`
    pub const USERS_READ: &str = "keyward-users:read";
    /// `keyward-users:write`
    pub const USERS_WRITE: &str = "keyward-users:write";
    /// `keyward-audit:read`
    pub const AUDIT_READ: &str = "keyward-audit:read";
    /// `keyward-settings:read`
    pub const SETTINGS_READ: &str = "keyward-settings:read";
    /// `keyward-settings:write`
    pub const SETTINGS_WRITE: &str = "keyward-settings:write";
}

/// keyward's own scopes: (name, description, implies, write-capable).
const RESERVED: &[(&str, &str, &[&str], bool)] = &[
    (
        reserved::API_KEYS_VERIFY,
        "Verify API keys through POST /v1/verify",
        &[],
        false,
    ),
    (
        reserved::API_KEYS_READ,
        "List and inspect API keys",
        &[reserved::API_KEYS_VERIFY],
        false,
    ),
    (
        reserved::API_KEYS_WRITE,
        "Create, roll and revoke API keys",
        &[reserved::API_KEYS_READ],
        true,
    ),
    (
        reserved::GROUPS_READ,
        "List authorization groups and their members",
        &[],
        false,
    ),
    (
        reserved::GROUPS_WRITE,
        "Change authorization group membership",
        &[reserved::GROUPS_READ],
        true,
    ),
    (reserved::USERS_READ, "List users", &[], false),
    (
        reserved::USERS_WRITE,
        "Create users and reset their passwords",
        &[reserved::USERS_READ],
        true,
    ),
    (reserved::AUDIT_READ, "Read the audit log", &[], false),
    (
        reserved::SETTINGS_READ,
        "Read the organization's key policy and webhooks",
        &[],
        false,
    ),
    (
        reserved::SETTINGS_WRITE,
        "Change the key policy and manage webhooks",
        &[reserved::SETTINGS_READ],
        true,
    ),
];

/// Where in the catalog text a problem is: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Location {
    fn of(source: &str, offset: usize) -> Self {
        let before = source.get(..offset.min(source.len())).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// One problem in a catalog, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogError {
    /// Where the offending value starts.
    pub location: Location,
    /// Lowercase, specific, naming the value.
    pub message: String,
}

/// Every problem found in one catalog, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogErrors {
    /// Name of the source, as given by the caller (usually the file path).
    pub source_name: String,
    /// At least one.
    pub errors: Vec<CatalogError>,
}

impl fmt::Display for CatalogErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.source_name, e.location.line, e.location.column, e.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for CatalogErrors {}

/// One scope of a compiled catalog.
#[derive(Clone, Debug)]
pub struct Scope {
    name: String,
    description: String,
    area: String,
    status: ScopeStatus,
    write: bool,
    endpoints: Option<String>,
    implies: Vec<ScopeId>,
    closure: ScopeSet,
    reserved: bool,
}

impl Scope {
    /// `resource:action`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What the scope allows, in the catalog's words.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Product area used to group it in the console.
    pub fn area(&self) -> &str {
        &self.area
    }
    /// Lifecycle status.
    pub fn status(&self) -> ScopeStatus {
        self.status
    }
    /// Whether holding it lets a key change data.
    pub fn is_write(&self) -> bool {
        self.write
    }
    /// The catalog's human summary of its endpoints, if any.
    pub fn endpoints(&self) -> Option<&str> {
        self.endpoints.as_deref()
    }
    /// Scopes it directly implies.
    pub fn implies(&self) -> &[ScopeId] {
        &self.implies
    }
    /// Itself plus everything it implies, transitively.
    pub fn closure(&self) -> ScopeSet {
        self.closure
    }
    /// One of keyward's own `keyward-*` scopes.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }
}

/// A named bundle of scopes that can be granted, and an authorization group.
#[derive(Clone, Debug)]
pub struct PermissionSet {
    id: String,
    name: String,
    area: String,
    description: String,
    scopes: Vec<ScopeId>,
    scope_set: ScopeSet,
    write: bool,
    single_scope: bool,
}

impl PermissionSet {
    /// Stable id; for single-scope sets, the scope name.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Product area.
    pub fn area(&self) -> &str {
        &self.area
    }
    /// What it is for.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// The scopes it grants, as listed.
    pub fn scopes(&self) -> &[ScopeId] {
        &self.scopes
    }
    /// The scopes it grants, as a set (not expanded by `implies`).
    pub fn scope_set(&self) -> ScopeSet {
        self.scope_set
    }
    /// Whether any of its scopes is write-capable.
    pub fn is_write(&self) -> bool {
        self.write
    }
    /// Whether the catalog derived it from one available scope.
    pub fn is_single_scope(&self) -> bool {
        self.single_scope
    }
}

/// A named selection offered at key creation, e.g. "Read-Only Integration".
#[derive(Clone, Debug)]
pub struct Preset {
    id: String,
    name: String,
    description: String,
    scopes: Vec<String>,
    permission_sets: Vec<String>,
}

impl Preset {
    /// Stable id used on the command line and in the API.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What it is for.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Scope names it selects.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
    /// Permission set ids it selects.
    pub fn permission_sets(&self) -> &[String] {
        &self.permission_sets
    }
}

/// One gateway route: methods + template → required scopes (all of them).
#[derive(Clone, Debug)]
pub struct Route {
    methods: Vec<String>,
    template: String,
    required: ScopeSet,
    write: bool,
}

impl Route {
    /// Methods it covers.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }
    /// The path template, as written.
    pub fn template(&self) -> &str {
        &self.template
    }
    /// Scopes a key needs, all of them.
    pub fn required(&self) -> ScopeSet {
        self.required
    }
    /// Whether any required scope is write-capable.
    pub fn is_write(&self) -> bool {
        self.write
    }
}

/// A validated, compiled catalog. Cheap to query, immutable once built.
#[derive(Debug)]
pub struct Catalog {
    name: String,
    title: String,
    key_prefix: String,
    gateway_prefix: String,
    scopes: Vec<Scope>,
    scope_index: HashMap<String, ScopeId>,
    sets: Vec<PermissionSet>,
    set_index: HashMap<String, usize>,
    presets: Vec<Preset>,
    routes: Vec<Route>,
    table: RouteTable,
    available: ScopeSet,
    /// SHA-256 of the text it was compiled from.
    sha256: [u8; 32],
}

impl Catalog {
    /// The built-in fleet catalog.
    ///
    /// # Errors
    /// Only if the shipped file were invalid, which a test rules out.
    pub fn fleet() -> Result<Catalog, CatalogErrors> {
        Catalog::parse("fleet.toml (built in)", FLEET_TOML)
    }

    /// Parses and validates catalog text.
    ///
    /// # Errors
    /// [`CatalogErrors`] with every problem found and its location. A TOML
    /// syntax or shape error stops at that first error, since nothing after
    /// it can be trusted.
    pub fn parse(source_name: &str, text: &str) -> Result<Catalog, CatalogErrors> {
        build::parse(source_name, text)
    }

    /// SHA-256 of the exact text the catalog was compiled from: what tells
    /// two nodes' catalogs apart (SPEC §13), whatever their names say.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// [`Catalog::sha256`] in lowercase hex, as `/healthz` and messages
    /// show it.
    pub fn sha256_hex(&self) -> String {
        use std::fmt::Write as _;
        self.sha256
            .iter()
            .fold(String::with_capacity(64), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
    }

    /// The scopes `self` makes available that `old` announced as planned or
    /// under review: what `catalog.scope_available` tells integrators who
    /// were waiting for them (seed 002's future scopes).
    pub fn scopes_made_available<'a>(&'a self, old: &Catalog) -> Vec<&'a Scope> {
        self.scopes
            .iter()
            .filter(|s| s.status() == ScopeStatus::Available)
            .filter(|s| {
                old.scope_id(s.name()).is_some_and(|id| {
                    matches!(
                        old.scope(id).status(),
                        ScopeStatus::Planned | ScopeStatus::UnderReview
                    )
                })
            })
            .collect()
    }

    /// Catalog id, e.g. `fleet`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Human title.
    pub fn title(&self) -> &str {
        &self.title
    }
    /// Prefix of every key issued under this catalog, e.g. `insp`.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }
    /// Path prefix the gateway removes before matching, e.g. `/api/third-party/v1`.
    pub fn gateway_prefix(&self) -> &str {
        &self.gateway_prefix
    }
    /// Every scope, catalog-defined first, then keyward's reserved ones.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
    /// One scope by id.
    pub fn scope(&self, id: ScopeId) -> &Scope {
        &self.scopes[id.index()]
    }
    /// A scope's id by name.
    pub fn scope_id(&self, name: &str) -> Option<ScopeId> {
        self.scope_index.get(name).copied()
    }

    /// The set of these scopes, or `None` if any is not in the catalog: how
    /// an endpoint's required scopes, named in code, become a set once.
    pub fn scope_set(&self, names: &[&str]) -> Option<ScopeSet> {
        let mut set = ScopeSet::EMPTY;
        for name in names {
            set.insert(self.scope_id(name)?);
        }
        Some(set)
    }
    /// Every permission set: the catalog's, then one per available scope.
    pub fn permission_sets(&self) -> &[PermissionSet] {
        &self.sets
    }
    /// A permission set by id.
    pub fn permission_set(&self, id: &str) -> Option<&PermissionSet> {
        self.set_index.get(id).map(|&i| &self.sets[i])
    }
    /// Presets offered at key creation.
    pub fn presets(&self) -> &[Preset] {
        &self.presets
    }
    /// A preset by id.
    pub fn preset(&self, id: &str) -> Option<&Preset> {
        self.presets.iter().find(|p| p.id == id)
    }
    /// Gateway routes in catalog order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
    /// One route by id.
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id]
    }
    /// The route governing `method` + `path` (prefix already removed).
    pub fn match_route(&self, method: &str, path: &str) -> Option<RouteId> {
        self.table.lookup(method, path)
    }
    /// Every grantable scope; what a legacy key effectively holds.
    pub fn available_scopes(&self) -> ScopeSet {
        self.available
    }
    /// Closure under `implies`.
    pub fn closure(&self, granted: ScopeSet) -> ScopeSet {
        granted.iter().fold(ScopeSet::EMPTY, |acc, id| {
            acc.union(&self.scopes[id.index()].closure)
        })
    }
    /// Scope names of a set, in catalog order.
    pub fn names(&self, set: ScopeSet) -> Vec<&str> {
        self.name_iter(set).collect()
    }

    /// [`Catalog::names`] without the `Vec`, for answers written straight
    /// into a response buffer.
    pub fn name_iter(&self, set: ScopeSet) -> impl Iterator<Item = &str> + '_ {
        set.iter().map(|id| self.scopes[id.index()].name.as_str())
    }
}

mod build;
#[cfg(test)]
mod tests;
