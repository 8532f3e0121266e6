//! Scope identities and fixed-size scope sets.
//!
//! A compiled catalog numbers its scopes densely, so a set of scopes is a
//! 256-bit bitset: `Copy`, no allocation, and a scope check on the hot path is
//! four `AND`s. This module owns only the representation; which scopes exist
//! and what they imply belongs to [`crate::catalog`].

use std::fmt;

/// The most scopes one catalog may define, keyward's reserved scopes included.
///
/// Bounded so that [`ScopeSet`] stays a fixed 32 bytes per key: with a million
/// keys in a gateway snapshot, a heap-allocated set would cost an allocation
/// and a pointer chase per key.
pub const MAX_SCOPES: usize = 256;

const WORDS: usize = MAX_SCOPES / 64;

/// Dense index of a scope inside one compiled [`crate::Catalog`].
///
/// Only meaningful together with the catalog that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeId(u16);

impl ScopeId {
    /// Position of the scope in its catalog's scope list.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub(crate) fn from_index(index: usize) -> Option<Self> {
        if index < MAX_SCOPES {
            u16::try_from(index).ok().map(Self)
        } else {
            None
        }
    }
}

/// A set of scopes of one catalog, as a 256-bit bitset.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet([u64; WORDS]);

impl ScopeSet {
    /// The empty set.
    pub const EMPTY: ScopeSet = ScopeSet([0; WORDS]);

    /// Adds one scope.
    pub fn insert(&mut self, id: ScopeId) {
        let i = id.index();
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: ScopeId) -> bool {
        let i = id.index();
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Scopes in either set.
    #[must_use]
    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        let mut out = *self;
        for (o, b) in out.0.iter_mut().zip(other.0) {
            *o |= b;
        }
        out
    }

    /// Scopes of `self` that `other` lacks: what a key is missing when `self`
    /// is what a route requires and `other` what the key holds.
    #[must_use]
    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        let mut out = *self;
        for (o, b) in out.0.iter_mut().zip(other.0) {
            *o &= !b;
        }
        out
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.iter().zip(other.0).all(|(a, b)| a & !b == 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Number of scopes in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The scopes in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = ScopeId> + use<> {
        self.0.into_iter().enumerate().flat_map(|(wi, word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                ScopeId::from_index(wi * 64 + bit)
            })
        })
    }
}

impl FromIterator<ScopeId> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = ScopeId>>(iter: I) -> Self {
        let mut set = ScopeSet::EMPTY;
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(ScopeId::index))
            .finish()
    }
}

/// Lifecycle of a scope, as the catalog declares it.
///
/// Only `available` scopes can be granted; the others are listed so a console
/// and `catalog show` can tell integrators what is coming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeStatus {
    /// Grantable and enforced.
    Available,
    /// Announced for a future release.
    Planned,
    /// Being considered.
    UnderReview,
    /// Still enforced on routes, no longer grantable.
    Deprecated,
}

impl ScopeStatus {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeStatus::Available => "available",
            ScopeStatus::Planned => "planned",
            ScopeStatus::UnderReview => "under-review",
            ScopeStatus::Deprecated => "deprecated",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "available" => ScopeStatus::Available,
            "planned" => ScopeStatus::Planned,
            "under-review" => ScopeStatus::UnderReview,
            "deprecated" => ScopeStatus::Deprecated,
            _ => return None,
        })
    }
}

impl fmt::Display for ScopeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` is a well-formed scope name, `resource:action`.
///
/// Mirrors `^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$` from the contract without a
/// regex engine.
pub fn is_valid_scope_name(name: &str) -> bool {
    match name.split_once(':') {
        Some((resource, action)) => is_slug(resource) && is_slug(action),
        None => false,
    }
}

/// `^[a-z][a-z0-9-]*$`: the shape of scope halves, set ids and preset ids.
pub(crate) fn is_slug(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> ScopeId {
        ScopeId::from_index(i).unwrap()
    }

    #[test]
    fn set_operations() {
        let a: ScopeSet = [id(0), id(63), id(64), id(255)].into_iter().collect();
        let b: ScopeSet = [id(63), id(200)].into_iter().collect();
        assert_eq!(a.len(), 4);
        assert!(a.contains(id(255)) && !a.contains(id(1)));
        assert_eq!(a.union(&b).len(), 5);
        assert_eq!(
            a.difference(&b).iter().collect::<Vec<_>>(),
            [id(0), id(64), id(255)]
        );
        assert!(!b.is_subset(&a));
        assert!(a.difference(&b).is_subset(&a));
        assert!(ScopeSet::EMPTY.is_empty());
        assert!(ScopeId::from_index(256).is_none());
    }

    #[test]
    fn scope_names() {
        for ok in ["vehicles:read", "vehicle-fields:read", "a:b", "a1-:x9"] {
            assert!(is_valid_scope_name(ok), "{ok}");
        }
        for bad in [
            "",
            "vehicles",
            ":read",
            "vehicles:",
            "Vehicles:read",
            "1a:read",
            "a:b:c",
            "a b:c",
            "a:-b",
        ] {
            assert!(!is_valid_scope_name(bad), "{bad}");
        }
    }
}
