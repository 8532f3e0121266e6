//! The route table: method + path → the catalog route that governs it.
//!
//! Templates are `/`-separated segments: static text, `{param}` (one whole
//! segment), and a trailing `*` on the last segment meaning "this, then zero
//! or more further segments" (`/vehicles*` covers `/vehicles`, `/vehicles/42`
//! and `/vehicles/42/photos`; a lone `*` segment, as in `/files/*`, is the
//! same as `/files*`). Routers such as matchit cannot hold `/vehicles/{id}`
//! beside `/vehicles*`, hence this small trie.
//!
//! **Most specific wins**: comparing the path's segments left to right, a
//! static segment beats `{param}`, which beats `*`; a template that ends
//! exactly where the path ends beats a `*` matching nothing. Depth-first
//! search in that order, with backtracking, finds exactly that winner first.
//! Among templates, only those listing the request's method compete (`HEAD`
//! falls back to `GET` routes).

use std::collections::HashMap;

/// Index of a route in its catalog's route list.
pub type RouteId = usize;

/// One segment of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Static(String),
    Param,
    /// Zero or more further segments; always last.
    Rest,
}

/// Parses a template into segments, or says what is wrong with it.
pub(crate) fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| format!("route path `{template}` must begin with `/`"))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::with_capacity(parts.len() + 1);
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() {
            return Err(format!("route path `{template}` has an empty segment"));
        }
        if let Some(stem) = part.strip_suffix('*') {
            if !last {
                return Err(format!(
                    "route path `{template}`: `*` is allowed only at the end of the path"
                ));
            }
            if !stem.is_empty() {
                check_static(template, stem)?;
                out.push(Segment::Static(stem.to_owned()));
            }
            out.push(Segment::Rest);
        } else if let Some(name) = part.strip_prefix('{') {
            let name = name.strip_suffix('}').ok_or_else(|| {
                format!("route path `{template}`: `{part}` must be a whole `{{param}}` segment")
            })?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "route path `{template}`: parameter name `{name}` must be letters, digits or `_`"
                ));
            }
            out.push(Segment::Param);
        } else {
            check_static(template, part)?;
            out.push(Segment::Static((*part).to_owned()));
        }
    }
    Ok(out)
}

fn check_static(template: &str, seg: &str) -> Result<(), String> {
    if seg == "." || seg == ".." {
        return Err(format!("route path `{template}` has a dot segment"));
    }
    if seg.contains(['{', '}', '*', '%', '?', '#', ' ']) {
        return Err(format!(
            "route path `{template}`: segment `{seg}` has a reserved character"
        ));
    }
    Ok(())
}

#[derive(Default, Debug)]
struct Node {
    statics: HashMap<Box<str>, usize>,
    param: Option<usize>,
    /// Routes ending here exactly, by method.
    end: Vec<(Box<str>, RouteId)>,
    /// Routes ending here with `*`, by method.
    rest: Vec<(Box<str>, RouteId)>,
}

fn method_lookup(entries: &[(Box<str>, RouteId)], method: &str) -> Option<RouteId> {
    let find = |m: &str| entries.iter().find(|(em, _)| &**em == m).map(|(_, r)| *r);
    find(method).or_else(|| if method == "HEAD" { find("GET") } else { None })
}

/// A compiled set of templates. Build with [`RouteTable::insert`], query with
/// [`RouteTable::lookup`]; lookups do not allocate.
#[derive(Debug)]
pub struct RouteTable {
    nodes: Vec<Node>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            nodes: vec![Node::default()],
        }
    }
}

impl RouteTable {
    /// Adds `route` for `method` at the parsed template.
    ///
    /// Returns the route already registered for the same method and template
    /// shape, if any (the caller reports the duplicate; the first stays).
    pub(crate) fn insert(
        &mut self,
        segments: &[Segment],
        method: &str,
        route: RouteId,
    ) -> Result<(), RouteId> {
        let mut node = 0;
        let mut rest = false;
        for seg in segments {
            match seg {
                Segment::Static(s) => {
                    node = match self.nodes[node].statics.get(s.as_str()) {
                        Some(&n) => n,
                        None => {
                            let n = self.push();
                            self.nodes[node].statics.insert(s.as_str().into(), n);
                            n
                        }
                    };
                }
                Segment::Param => {
                    node = match self.nodes[node].param {
                        Some(n) => n,
                        None => {
                            let n = self.push();
                            self.nodes[node].param = Some(n);
                            n
                        }
                    };
                }
                Segment::Rest => rest = true,
            }
        }
        let entries = if rest {
            &mut self.nodes[node].rest
        } else {
            &mut self.nodes[node].end
        };
        if let Some((_, existing)) = entries.iter().find(|(m, _)| &**m == method) {
            return Err(*existing);
        }
        entries.push((method.into(), route));
        Ok(())
    }

    fn push(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// The most specific route for `method` and a normalised `path`
    /// (beginning with `/`, gateway prefix already removed).
    pub fn lookup(&self, method: &str, path: &str) -> Option<RouteId> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        self.walk(0, rest, method)
    }

    fn walk(&self, node_id: usize, rest: &str, method: &str) -> Option<RouteId> {
        let node = &self.nodes[node_id];
        if rest.is_empty() {
            return method_lookup(&node.end, method).or_else(|| method_lookup(&node.rest, method));
        }
        let (seg, tail) = match rest.split_once('/') {
            Some((s, t)) => (s, t),
            None => (rest, ""),
        };
        if let Some(&child) = node.statics.get(seg)
            && let Some(r) = self.walk(child, tail, method)
        {
            return Some(r);
        }
        if let Some(child) = node.param
            && let Some(r) = self.walk(child, tail, method)
        {
            return Some(r);
        }
        method_lookup(&node.rest, method)
    }
}

/// The naive reference the trie is tested against: score every template that
/// matches and keep the best. Public to the crate's tests only.
#[cfg(test)]
pub(crate) fn naive_lookup(
    routes: &[(Vec<Segment>, Vec<String>)],
    method: &str,
    path: &str,
) -> Option<RouteId> {
    let segs: Vec<&str> = match path.strip_prefix('/') {
        Some("") | None => Vec::new(),
        Some(p) => p.split('/').collect(),
    };
    // Score: one rank per path segment (2 static, 1 param, 0 rest), then 1 if
    // the template ended with the path, 0 if a `*` matched nothing.
    let score = |tpl: &[Segment]| -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        for seg in tpl {
            match seg {
                Segment::Static(s) => {
                    if segs.get(i) != Some(&s.as_str()) {
                        return None;
                    }
                    out.push(2);
                    i += 1;
                }
                Segment::Param => {
                    segs.get(i)?;
                    out.push(1);
                    i += 1;
                }
                Segment::Rest => {
                    out.extend(std::iter::repeat_n(0, segs.len() - i));
                    out.push(0);
                    return Some(out);
                }
            }
        }
        if i == segs.len() {
            out.push(1);
            Some(out)
        } else {
            None
        }
    };
    // HEAD also matches GET routes; specificity first, then the exact method.
    let mut best: Option<((Vec<u8>, bool), RouteId)> = None;
    for (id, (tpl, methods)) in routes.iter().enumerate() {
        let exact = methods.iter().any(|m| m == method);
        let fallback = method == "HEAD" && methods.iter().any(|m| m == "GET");
        if !exact && !fallback {
            continue;
        }
        if let Some(s) = score(tpl) {
            let key = (s, exact);
            if best.as_ref().is_none_or(|(b, _)| key > *b) {
                best = Some((key, id));
            }
        }
    }
    best.map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(templates: &[(&str, &[&str])]) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, (tpl, methods)) in templates.iter().enumerate() {
            let segs = parse_template(tpl).unwrap();
            for m in *methods {
                t.insert(&segs, m, i).unwrap();
            }
        }
        t
    }

    #[test]
    fn most_specific_wins() {
        let t = table(&[
            ("/vehicles", &["GET"]),
            ("/vehicles/{id}", &["GET"]),
            ("/vehicles*", &["POST", "PUT", "DELETE"]),
            ("/vehicles/export", &["GET"]),
            ("/*", &["OPTIONS"]),
            ("/a/{x}/c", &["GET"]),
            ("/a/b*", &["GET"]),
        ]);
        let check =
            |m: &str, p: &str, want: Option<RouteId>| assert_eq!(t.lookup(m, p), want, "{m} {p}");
        check("GET", "/vehicles", Some(0));
        check("HEAD", "/vehicles", Some(0));
        check("GET", "/vehicles/42", Some(1));
        check("GET", "/vehicles/export", Some(3));
        check("GET", "/vehicles/42/photos", None);
        check("POST", "/vehicles", Some(2));
        check("DELETE", "/vehicles/42/photos", Some(2));
        check("PATCH", "/vehicles/42", None);
        check("POST", "/vehiclesx", None);
        check("OPTIONS", "/", Some(4));
        check("OPTIONS", "/x/y", Some(4));
        check("GET", "/a/b/c", Some(6));
        check("GET", "/a/z/c", Some(5));
        check("GET", "/a/b", Some(6));
    }

    #[test]
    fn bad_templates_are_explained() {
        for (tpl, needle) in [
            ("vehicles", "must begin with `/`"),
            ("/a//b", "empty segment"),
            ("/a*/b", "only at the end"),
            ("/a/{id", "whole `{param}` segment"),
            ("/a/{}", "parameter name"),
            ("/a/x{id}", "reserved character"),
            ("/a/..", "dot segment"),
        ] {
            let err = parse_template(tpl).unwrap_err();
            assert!(err.contains(needle), "{tpl}: {err}");
        }
        let mut t = RouteTable::default();
        t.insert(&parse_template("/a/{x}").unwrap(), "GET", 0)
            .unwrap();
        assert_eq!(
            t.insert(&parse_template("/a/{y}").unwrap(), "GET", 1),
            Err(0)
        );
        t.insert(&parse_template("/a*").unwrap(), "GET", 2).unwrap();
        assert_eq!(t.insert(&parse_template("/a/*").unwrap(), "GET", 3), Err(2));
    }

    fn arb_template() -> impl Strategy<Value = Vec<Segment>> {
        let seg = prop_oneof![
            3 => prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| Segment::Static(s.to_owned())),
            1 => Just(Segment::Param),
        ];
        (prop::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(mut v, rest)| {
            if rest {
                v.push(Segment::Rest);
            }
            v
        })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_linear_scan(
            templates in prop::collection::vec((arb_template(), prop::sample::subsequence(vec!["GET", "POST", "HEAD"], 1..=3)), 1..12),
            paths in prop::collection::vec(prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..5), 1..20),
            method in prop::sample::select(vec!["GET", "POST", "HEAD", "PUT"]),
        ) {
            let mut t = RouteTable::default();
            let mut kept: Vec<(Vec<Segment>, Vec<String>)> = Vec::new();
            for (tpl, methods) in templates {
                let id = kept.len();
                let mut ms = Vec::new();
                for m in methods {
                    if t.insert(&tpl, m, id).is_ok() {
                        ms.push(m.to_owned());
                    }
                }
                kept.push((tpl, ms));
            }
            for p in paths {
                let path = format!("/{}", p.join("/"));
                prop_assert_eq!(t.lookup(method, &path), naive_lookup(&kept, method, &path), "{} {}", method, path);
            }
        }
    }
}
