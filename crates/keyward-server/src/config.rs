//! How a server runs: its configuration and the fixed limits every module
//! reads.

use http::Uri;
use std::time::Duration;

/// How `keyward serve` runs. Defaults are what a first start needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where allowed gateway requests go (`http://host:port`); `None` answers
    /// 502 `UPSTREAM_NOT_CONFIGURED` where a request would be forwarded.
    pub upstream: Option<Uri>,
    /// Largest request body forwarded (413 beyond).
    pub max_body_bytes: u64,
    /// Largest total size of request headers (431 beyond).
    pub max_header_bytes: usize,
    /// Time allowed to connect to the upstream (502 beyond).
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response head (504 beyond).
    pub upstream_timeout: Duration,
    /// How often the snapshot reads the change log.
    pub sync_interval: Duration,
    /// How often last-use times are written.
    pub flush_interval: Duration,
    /// Oldest snapshot a node still decides with; older, it answers 503.
    pub max_staleness: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Forward request headers whose names hold `_` (dropped by default, as
    /// nginx does: CGI and WSGI back ends fold `_` into `-`, so such a name
    /// can shadow a header the upstream trusts). Folded spellings of the
    /// headers keyward sets are dropped either way.
    pub allow_underscore_headers: bool,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`):
    /// when the TCP peer is one, the client is the right-most address of
    /// `X-Forwarded-For` that is not one ([`crate::web::Client::behind`]).
    pub trusted_proxies: Vec<keyward_core::limits::Network>,
    /// How often a node sharing limits with others (on PostgreSQL)
    /// exchanges its leases through the database (docs/design.md, "Limits
    /// across nodes"): the shorter, the closer to the limit short windows
    /// are filled when the load is uneven.
    pub limit_exchange_interval: Duration,
    /// How long each key's usage counts are kept (`--usage-retention`).
    pub usage_retention: Duration,
    /// How often the node holding the policy duty applies every
    /// organization's key policy (`--policy-interval`, SPEC §10: a minute).
    pub policy_interval: Duration,
    /// Longest one webhook attempt may take, connection and answer
    /// included (`--webhook-timeout`); past it the attempt failed.
    pub webhook_timeout: Duration,
    /// Deliver to loopback and private addresses too
    /// (`--allow-private-webhooks`): for tests and private networks only,
    /// since a webhook URL is otherwise a way into them.
    pub allow_private_webhooks: bool,
    /// GitHub's published secret scanning keys (`--github-scanning-keys`):
    /// the JSON document of `https://api.github.com/meta/public_keys/secret_scanning`,
    /// read again when it changes. Without it `POST
    /// /v1/secret-scanning/github` refuses every report (401).
    pub github_scanning_keys: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: None,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            sync_interval: Duration::from_millis(250),
            flush_interval: Duration::from_secs(2),
            max_staleness: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            allow_underscore_headers: false,
            trusted_proxies: Vec::new(),
            limit_exchange_interval: Duration::from_millis(100),
            usage_retention: Duration::from_secs(90 * 86_400),
            policy_interval: Duration::from_secs(60),
            webhook_timeout: Duration::from_secs(10),
            allow_private_webhooks: false,
            github_scanning_keys: None,
        }
    }
}

/// How long one call to the database may take on a server before the
/// request waiting for it is answered 503: a node whose database stalls
/// answers on time instead of holding its clients (docs/design.md,
/// "Failure isolation").
pub const STORE_DEADLINE: Duration = Duration::from_secs(3);

/// Longest request target (path and query) keyward reads; 414 beyond.
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;
