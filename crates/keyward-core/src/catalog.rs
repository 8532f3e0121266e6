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

use crate::route::{RouteId, RouteTable, Segment, parse_template};
use crate::scope::{MAX_SCOPES, ScopeId, ScopeSet, ScopeStatus, is_slug, is_valid_scope_name};
use std::collections::HashMap;
use std::fmt;
use toml::Spanned;

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

// ---- raw TOML shape -------------------------------------------------------

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    name: Spanned<String>,
    #[serde(default)]
    title: Option<String>,
    key_prefix: Spanned<String>,
    #[serde(default)]
    gateway_prefix: Option<Spanned<String>>,
    #[serde(default)]
    scopes: Vec<RawScope>,
    #[serde(default)]
    permission_sets: Vec<RawSet>,
    #[serde(default)]
    presets: Vec<RawPreset>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    name: Spanned<String>,
    description: Spanned<String>,
    #[serde(default)]
    area: Option<String>,
    #[serde(default)]
    status: Option<Spanned<String>>,
    #[serde(default)]
    implies: Vec<Spanned<String>>,
    #[serde(default)]
    endpoints: Option<String>,
    #[serde(default)]
    write: Option<bool>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    id: Spanned<String>,
    name: Spanned<String>,
    #[serde(default)]
    area: Option<String>,
    #[serde(default)]
    description: String,
    scopes: Spanned<Vec<Spanned<String>>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    id: Spanned<String>,
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    scopes: Vec<Spanned<String>>,
    #[serde(default)]
    permission_sets: Vec<Spanned<String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    methods: Spanned<Vec<Spanned<String>>>,
    path: Spanned<String>,
    scopes: Spanned<Vec<Spanned<String>>>,
}

// ---- compiled model -------------------------------------------------------

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
        let fail = |errors| CatalogErrors {
            source_name: source_name.to_owned(),
            errors,
        };
        let raw: RawCatalog = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let message = e.message().trim().to_lowercase();
                return Err(fail(vec![CatalogError {
                    location: Location::of(text, offset),
                    message: format!("invalid catalog: {}", message.trim_end_matches('.')),
                }]));
            }
        };
        let mut b = Builder {
            text,
            errors: Vec::new(),
        };
        let catalog = b.build(raw);
        if b.errors.is_empty() {
            Ok(catalog)
        } else {
            b.errors
                .sort_by_key(|e| (e.location.line, e.location.column));
            Err(fail(b.errors))
        }
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

// ---- builder --------------------------------------------------------------

struct Builder<'t> {
    text: &'t str,
    errors: Vec<CatalogError>,
}

impl Builder<'_> {
    fn err<T>(&mut self, at: &Spanned<T>, message: String) {
        let location = Location::of(self.text, at.span().start);
        self.errors.push(CatalogError { location, message });
    }

    fn build(&mut self, raw: RawCatalog) -> Catalog {
        if !is_slug(raw.name.get_ref()) {
            self.err(
                &raw.name,
                format!(
                    "catalog name `{}` must match `^[a-z][a-z0-9-]*$`",
                    raw.name.get_ref()
                ),
            );
        }
        if !crate::key::is_valid_key_prefix(raw.key_prefix.get_ref()) {
            self.err(
                &raw.key_prefix,
                format!("key prefix `{}` must be 2 to 16 lowercase letters or digits, starting with a letter", raw.key_prefix.get_ref()),
            );
        }
        let gateway_prefix = match &raw.gateway_prefix {
            Some(p) => {
                let v = p.get_ref();
                if !v.is_empty()
                    && (!v.starts_with('/')
                        || v.ends_with('/')
                        || crate::path::check_normal(v).is_err())
                {
                    self.err(p, format!("gateway prefix `{v}` must be empty or a normal path such as `/api/v1`, without a trailing `/`"));
                }
                v.clone()
            }
            None => String::new(),
        };

        let (scopes, scope_index) = self.scopes(&raw.scopes);
        let available: ScopeSet = scopes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.status == ScopeStatus::Available)
            .filter_map(|(i, _)| ScopeId::from_index(i))
            .collect();
        let lookup = Lookup {
            scopes: &scopes,
            index: &scope_index,
        };
        let (sets, set_index) = self.sets(&raw.permission_sets, &lookup);
        let presets = self.presets(&raw.presets, &lookup, &set_index, &raw.permission_sets);
        let (routes, table) = self.routes(&raw.routes, &lookup);

        Catalog {
            name: raw.name.into_inner(),
            title: raw.title.unwrap_or_default(),
            key_prefix: raw.key_prefix.into_inner(),
            gateway_prefix,
            scopes,
            scope_index,
            sets,
            set_index,
            presets,
            routes,
            table,
            available,
        }
    }

    fn scopes(&mut self, raw: &[RawScope]) -> (Vec<Scope>, HashMap<String, ScopeId>) {
        let mut scopes: Vec<Scope> = Vec::new();
        let mut index: HashMap<String, ScopeId> = HashMap::new();
        let total = raw.len() + RESERVED.len();
        if total > MAX_SCOPES
            && let Some(first) = raw.get(MAX_SCOPES - RESERVED.len())
        {
            self.err(
                &first.name,
                format!("too many scopes: {total} with keyward's own, at most {MAX_SCOPES}"),
            );
        }
        // Raw implies, resolved once every name is known.
        let mut pending: Vec<Vec<&Spanned<String>>> = Vec::new();
        for rs in raw.iter().take(MAX_SCOPES - RESERVED.len()) {
            let name = rs.name.get_ref();
            if !is_valid_scope_name(name) {
                self.err(&rs.name, format!("scope name `{name}` must match `resource:action` (`^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$`)"));
            } else if name.starts_with("keyward-") {
                self.err(
                    &rs.name,
                    format!("scope `{name}` uses the reserved `keyward-` namespace"),
                );
            }
            if index.contains_key(name) {
                self.err(&rs.name, format!("scope `{name}` is defined twice"));
                continue;
            }
            if rs.description.get_ref().trim().is_empty() {
                self.err(
                    &rs.description,
                    format!("scope `{name}` has an empty description"),
                );
            }
            let status = match &rs.status {
                None => ScopeStatus::Available,
                Some(s) => ScopeStatus::parse(s.get_ref()).unwrap_or_else(|| {
                    self.err(s, format!("scope `{name}` has unknown status `{}`: expected available, planned, under-review or deprecated", s.get_ref()));
                    ScopeStatus::Available
                }),
            };
            let action = name.split_once(':').map_or("", |(_, a)| a);
            let write = rs.write.unwrap_or(!matches!(action, "read" | "view"));
            let Some(id) = ScopeId::from_index(scopes.len()) else {
                break;
            };
            index.insert(name.clone(), id);
            scopes.push(Scope {
                name: name.clone(),
                description: rs.description.get_ref().clone(),
                area: rs
                    .area
                    .clone()
                    .unwrap_or_else(|| title_case(name.split(':').next().unwrap_or(name))),
                status,
                write,
                endpoints: rs.endpoints.clone(),
                implies: Vec::new(),
                closure: ScopeSet::EMPTY,
                reserved: false,
            });
            pending.push(rs.implies.iter().collect());
        }
        for (i, implies) in pending.into_iter().enumerate() {
            for target in implies {
                let tname = target.get_ref();
                match index.get(tname) {
                    None => self.err(
                        target,
                        format!("scope `{}` implies unknown scope `{tname}`", scopes[i].name),
                    ),
                    Some(&t) if t.index() == i => {
                        self.err(target, format!("scope `{tname}` implies itself"))
                    }
                    Some(&t) => {
                        if scopes[i].status == ScopeStatus::Available
                            && scopes[t.index()].status != ScopeStatus::Available
                        {
                            self.err(
                                target,
                                format!(
                                    "available scope `{}` implies `{tname}`, which is {}",
                                    scopes[i].name,
                                    scopes[t.index()].status
                                ),
                            );
                        }
                        scopes[i].implies.push(t);
                    }
                }
            }
        }
        // keyward's own scopes, appended after the catalog's.
        for (name, description, _, write) in RESERVED {
            let Some(id) = ScopeId::from_index(scopes.len()) else {
                break;
            };
            index.insert((*name).to_owned(), id);
            scopes.push(Scope {
                name: (*name).to_owned(),
                description: (*description).to_owned(),
                area: KEYWARD_AREA.to_owned(),
                status: ScopeStatus::Available,
                write: *write,
                endpoints: None,
                implies: Vec::new(),
                closure: ScopeSet::EMPTY,
                reserved: true,
            });
        }
        for (name, _, implies, _) in RESERVED {
            if let Some(&id) = index.get(*name) {
                let ids: Vec<ScopeId> = implies
                    .iter()
                    .filter_map(|n| index.get(*n).copied())
                    .collect();
                scopes[id.index()].implies = ids;
            }
        }
        self.closures(&mut scopes, raw);
        (scopes, index)
    }

    /// Depth-first closure with cycle detection; each cycle reported once.
    fn closures(&mut self, scopes: &mut [Scope], raw: &[RawScope]) {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        fn visit(
            i: usize,
            scopes: &mut [Scope],
            marks: &mut [Mark],
            stack: &mut Vec<usize>,
            cycles: &mut Vec<Vec<usize>>,
        ) -> ScopeSet {
            if marks[i] == Mark::Done {
                return scopes[i].closure;
            }
            marks[i] = Mark::Active;
            stack.push(i);
            let mut closure = ScopeSet::EMPTY;
            if let Some(id) = ScopeId::from_index(i) {
                closure.insert(id);
            }
            let implies = scopes[i].implies.clone();
            for t in implies {
                let ti = t.index();
                match marks[ti] {
                    Mark::Active => {
                        let start = stack.iter().position(|&s| s == ti).unwrap_or(0);
                        cycles.push(stack[start..].to_vec());
                    }
                    _ => closure = closure.union(&visit(ti, scopes, marks, stack, cycles)),
                }
            }
            stack.pop();
            marks[i] = Mark::Done;
            scopes[i].closure = closure;
            closure
        }
        let mut marks = vec![Mark::New; scopes.len()];
        let mut cycles = Vec::new();
        for i in 0..scopes.len() {
            let mut stack = Vec::new();
            visit(i, scopes, &mut marks, &mut stack, &mut cycles);
        }
        for cycle in cycles {
            let names: Vec<&str> = cycle.iter().map(|&i| scopes[i].name.as_str()).collect();
            let first = cycle.first().copied().unwrap_or(0);
            let path = format!(
                "{} → {}",
                names.join(" → "),
                names.first().copied().unwrap_or("")
            );
            if let Some(rs) = raw.get(first) {
                self.err(&rs.name, format!("scope hierarchy has a cycle: {path}"));
            }
        }
    }

    fn sets(
        &mut self,
        raw: &[RawSet],
        lk: &Lookup<'_>,
    ) -> (Vec<PermissionSet>, HashMap<String, usize>) {
        let mut sets = Vec::new();
        let mut index = HashMap::new();
        for rs in raw {
            let id = rs.id.get_ref();
            if !is_slug(id) {
                self.err(
                    &rs.id,
                    format!("permission set id `{id}` must match `^[a-z][a-z0-9-]*$`"),
                );
            }
            if index.contains_key(id) {
                self.err(&rs.id, format!("permission set `{id}` is defined twice"));
                continue;
            }
            if rs.name.get_ref().trim().is_empty() {
                self.err(&rs.name, format!("permission set `{id}` has an empty name"));
            }
            if rs.scopes.get_ref().is_empty() {
                self.err(
                    &rs.scopes,
                    format!("permission set `{id}` grants no scopes"),
                );
            }
            let what = format!("permission set `{id}`");
            let ids = self.grantable(lk, &what, rs.scopes.get_ref());
            let scope_set: ScopeSet = ids.iter().copied().collect();
            index.insert(id.clone(), sets.len());
            sets.push(PermissionSet {
                id: id.clone(),
                name: rs.name.get_ref().clone(),
                area: rs.area.clone().unwrap_or_default(),
                description: rs.description.clone(),
                write: ids.iter().any(|s| lk.scopes[s.index()].write),
                scopes: ids,
                scope_set,
                single_scope: false,
            });
        }
        for (i, s) in lk.scopes.iter().enumerate() {
            let Some(sid) = ScopeId::from_index(i) else {
                continue;
            };
            if s.status != ScopeStatus::Available {
                continue;
            }
            index.insert(s.name.clone(), sets.len());
            sets.push(PermissionSet {
                id: s.name.clone(),
                name: s.name.clone(),
                area: s.area.clone(),
                description: s.description.clone(),
                scopes: vec![sid],
                scope_set: std::iter::once(sid).collect(),
                write: s.write,
                single_scope: true,
            });
        }
        (sets, index)
    }

    /// Resolves scope references that must be available; reports the rest.
    fn grantable(
        &mut self,
        lk: &Lookup<'_>,
        what: &str,
        names: &[Spanned<String>],
    ) -> Vec<ScopeId> {
        let mut out = Vec::new();
        for n in names {
            match lk.index.get(n.get_ref()) {
                None => self.err(
                    n,
                    format!("{what} refers to unknown scope `{}`", n.get_ref()),
                ),
                Some(&id) => {
                    let status = lk.scopes[id.index()].status;
                    if status != ScopeStatus::Available {
                        self.err(
                            n,
                            format!(
                                "{what} refers to scope `{}`, which is {status}",
                                n.get_ref()
                            ),
                        );
                    } else if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
        out
    }

    fn presets(
        &mut self,
        raw: &[RawPreset],
        lk: &Lookup<'_>,
        sets: &HashMap<String, usize>,
        raw_sets: &[RawSet],
    ) -> Vec<Preset> {
        let mut out: Vec<Preset> = Vec::new();
        for rp in raw {
            let id = rp.id.get_ref();
            if !is_slug(id) {
                self.err(
                    &rp.id,
                    format!("preset id `{id}` must match `^[a-z][a-z0-9-]*$`"),
                );
            }
            if out.iter().any(|p| &p.id == id) {
                self.err(&rp.id, format!("preset `{id}` is defined twice"));
                continue;
            }
            if rp.name.get_ref().trim().is_empty() {
                self.err(&rp.name, format!("preset `{id}` has an empty name"));
            }
            if rp.scopes.is_empty() && rp.permission_sets.is_empty() {
                self.err(
                    &rp.id,
                    format!("preset `{id}` selects no scopes or permission sets"),
                );
            }
            let what = format!("preset `{id}`");
            self.grantable(lk, &what, &rp.scopes);
            for s in &rp.permission_sets {
                let known = sets.contains_key(s.get_ref())
                    && raw_sets.iter().any(|r| r.id.get_ref() == s.get_ref());
                if !known {
                    self.err(
                        s,
                        format!(
                            "preset `{id}` refers to unknown permission set `{}`",
                            s.get_ref()
                        ),
                    );
                }
            }
            out.push(Preset {
                id: id.clone(),
                name: rp.name.get_ref().clone(),
                description: rp.description.clone(),
                scopes: rp.scopes.iter().map(|s| s.get_ref().clone()).collect(),
                permission_sets: rp
                    .permission_sets
                    .iter()
                    .map(|s| s.get_ref().clone())
                    .collect(),
            });
        }
        out
    }

    fn routes(&mut self, raw: &[RawRoute], lk: &Lookup<'_>) -> (Vec<Route>, RouteTable) {
        const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        let mut routes: Vec<Route> = Vec::new();
        let mut table = RouteTable::default();
        for rr in raw {
            let template = rr.path.get_ref();
            let segments: Option<Vec<Segment>> = match parse_template(template) {
                Ok(s) => Some(s),
                Err(msg) => {
                    self.err(&rr.path, msg);
                    None
                }
            };
            if rr.methods.get_ref().is_empty() {
                self.err(&rr.methods, format!("route `{template}` lists no methods"));
            }
            if rr.scopes.get_ref().is_empty() {
                self.err(
                    &rr.scopes,
                    format!(
                        "route `{template}` requires no scopes: every route must name at least one"
                    ),
                );
            }
            let what = format!("route `{template}`");
            let ids = self.grantable(lk, &what, rr.scopes.get_ref());
            let required: ScopeSet = ids.iter().copied().collect();
            let id = routes.len();
            let mut methods = Vec::new();
            for m in rr.methods.get_ref() {
                let mv = m.get_ref();
                if !METHODS.contains(&mv.as_str()) {
                    self.err(
                        m,
                        format!(
                            "route `{template}` has unknown method `{mv}`: expected one of {}",
                            METHODS.join(", ")
                        ),
                    );
                    continue;
                }
                if methods.contains(mv) {
                    self.err(m, format!("route `{template}` lists method `{mv}` twice"));
                    continue;
                }
                if let Some(segs) = &segments
                    && let Err(existing) = table.insert(segs, mv, id)
                {
                    let other: &Route = &routes[existing];
                    self.err(
                        m,
                        format!(
                            "route `{mv} {template}` duplicates `{mv} {}`",
                            other.template
                        ),
                    );
                }
                methods.push(mv.clone());
            }
            routes.push(Route {
                methods,
                template: template.clone(),
                write: ids.iter().any(|s| lk.scopes[s.index()].write),
                required,
            });
        }
        (routes, table)
    }
}

struct Lookup<'a> {
    scopes: &'a [Scope],
    index: &'a HashMap<String, ScopeId>,
}

fn title_case(resource: &str) -> String {
    resource
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
