//! keyward's storage: the [`Store`] trait, written once (`keys.rs`,
//! `people.rs`) over a small dialect seam for SQLite and PostgreSQL.
//!
//! Storage has no business rules. It persists what the app layer decided,
//! atomically: a key, its grants, its change-log entry and its audit record
//! commit together or not at all. Every method is scoped by organization,
//! except the two that discover the organization from a key digest
//! ([`Store::key_by_digest`]) or feed a whole-node snapshot
//! ([`Store::changes_since`], [`Store::snapshot_keys`]). Only digests of keys are
//! stored. Audit records are linked into the hash chain here, inside the
//! appending transaction, under a lock on the chain head.

use keyward_core::KeyDigest;
use keyward_core::audit::AuditEntry;
use std::future::Future;
use thiserror::Error;

mod any;
mod keys;
mod limits;
mod people;
mod postgres;
mod rows;
mod settings;
mod sqlite;
mod usage;
mod webhooks;
pub use any::AnyStore;
pub use limits::{
    LeaseAnswer, LeaseAsk, UNASKED_DIVISOR, cidrs_text, limits_text, parse_cidrs, parse_limits,
    unasked_share,
};
pub use postgres::PgStore;
pub use settings::{ExpiringKey, KeyNotice, Settings, StoredPolicy};
pub use sqlite::SqliteStore;
pub use usage::UsageRow;
pub use webhooks::{
    Attempt, AttemptRecord, DeliveryRecord, EndpointState, LEASES_PER_ORG, PendingEvent,
    WebhookRecord, Webhooks,
};

/// What went wrong in storage. The app layer maps each variant once.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The row does not exist in this organization.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated (slug, email, digest).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value is not what keyward wrote (e.g. a digest of wrong length).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The URL names no supported backend.
    #[error(
        "unsupported database url `{0}`: expected `sqlite://PATH` or `postgres://USER@HOST/DB`"
    )]
    UnsupportedUrl(String),
    /// The database is contended beyond what a retry inside the call can
    /// resolve; the caller may retry later.
    #[error("the database is busy: {0}")]
    Busy(String),
    /// The call did not finish within the store's deadline
    /// ([`AnyStore::with_deadline`]).
    #[error("the database did not answer within {} ms", .0.as_millis())]
    Timeout(std::time::Duration),
}

impl StoreError {
    /// Whether the database is unreachable, too slow or refusing for now
    /// (a timeout, a lost or refused connection, a lock or statement
    /// timeout, a server shutting down), as opposed to a wrong request or a
    /// broken row: the caller should answer 503 and let the client retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::Busy(_) => true,
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    // query_canceled (statement_timeout), lock_not_available
                    // (lock_timeout), idle_in_transaction_session_timeout,
                    // the 57P0x shutdown family, too_many_connections,
                    // SQLite's SQLITE_BUSY (5) and SQLITE_LOCKED (6).
                    matches!(
                        c.as_ref(),
                        "57014"
                            | "55P03"
                            | "25P03"
                            | "57P01"
                            | "57P02"
                            | "57P03"
                            | "53300"
                            | "5"
                            | "6"
                            | "261"
                            | "517"
                            | "773"
                    )
                }),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Result alias for storage calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An organization.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Org {
    /// `org_…`
    pub id: String,
    /// Short name used on the command line (`--org SLUG`).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// The organization commands act in when no `--org` is given.
    pub is_default: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A key as stored: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// `key_…`
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Trimmed, 1 to 100 characters.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `live` or `test`.
    pub environment: String,
    /// Digest of the full key.
    pub digest: KeyDigest,
    /// `insp_live_AbC1`
    pub display_prefix: String,
    /// Imported from before scopes existed: full access.
    pub legacy: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Actor that created it.
    pub created_by: String,
    /// Unix milliseconds; also set by a roll's grace period.
    pub expires_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    /// The key that replaced this one in a roll.
    pub rolled_to: Option<String>,
    /// Unix milliseconds, flushed in batches.
    pub last_used_at: Option<i64>,
    /// When the key policy flagged it unused (cleared once it is used
    /// again): each flag sends one `key.unused`.
    pub flagged_unused_at: Option<i64>,
    /// When it was first reported leaked (a scan, GitHub's secret
    /// scanning): `key.leaked` was told then.
    pub leaked_at: Option<i64>,
    /// Scope names granted directly.
    pub scopes: Vec<String>,
    /// Permission set ids granted.
    pub permission_sets: Vec<String>,
    /// Named rate limits and quotas (SPEC §8).
    pub limits: Vec<keyward_core::limits::Limit>,
    /// Networks the key may be used from; empty: anywhere.
    pub allowed_cidrs: Vec<keyward_core::limits::Network>,
}

/// What a node's in-memory snapshot needs about one key: no names or
/// descriptions, and grants as one canonical text, so a million keys load in
/// pages without building a million vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotKey {
    /// `key_…`
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Digest of the full key.
    pub digest: KeyDigest,
    /// Imported legacy key (full access).
    pub legacy: bool,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    /// Unix milliseconds.
    pub last_used_at: Option<i64>,
    /// One `permission_set NAME` or `scope NAME` per line, sorted by kind then
    /// name: keys with equal grants have equal text (see [`SnapshotKey::grants`]).
    pub grants: String,
    /// The key's limits; empty for most keys.
    pub limits: Vec<keyward_core::limits::Limit>,
    /// The key's networks; empty for most keys.
    pub allowed_cidrs: Vec<keyward_core::limits::Network>,
}

impl KeyRecord {
    /// Its grants as `key_grants` rows hold them, in the order given:
    /// (`scope` | `permission_set`, name); the position is the index.
    pub(crate) fn grant_rows(&self) -> impl Iterator<Item = (&'static str, &String)> {
        self.scopes
            .iter()
            .map(|s| ("scope", s))
            .chain(self.permission_sets.iter().map(|s| ("permission_set", s)))
    }
}

impl SnapshotKey {
    /// The canonical grants text of a record (see [`SnapshotKey::grants`]).
    pub fn grants_text(r: &KeyRecord) -> String {
        let mut sets: Vec<&str> = r.permission_sets.iter().map(String::as_str).collect();
        let mut scopes: Vec<&str> = r.scopes.iter().map(String::as_str).collect();
        sets.sort_unstable();
        scopes.sort_unstable();
        let lines: Vec<String> = sets
            .iter()
            .map(|s| format!("permission_set {s}"))
            .chain(scopes.iter().map(|s| format!("scope {s}")))
            .collect();
        lines.join("\n")
    }

    /// The snapshot view of a full record.
    pub fn from_record(r: &KeyRecord) -> Self {
        SnapshotKey {
            id: r.id.clone(),
            org_id: r.org_id.clone(),
            digest: r.digest,
            legacy: r.legacy,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
            grants: SnapshotKey::grants_text(r),
            limits: r.limits.clone(),
            allowed_cidrs: r.allowed_cidrs.clone(),
        }
    }

    /// (scope names, permission set ids) of [`SnapshotKey::grants`].
    pub fn grant_names(grants: &str) -> (Vec<&str>, Vec<&str>) {
        let mut scopes = Vec::new();
        let mut sets = Vec::new();
        for line in grants.lines() {
            match line.split_once(' ') {
                Some(("scope", name)) => scopes.push(name),
                Some((_, name)) => sets.push(name),
                None => {}
            }
        }
        (scopes, sets)
    }
}

/// How to narrow [`Store::list_keys`]. All conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// `Some(true)`: only revoked keys; `Some(false)`: only unrevoked keys.
    pub revoked: Option<bool>,
    /// Only keys neither revoked nor expired at this time.
    pub active_at: Option<i64>,
    /// Only keys revoked or expired at this time.
    pub inactive_at: Option<i64>,
    /// Only keys not used since this time (never-used keys count from creation).
    pub unused_since: Option<i64>,
    /// Only legacy (or only scoped) keys.
    pub legacy: Option<bool>,
    /// Only keys granted this permission set.
    pub permission_set: Option<String>,
    /// Page after this `(created_at, id)`, newest first.
    pub before: Option<(i64, String)>,
    /// At most this many rows (`None`: all).
    pub limit: Option<u32>,
}

/// Id of the built-in group holding every scope, in every organization.
pub const ADMINISTRATORS: &str = "administrators";

/// A person who administers an organization (console, and later sessions).
/// Their access is the union of their groups' permission sets.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// `usr_…`
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Sign-in name, unique in the organization (lowercased).
    pub email: String,
    /// Display name.
    pub name: String,
    /// argon2id PHC string; `None` until a password is set.
    pub password_hash: Option<String>,
    /// Set for one-time passwords: the next sign-in must choose a new one.
    pub must_change_password: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Set when the user may no longer sign in.
    pub disabled_at: Option<i64>,
    /// Ids of the groups the user belongs to, sorted.
    pub groups: Vec<String>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("email", &self.email)
            .field("groups", &self.groups)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// A console session. The cookie holds a random token; only its SHA-256 is
/// stored, like a key's, so a copy of the database signs nobody in.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the cookie's token.
    pub token_hash: [u8; 32],
    /// Organization of the user.
    pub org_id: String,
    /// Who is signed in.
    pub user_id: String,
    /// Token every state-changing form of this session must carry.
    pub csrf: String,
    /// Sign-in time (unix ms): bounds the session's whole life.
    pub created_at: i64,
    /// Last request (unix ms): bounds its idle time.
    pub last_seen_at: i64,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("org_id", &self.org_id)
            .field("user_id", &self.user_id)
            .field("created_at", &self.created_at)
            .field("last_seen_at", &self.last_seen_at)
            .finish_non_exhaustive()
    }
}

/// How to narrow [`Store::query_audit`]. All conditions must hold; newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records about this key.
    pub key_id: Option<String>,
    /// Only records by this actor (`key:…`, `user:…`, `cli:…`).
    pub actor: Option<String>,
    /// Only this action (`key.created`, `request`, …).
    pub action: Option<String>,
    /// Only this HTTP status.
    pub status: Option<u16>,
    /// Only records at or after this time (unix ms).
    pub since: Option<i64>,
    /// Only records before this time (unix ms).
    pub until: Option<i64>,
    /// Page: only records with a smaller sequence number.
    pub before_seq: Option<i64>,
    /// At most this many records.
    pub limit: u32,
}

/// One committed audit record, as stored, with its chain links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// The record's content.
    pub entry: AuditEntry,
    /// Hash of the previous record (zeros for the first).
    pub prev_hash: [u8; 32],
    /// This record's hash.
    pub hash: [u8; 32],
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Change {
    /// Strictly increasing, in commit order.
    pub version: i64,
    /// Organization of the change.
    pub org_id: String,
    /// Key concerned, if any.
    pub key_id: Option<String>,
    /// `key.created`, `key.revoked`, `key.rolled`, …
    pub kind: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// Result of a revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now,
    /// Was already revoked at this time; nothing changed, nothing audited.
    Already(i64),
}

/// Persistence for keyward. Implementations must make each method atomic.
///
/// Methods return `impl Future + Send` so callers can spawn them.
pub trait Store: Directory + Settings + Webhooks {
    /// Applies pending migrations.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;

    /// Creates `org` and its first user `owner` (audited: `audits` are
    /// written in order), unless a default organization already exists and
    /// `org.is_default`; returns the existing default organization then, and
    /// writes nothing.
    fn create_org(
        &self,
        org: &Org,
        owner: Option<&UserRecord>,
        audits: &[AuditEntry],
    ) -> impl Future<Output = Result<Org>> + Send;
    /// The default organization, if created.
    fn default_org(&self) -> impl Future<Output = Result<Option<Org>>> + Send;
    /// An organization by slug.
    fn org_by_slug(&self, slug: &str) -> impl Future<Output = Result<Option<Org>>> + Send;
    /// All organizations, oldest first.
    fn list_orgs(&self) -> impl Future<Output = Result<Vec<Org>>> + Send;

    /// Inserts keys with their grants, change-log entries and audit records
    /// in one transaction. A key whose digest already exists is skipped when
    /// `skip_existing`, otherwise the whole call fails with `Conflict`.
    /// Returns, per key, whether it was inserted. Audit entry `i` belongs to
    /// key `i` and is written only if that key was.
    fn insert_keys(
        &self,
        org_id: &str,
        keys: &[KeyRecord],
        audits: &[AuditEntry],
        skip_existing: bool,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// Revokes a key (audited, logged as a change).
    fn revoke_key(
        &self,
        org_id: &str,
        key_id: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<Revoked>> + Send;
    /// Inserts `new_key`, sets the old key's `expires_at` and `rolled_to`, in
    /// one transaction (audited, logged as changes).
    fn roll_key(
        &self,
        org_id: &str,
        old_id: &str,
        old_expires_at: i64,
        new_key: &KeyRecord,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<()>> + Send;
    /// One key of the organization.
    fn get_key(
        &self,
        org_id: &str,
        key_id: &str,
    ) -> impl Future<Output = Result<Option<KeyRecord>>> + Send;
    /// Keys of the organization, newest first.
    fn list_keys(
        &self,
        org_id: &str,
        filter: &KeyFilter,
    ) -> impl Future<Output = Result<Vec<KeyRecord>>> + Send;
    /// The key with this digest, in any organization: how a request's key
    /// finds its organization.
    fn key_by_digest(
        &self,
        digest: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>>> + Send;
    /// Number of keys of every organization: lets a node size its snapshot
    /// once instead of growing it through twenty resizes.
    fn count_keys(&self) -> impl Future<Output = Result<u64>> + Send;
    /// Up to `limit` keys of every organization with `id > after`, in id
    /// order: a node loads its in-memory snapshot page by page.
    fn snapshot_keys(
        &self,
        after: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SnapshotKey>>> + Send;
    /// Records last use times (batched; later times win).
    fn touch_keys(&self, uses: &[(String, i64)]) -> impl Future<Output = Result<()>> + Send;

    /// Appends audit records (one transaction) and returns their sequence numbers.
    fn append_audit(&self, entries: &[AuditEntry])
    -> impl Future<Output = Result<Vec<i64>>> + Send;
    /// Up to `limit` records with `seq > after`, in chain order, for verification.
    fn audit_chain(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditRecord>>> + Send;
    /// The chain head: sequence number and hash of the last record appended
    /// (`(0, GENESIS)` when empty). Lets verification detect a cut-off tail.
    fn audit_head(&self) -> impl Future<Output = Result<(i64, [u8; 32])>> + Send;
    /// Records of one organization concerning one key, newest first: its
    /// own trail (created, rolled, revoked, refused), not its gateway
    /// requests (`gateway.request`, which `query_audit` finds).
    fn audit_for_key(
        &self,
        org_id: &str,
        key_id: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditRecord>>> + Send;

    /// A wake-up for when the change log grows, where the backend has one
    /// (PostgreSQL LISTEN/NOTIFY); `None` otherwise. Only an accelerator:
    /// callers keep polling [`Store::changes_since`].
    fn change_notifier(&self) -> impl Future<Output = Result<Option<ChangeNotifier>>> + Send;

    /// Up to `limit` change-log entries after `version`, oldest first, and
    /// the current version (read first, so every entry returned is at or
    /// below it). A node replays a long backlog page by page.
    fn changes_since(
        &self,
        version: i64,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<Change>, i64)>> + Send;

    /// The keys with these ids, in any organization, in one query: how a
    /// page of the change log is applied in bulk. Ids of keys that no longer
    /// exist are simply absent.
    fn snapshot_keys_by_id(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<SnapshotKey>>> + Send;

    /// Says `node` shares limits and is present until `now + alive_ms`;
    /// returns how many nodes are present at `now`, itself included.
    fn limit_heartbeat(
        &self,
        node: &str,
        now: i64,
        alive_ms: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Applies `asks` (one per key, limit and window) by the rule of
    /// [`LeaseAsk`]'s module, each row atomically, with `nodes` present as
    /// the asking node counts them; answers in ask order.
    fn claim_leases(
        &self,
        nodes: u64,
        asks: &[LeaseAsk],
    ) -> impl Future<Output = Result<Vec<LeaseAnswer>>> + Send;
    /// `node` stops sharing limits (a clean shutdown, after handing its
    /// leases back with `leaving` asks): it is no longer counted present.
    fn limit_leave(&self, node: &str) -> impl Future<Output = Result<()>> + Send;
    /// Forgets lease rows of windows that ended before `before`, and nodes
    /// absent since then.
    fn forget_leases(&self, before: i64) -> impl Future<Output = Result<()>> + Send;

    /// Adds a node's counts (one row per key, hour, method, route and
    /// outcome) to what every node flushed before.
    fn add_usage(&self, rows: &[UsageRow]) -> impl Future<Output = Result<()>> + Send;
    /// One key's rows with `since <= hour < until`, oldest first.
    fn key_usage(
        &self,
        key_id: &str,
        since: i64,
        until: i64,
    ) -> impl Future<Output = Result<Vec<UsageRow>>> + Send;
    /// Forgets rows of hours before `before` (the retention).
    fn prune_usage(&self, before: i64) -> impl Future<Output = Result<u64>> + Send;
}

/// The people side of storage: users, group memberships, console sessions,
/// sign-in attempts, form nonces and audit queries. Split from [`Store`] so
/// both backends implement it from one source (the `people_impl!` macro in
/// `people.rs`, expanded by `keys_impl!`); every [`Store`] is one. Implementations must make each
/// method atomic.
pub trait Directory: Send + Sync + 'static {
    /// Creates a user with its memberships (audited), in one transaction.
    /// `Conflict` when the email is taken in the organization.
    fn create_user(
        &self,
        user: &UserRecord,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<()>> + Send;
    /// One user of the organization, with groups.
    fn get_user(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<UserRecord>>> + Send;
    /// A user by sign-in name.
    fn user_by_email(
        &self,
        org_id: &str,
        email: &str,
    ) -> impl Future<Output = Result<Option<UserRecord>>> + Send;
    /// Users of the organization (only members of `group_id` when given),
    /// by email.
    fn list_users(
        &self,
        org_id: &str,
        group_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<UserRecord>>> + Send;
    /// Adds (`member`) or removes a membership. Returns whether anything
    /// changed; the audit record is written only then. `NotFound` when the
    /// user is not in the organization.
    fn set_membership(
        &self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        member: bool,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Replaces a user's password hash and ends their sessions, except
    /// `keep_session` (the one changing its own password). `NotFound` for an
    /// unknown user.
    fn set_password(
        &self,
        org_id: &str,
        user_id: &str,
        password_hash: &str,
        must_change: bool,
        audit: Option<&AuditEntry>,
        keep_session: Option<&[u8; 32]>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Stores a new session (and its `console.signed_in` record), dropping
    /// sessions idle since before `idle_cutoff` and form nonces issued
    /// before `nonce_cutoff`.
    fn create_session(
        &self,
        session: &SessionRecord,
        idle_cutoff: i64,
        nonce_cutoff: i64,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The session whose token hashes to `token_hash`.
    fn session(
        &self,
        token_hash: &[u8; 32],
    ) -> impl Future<Output = Result<Option<SessionRecord>>> + Send;
    /// Records activity on a session.
    fn touch_session(
        &self,
        token_hash: &[u8; 32],
        at: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Ends a session; `audit` is written only if it existed.
    fn end_session(
        &self,
        token_hash: &[u8; 32],
        audit: Option<&AuditEntry>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Records sign-in attempt `attempt` (a unique id) as failed until
    /// proven otherwise, and returns the failures recorded since `since`
    /// before it: (for this email in this organization, from this client
    /// address in any). Attempts are serialised, so parallel guesses cannot
    /// all see a count under the limit; older failures are pruned.
    fn begin_sign_in(
        &self,
        attempt: &str,
        org_id: &str,
        email: &str,
        client: &str,
        at: i64,
        since: i64,
    ) -> impl Future<Output = Result<(u32, u32)>> + Send;
    /// Withdraws an attempt `begin_sign_in` recorded (it succeeded, or was
    /// refused before any password was checked).
    fn clear_sign_in_attempt(&self, attempt: &str) -> impl Future<Output = Result<()>> + Send;
    /// Issues a one-use form nonce bound to a session.
    fn create_nonce(
        &self,
        nonce: &str,
        token_hash: &[u8; 32],
        at: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Uses a nonce: `true` the first time, for its own session only.
    fn use_nonce(
        &self,
        nonce: &str,
        token_hash: &[u8; 32],
        at: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Audit records of one organization matching `query`, newest first.
    fn query_audit(
        &self,
        org_id: &str,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>>> + Send;
}

/// Wakes a node when another one (or the CLI) committed a change.
///
/// A notification can be missed (a dropped connection, a node starting), so
/// it only tells the caller to read the change log now instead of at its next
/// poll; it carries nothing the change log does not.
pub struct ChangeNotifier(sqlx::postgres::PgListener);

impl ChangeNotifier {
    /// The channel writers notify on commit.
    pub const CHANNEL: &'static str = "keyward_changes";

    /// Waits until the change log should be read: a change was committed, or
    /// the connection was lost and re-established (notifications sent in
    /// between are gone, so catch up).
    ///
    /// # Errors
    /// The listening connection failed and could not be re-established.
    pub async fn wait(&mut self) -> Result<()> {
        self.0.try_recv().await?;
        // Whatever else already arrived is covered by the same read of the
        // log: one sync for a burst, not one per notification.
        while self.0.next_buffered().is_some() {}
        Ok(())
    }
}

/// Opens the store a URL names: `sqlite://PATH` (the file is created if
/// missing) or `postgres://…` / `postgresql://…`.
///
/// # Errors
/// [`StoreError::UnsupportedUrl`] or a connection error.
pub async fn open(url: &str) -> Result<AnyStore> {
    open_as(url, "keyward").await
}

/// [`open`], naming this process to the database (PostgreSQL's
/// `application_name`, shown in `pg_stat_activity`), so an operator can
/// tell which node holds a lock or a connection.
///
/// # Errors
/// [`StoreError::UnsupportedUrl`] or a connection error.
pub async fn open_as(url: &str, name: &str) -> Result<AnyStore> {
    if url.starts_with("sqlite:") {
        Ok(AnyStore::sqlite(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(AnyStore::postgres(PgStore::connect_as(url, name).await?))
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// A URL with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact_url("sqlite://k.db"), "sqlite://k.db");
    }
}
