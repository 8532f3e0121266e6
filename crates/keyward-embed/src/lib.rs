//! keyward inside a Rust service (SPEC §12): check keys in-process, with no
//! network hop, against the same database a keyward deployment uses.
//!
//! [`Verifier::open`] starts a keyward node without a listener: it loads
//! the key snapshot and keeps it in sync with the database's change log
//! exactly as `keyward serve` does (it is the server's own code, started
//! through [`keyward_server::Server::embed`]), so a key revoked with the CLI,
//! the console or another node is refused here within the sync interval.
//! [`Verifier::layer`] is a tower layer deciding every request of the
//! service it wraps as the gateway would: the same refusals (status and
//! JSON document), limits, and audit records (through the same group
//! commit); an allowed request reaches the service with a [`Caller`] in its
//! extensions. [`Verifier::check`] answers one question directly.
//!
//! ```no_run
//! # async fn run() -> Result<(), keyward_embed::Error> {
//! let verifier = keyward_embed::Verifier::open(
//!     "postgres://keyward@db/keyward",
//!     keyward_embed::Options::default(),
//! )
//! .await?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/api/third-party/v1/vehicles", axum::routing::get(|| async { "[]" }))
//!     .layer(verifier.layer());
//! # let _ = app; Ok(()) }
//! ```
//!
//! The database must have been set up by `keyward migrate`; the catalog
//! and `KEYWARD_DIGEST_SECRET` must be the deployment's. What an embedded
//! node leaves to the `keyward serve` nodes: the key policy's duty and
//! webhook deliveries.

use keyward_app::App;
use keyward_app::env::{OsRng, SystemClock};
use keyward_core::Catalog;
use std::sync::Arc;

pub use keyward_core::Decision;
pub use keyward_server::ApiError;
pub use keyward_server::embedded::{Caller, Keyward, KeywardLayer};

/// How to open a [`Verifier`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The deployment's catalog; `None`: the built-in fleet catalog, as
    /// `keyward` without `--catalog`.
    pub catalog: Option<Arc<Catalog>>,
    /// How the node runs (sync interval, staleness, limits exchange, …);
    /// the defaults are `keyward serve`'s.
    pub config: keyward_server::Config,
}

/// Why a verifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error("cannot open database `{url}`: {source}")]
    Database {
        /// The URL, its password redacted.
        url: String,
        /// Why.
        source: keyward_store::StoreError,
    },
    /// The catalog, the configuration or the database's state (not
    /// migrated, unreachable) stopped the start.
    #[error(transparent)]
    Start(#[from] keyward_server::ServerError),
    /// No randomness for the node's id.
    #[error(transparent)]
    Random(#[from] keyward_app::env::RngError),
}

/// An embedded keyward node: a snapshot of the keys kept in sync, and what
/// checks requests against it.
pub struct Verifier {
    node: keyward_server::embedded::Embedded,
}

impl Verifier {
    /// Opens the database, loads every key and starts keeping them in sync.
    ///
    /// # Errors
    /// [`Error`], naming what stopped the start.
    pub async fn open(database_url: &str, options: Options) -> Result<Self, Error> {
        let node = keyward_app::env::node_id(&OsRng)?;
        let store = keyward_store::open_as(database_url, &format!("keyward embed {node}"))
            .await
            .map_err(|source| Error::Database {
                url: keyward_store::redact_url(database_url),
                source,
            })?
            .with_deadline(keyward_server::STORE_DEADLINE);
        let catalog = match options.catalog {
            Some(c) => c,
            None => Arc::new(Catalog::fleet().map_err(|e| {
                keyward_server::ServerError::Config(format!("the built-in catalog: {e}"))
            })?),
        };
        let app = App::new(
            store,
            catalog,
            keyward_app::env::digester_from_env(),
            Arc::new(SystemClock),
            Arc::new(OsRng),
        );
        let server = keyward_server::Server::start(app, options.config, node, &mut |_| {}).await?;
        Ok(Verifier {
            node: server.embed(),
        })
    }

    /// The tower layer that decides every request of the service it wraps.
    pub fn layer(&self) -> KeywardLayer {
        self.node.layer()
    }

    /// The decision for `key` on `method path` (with or without the
    /// catalog's gateway prefix), as `/v1/verify` decides it; nothing is
    /// counted or audited.
    ///
    /// # Errors
    /// 400 for a method or path keyward does not decide on; 503 when an
    /// unknown key needs the database and it is out of reach.
    pub async fn check(&self, key: &str, method: &str, path: &str) -> Result<Decision, ApiError> {
        self.node.check(key, method, path).await
    }

    /// Stops keeping the snapshot in sync and writes what is pending (last
    /// uses, usage counts, audit records). Call it once the service has
    /// stopped and dropped its routes: the layers hold the node, and its
    /// audit writer drains when the last is gone.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
    }
}
