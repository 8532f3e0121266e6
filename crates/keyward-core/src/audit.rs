//! Audit chain links.
//!
//! Each audit record stores `hash = SHA-256(domain ‖ prev_hash ‖ seq ‖ fields)`
//! with every field length-prefixed, so no two different records encode the
//! same bytes. Changing, removing or reordering a record breaks every later
//! link, which `keyward audit verify` detects. Storage computes the link
//! inside the transaction that appends, under a lock on the chain head.

use sha2::{Digest, Sha256};

/// Who an audit record says acted, spelled in one place: `key:<id>`,
/// `user:<id>`, `cli:<os user>`, `node:<id>` or `anonymous`.
pub mod actor {
    /// Nobody authenticated.
    pub const ANONYMOUS: &str = "anonymous";

    /// The organization's key policy, applied by a server or `keyward
    /// policy run` (SPEC §10).
    pub const POLICY: &str = "policy";

    /// A report from GitHub secret scanning, believed by its signature
    /// (SPEC §11).
    pub const GITHUB_SECRET_SCANNING: &str = "github-secret-scanning";

    /// A request authenticated by the key with this id.
    pub fn key(key_id: &str) -> String {
        ["key:", key_id].concat()
    }

    /// A console or API user.
    pub fn user(user_id: &str) -> String {
        ["user:", user_id].concat()
    }

    /// The local operator running the CLI as this OS user.
    pub fn cli(os_user: &str) -> String {
        ["cli:", os_user].concat()
    }

    /// A server node itself (records about its own state).
    pub fn node(node_id: &str) -> String {
        ["node:", node_id].concat()
    }
}

/// The `prev_hash` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit record's content, before it is linked into the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The organization the action happened in.
    pub org_id: String,
    /// Who acted: `key:<id>`, `user:<id>` or `cli:<os user>`. Never a secret.
    pub actor: String,
    /// What happened, e.g. `key.created`, `gateway.request`.
    pub action: String,
    /// The key acted upon or used, if any.
    pub key_id: Option<String>,
    /// HTTP method, for requests.
    pub method: Option<String>,
    /// Request path, for requests.
    pub path: Option<String>,
    /// Response status, for requests and refused actions.
    pub status: Option<u16>,
    /// Scopes the request or action required (missing ones for a 403).
    pub required: Vec<String>,
    /// Client address.
    pub client: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Extra facts as compact JSON text (`{}` when none).
    pub details: String,
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn put_opt(h: &mut Sha256, v: Option<&str>) {
    match v {
        Some(s) => {
            h.update([1]);
            put(h, s.as_bytes());
        }
        None => h.update([0]),
    }
}

/// The hash of record `seq` following a record whose hash is `prev`.
pub fn chain_link(prev: &[u8; 32], seq: i64, e: &AuditEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keyward-audit-v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.at_ms.to_be_bytes());
    put(&mut h, e.org_id.as_bytes());
    put(&mut h, e.actor.as_bytes());
    put(&mut h, e.action.as_bytes());
    put_opt(&mut h, e.key_id.as_deref());
    put_opt(&mut h, e.method.as_deref());
    put_opt(&mut h, e.path.as_deref());
    match e.status {
        Some(s) => h.update([1, (s >> 8) as u8, (s & 0xff) as u8]),
        None => h.update([0]),
    }
    h.update((e.required.len() as u64).to_be_bytes());
    for r in &e.required {
        put(&mut h, r.as_bytes());
    }
    put_opt(&mut h, e.client.as_deref());
    put_opt(&mut h, e.request_id.as_deref());
    put(&mut h, e.details.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_link() {
        let base = AuditEntry {
            at_ms: 1,
            org_id: "org".into(),
            actor: "cli:root".into(),
            action: "key.created".into(),
            key_id: Some("key_1".into()),
            method: Some("POST".into()),
            path: Some("/x".into()),
            status: Some(201),
            required: vec!["a:b".into()],
            client: Some("127.0.0.1".into()),
            request_id: Some("r1".into()),
            details: "{}".into(),
        };
        let h = chain_link(&GENESIS, 1, &base);
        let variants: Vec<AuditEntry> = vec![
            AuditEntry {
                at_ms: 2,
                ..base.clone()
            },
            AuditEntry {
                org_id: "org2".into(),
                ..base.clone()
            },
            AuditEntry {
                actor: "cli:x".into(),
                ..base.clone()
            },
            AuditEntry {
                action: "key.revoked".into(),
                ..base.clone()
            },
            AuditEntry {
                key_id: None,
                ..base.clone()
            },
            AuditEntry {
                method: Some("GET".into()),
                ..base.clone()
            },
            AuditEntry {
                path: Some("/y".into()),
                ..base.clone()
            },
            AuditEntry {
                status: Some(403),
                ..base.clone()
            },
            AuditEntry {
                required: vec![],
                ..base.clone()
            },
            AuditEntry {
                required: vec!["a:".into(), "b".into()],
                ..base.clone()
            },
            AuditEntry {
                client: None,
                ..base.clone()
            },
            AuditEntry {
                request_id: Some("r2".into()),
                ..base.clone()
            },
            AuditEntry {
                details: "{\"a\":1}".into(),
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(chain_link(&GENESIS, 1, v), h, "{v:?}");
        }
        assert_ne!(chain_link(&GENESIS, 2, &base), h);
        assert_ne!(chain_link(&h, 1, &base), h);
        assert_eq!(chain_link(&GENESIS, 1, &base.clone()), h);
    }
}
