//! Compiling catalog text: the raw TOML shape, and the builder that checks
//! it and reports every problem with its location.

use super::{
    Catalog, CatalogError, CatalogErrors, KEYWARD_AREA, Location, PermissionSet, Preset, RESERVED,
    Route, Scope,
};
use crate::route::{RouteTable, Segment, parse_template};
use crate::scope::{MAX_SCOPES, ScopeId, ScopeSet, ScopeStatus, is_slug, is_valid_scope_name};
use std::collections::HashMap;
use toml::Spanned;

/// [`Catalog::parse`]: TOML into the raw shape (stopping at the first
/// syntax error), then the builder, which collects every other error.
pub(super) fn parse(source_name: &str, text: &str) -> Result<Catalog, CatalogErrors> {
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
            sha256: sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
                self.text.as_bytes(),
            ))
            .into(),
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
