//! The command line, as SPEC §7 names it.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Scoped API keys for SaaS platforms.
// Deliberately not `Debug`: it holds the database URL, which may carry a
// password. (A plain comment: doc comments become `--help` text.)
#[derive(Parser)]
#[command(name = "keyward", version, about, propagate_version = true)]
pub struct Cli {
    /// Database URL: `sqlite://PATH` (created if missing) or
    /// `postgres://USER@HOST/DB`.
    #[arg(
        long,
        global = true,
        env = "KEYWARD_DATABASE_URL",
        default_value = "sqlite://keyward.db",
        hide_env_values = true
    )]
    pub database: String,

    /// Catalog file; the built-in fleet catalog when not given.
    #[arg(long, global = true, env = "KEYWARD_CATALOG")]
    pub catalog: Option<PathBuf>,

    /// Organization to act in (its slug); the default organization otherwise.
    #[arg(long, global = true, env = "KEYWARD_ORG")]
    pub org: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway and verify service (SPEC §3, §6).
    Serve(ServeArgs),
    /// Validate or show the catalog.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Create, list, inspect, roll and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Explain what the gateway decides for a request.
    Explain(ExplainArgs),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Manage organizations.
    #[command(subcommand)]
    Orgs(OrgsCmd),
    /// Manage the people who administer an organization, and their groups.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Show or change the organization's key policy (SPEC §10).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Send the organization's events to HTTP endpoints (SPEC §10).
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// Find leaked keys in files (SPEC §11): every key of the catalog's
    /// format with a valid checksum, its file and line, and whether it is
    /// live. Exit 1 when a live key was found.
    Scan(ScanArgs),
    /// Apply database migrations and create the default organization.
    Migrate,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The API keyward protects (`http://host:port`). Without it, allowed
    /// gateway requests get 502 `UPSTREAM_NOT_CONFIGURED`.
    #[arg(long, env = "KEYWARD_UPSTREAM")]
    pub upstream: Option<String>,
    /// Largest request body forwarded, in bytes (413 beyond).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// Largest total size of request headers, in bytes (431 beyond).
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Time allowed to connect to the upstream (502 beyond).
    #[arg(long, default_value = "5s")]
    pub connect_timeout: String,
    /// Time allowed for the upstream's response head (504 beyond).
    #[arg(long, default_value = "30s")]
    pub upstream_timeout: String,
    /// How often the key snapshot reads the database's change log.
    #[arg(long, default_value = "250ms")]
    pub sync_interval: String,
    /// How often last-use times are written.
    #[arg(long, default_value = "2s")]
    pub flush_interval: String,
    /// Oldest snapshot this node decides with; older, it answers 503.
    #[arg(long, default_value = "30s")]
    pub max_staleness: String,
    /// How long shutdown waits for in-flight requests.
    #[arg(long, default_value = "30s")]
    pub drain_timeout: String,
    /// Forward request headers whose names contain `_`. By default they are
    /// dropped (as nginx does): CGI and WSGI back ends read `_` as `-`, so
    /// `X_Keyward_Scopes` could pose as a header keyward sets. Spellings of
    /// keyward's own headers are dropped either way.
    #[arg(long)]
    pub allow_underscore_headers: bool,
    /// A proxy in front of keyward whose `X-Forwarded-For` is believed
    /// (repeatable; a CIDR or one address). Without one, the client is the
    /// TCP peer and `X-Forwarded-For` is ignored.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<String>,
    /// With several nodes on PostgreSQL: how often this node exchanges its
    /// share of each key's limits with the others through the database.
    #[arg(long, default_value = "100ms")]
    pub limit_exchange_interval: String,
    /// How long each key's usage counts are kept.
    #[arg(long, default_value = "90d")]
    pub usage_retention: String,
    /// How often the key policy is applied (by one node at a time).
    #[arg(long, default_value = "1m")]
    pub policy_interval: String,
    /// Longest one webhook attempt may take, connecting included; past it
    /// the attempt failed and is retried with back-off.
    #[arg(long, default_value = "10s")]
    pub webhook_timeout: String,
    /// Deliver webhooks to loopback and private addresses too (tests,
    /// private networks): otherwise a webhook URL is a way into them.
    #[arg(long)]
    pub allow_private_webhooks: bool,
    /// GitHub's secret scanning public keys: the JSON document of
    /// https://api.github.com/meta/public_keys/secret_scanning, saved to a
    /// file (read again when it changes). Enables `POST
    /// /v1/secret-scanning/github`, GitHub's partner endpoint.
    #[arg(long, value_name = "FILE")]
    pub github_scanning_keys: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Validate a catalog file: prints every error with its location.
    Check {
        /// The catalog to check.
        file: PathBuf,
    },
    /// Show the catalog in force: scopes, permission sets, presets, routes.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key. The full key is printed once and never again.
    Create(CreateArgs),
    /// List keys, newest first.
    List(ListArgs),
    /// Show one key: grants, effective scopes, status, recent audit trail.
    Show {
        /// Key id (`key_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once.
    Revoke {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a key with a new one holding the same grants, or narrower
    /// ones (`--scope`, `--permission-set`).
    Roll {
        /// Key id.
        id: String,
        /// How long the old key keeps working, e.g. `24h`, `0s`.
        #[arg(long, default_value = "24h")]
        grace: String,
        /// A narrowing roll: the new key holds this scope (repeatable)
        /// instead of the old key's grants; never more than the old key.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A narrowing roll: the new key holds this permission set
        /// (repeatable).
        #[arg(long = "permission-set")]
        permission_sets: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What a key did: requests by day (or hour) and by route.
    Usage {
        /// Key id.
        id: String,
        /// Start: a duration back from now (`30d`) or an RFC 3339 time.
        #[arg(long, default_value = "30d")]
        since: String,
        /// `day` or `hour`.
        #[arg(long, default_value = "day")]
        granularity: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The smallest grants that still allow what a key was allowed to do.
    Suggest {
        /// Key id.
        id: String,
        /// How far back to look.
        #[arg(long, default_value = "30d")]
        window: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import keys issued before scopes existed (full access, marked legacy).
    ImportLegacy {
        /// One key per line, optionally followed by a name.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// What the key is for, e.g. "Production Server".
    #[arg(long)]
    pub name: String,
    /// A scope to grant (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// A permission set to grant (repeatable).
    #[arg(long = "permission-set", value_name = "SET")]
    pub permission_sets: Vec<String>,
    /// A preset to grant (repeatable).
    #[arg(long = "preset", value_name = "PRESET")]
    pub presets: Vec<String>,
    /// Expire the key after this long, e.g. `90d`.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
    /// Confirm that more than 10 write-capable permission sets are intended.
    #[arg(long)]
    pub acknowledge_broad_access: bool,
    /// A named rate limit or quota, `NAME=REQUESTS/PER` such as
    /// `burst=100/1m` or `monthly=100000/30d` (repeatable, at most 10).
    #[arg(long = "limit", value_name = "NAME=REQUESTS/PER")]
    pub limits: Vec<String>,
    /// A network the key may be used from, `203.0.113.0/24`,
    /// `2001:db8::/32` or one address (repeatable; none: anywhere).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<String>,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// `live` or `test`.
    #[arg(long, default_value = "live")]
    pub environment: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys not used for this long, e.g. `90d`.
    #[arg(long, value_name = "DURATION")]
    pub unused_for: Option<String>,
    /// Only keys with this status: active, revoked or expired.
    #[arg(long)]
    pub status: Option<String>,
    /// Only legacy keys.
    #[arg(long)]
    pub legacy: bool,
    /// Only keys holding this permission set.
    #[arg(long, value_name = "SET")]
    pub permission_set: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("subject").required(true).args(["key_id", "scopes"]))]
pub struct ExplainArgs {
    /// Explain for this stored key.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Explain for a key holding these scopes or permission sets (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path, with or without the gateway prefix.
    pub path: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Recompute the hash chain and report the first broken record.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgsCmd {
    /// Create an organization; its slug derives from the name.
    Create {
        /// Display name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List organizations.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a user; prints a one-time password, shown once.
    Create {
        /// Sign-in name, e.g. an email address.
        #[arg(long)]
        email: String,
        /// Display name (the email when not given).
        #[arg(long, default_value = "")]
        name: String,
        /// A group to join (repeatable): a permission set id, or `administrators`.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List users, by email.
    List {
        /// Only members of this group.
        #[arg(long)]
        group: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a user to a group.
    AddToGroup {
        /// User id (`usr_…`) or email.
        user: String,
        /// Group id.
        group: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user from a group.
    RemoveFromGroup {
        /// User id (`usr_…`) or email.
        user: String,
        /// Group id.
        group: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a user's password with a one-time password, shown once.
    ResetPassword {
        /// User id (`usr_…`) or email.
        user: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Show the policy in force.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the policy now: list keys unused for `flag_unused_after`,
    /// revoke those unused for `revoke_unused_after` (actor `policy`).
    Run {
        /// Change nothing; print what would be done.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the fields given (`none` clears one); the others stay.
    Set {
        /// Longest key lifetime, e.g. `365d` (1h to 3650d), or `none`.
        #[arg(long, value_name = "DURATION")]
        max_key_lifetime: Option<String>,
        /// Flag keys unused this long, e.g. `90d`, or `none`.
        #[arg(long, value_name = "DURATION")]
        flag_unused_after: Option<String>,
        /// Revoke keys unused this long (longer than the flag), or `none`.
        #[arg(long, value_name = "DURATION")]
        revoke_unused_after: Option<String>,
        /// When to warn before expiry (repeatable, e.g. `14d` and `1d`);
        /// `none` clears the list.
        #[arg(long = "expiry-warning", value_name = "DURATION")]
        expiry_warning: Vec<String>,
        /// What a leaked-key report does: `revoke` or `flag`.
        #[arg(long, value_name = "ACTION")]
        on_leak: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// Add an endpoint; prints its signing secret, shown only this once.
    Create {
        /// Where events are POSTed (`https://…`).
        url: String,
        /// An event to send (repeatable or comma-separated): key.created,
        /// key.rolled, key.revoked, key.expiring, key.expired, key.unused,
        /// key.leaked, catalog.published, catalog.scope_available.
        #[arg(
            long = "event",
            value_name = "EVENT",
            value_delimiter = ',',
            required = true
        )]
        events: Vec<String>,
        /// A note for people.
        #[arg(long, default_value = "")]
        description: String,
        /// Accept a loopback or private address (the servers must run with
        /// --allow-private-webhooks to deliver there).
        #[arg(long)]
        allow_private: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The organization's endpoints and their state.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an endpoint with its undelivered events and history.
    Delete {
        /// Webhook id (`wh_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// An endpoint's events, newest first, with every attempt.
    Deliveries {
        /// Webhook id (`wh_…`).
        id: String,
        /// How many events (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only events before this one (`next_before` of a page).
        #[arg(long)]
        before: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files and directories to scan (directories are walked, `.git`
    /// skipped, symbolic links not followed); `-` reads standard input
    /// (`git log -p | keyward scan -`).
    #[arg(default_value = ".")]
    pub paths: Vec<String>,
    /// Revoke the live keys found (audited with reason `leaked`; sends
    /// `key.leaked`).
    #[arg(long)]
    pub revoke: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
