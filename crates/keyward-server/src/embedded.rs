//! keyward inside a Rust service (SPEC §12): a node without a listener.
//! `Server::embed` starts what `serve` starts to
//! keep the snapshot true (the change-log sync, the flush of last uses and
//! usage counts, the exchange of limit leases on PostgreSQL), and
//! [`KeywardLayer`] decides each request of the host service with the
//! gateway's own [`admit`]: the same decisions, limits, refusal documents
//! and audit records (through the same group commit), with no network
//! hop. What an embedded node leaves to `keyward serve` nodes: the key
//! policy's duty and webhook deliveries (a library does not make outbound
//! calls of its own).

use crate::auth::{Exchange, is_write};
use crate::body::Body;
use crate::gateway::{admit, write_gate};
use crate::state::State;
use crate::web::Client;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName};
use http::{Request, Response};
use keyward_app::KeyEntry;
use keyward_core::Decision;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::task::JoinHandle;

/// A started embedded node: the background work that keeps its snapshot
/// in sync, and the state its layers decide with.
pub struct Embedded {
    state: Arc<State>,
    background: Vec<JoinHandle<()>>,
    audit_task: JoinHandle<()>,
}

/// Who called: put in an allowed request's extensions by [`KeywardLayer`],
/// for handlers to read (`axum::Extension<Caller>`). Cheap to clone.
#[derive(Clone)]
pub struct Caller {
    entry: Arc<KeyEntry>,
    request_id: http::HeaderValue,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("key_id", &self.key_id())
            .field("org_id", &self.org_id())
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// The key's id (`key_…`): what the audit log names.
    pub fn key_id(&self) -> &str {
        &self.entry.key_id
    }

    /// The key's organization (`org_…`): the tenant to scope data to.
    pub fn org_id(&self) -> &str {
        &self.entry.org_id
    }

    /// The key's effective scopes (its grants closed under `implies`).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        std::str::from_utf8(&self.entry.grants.effective_text)
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
    }

    /// Whether the key holds `scope` (after `implies`).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// keyward's id of this request, as in the audit log.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }
}

impl Embedded {
    pub(crate) fn start(state: Arc<State>, audit_task: JoinHandle<()>) -> Self {
        let background = vec![
            tokio::spawn(crate::background::sync_loop(state.clone())),
            tokio::spawn(crate::background::flush_loop(state.clone())),
            tokio::spawn(crate::background::limits_loop(state.clone())),
        ];
        Embedded {
            state,
            background,
            audit_task,
        }
    }

    /// The layer to put in front of the host service's routes.
    pub fn layer(&self) -> KeywardLayer {
        KeywardLayer {
            state: self.state.clone(),
            unknown_peer: Client::new(SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }

    /// The decision for `key` on `method path` (the path with or without
    /// the catalog's gateway prefix), as `/v1/verify` decides it: the core
    /// [`Decision`], with no limit counted, no use recorded and nothing
    /// audited. A well-formed key not yet in the snapshot is looked up once.
    ///
    /// # Errors
    /// The refusal document (400 for a method or path keyward does not
    /// decide on, 503 when the database is needed and out of reach).
    pub async fn check(
        &self,
        key: &str,
        method: &str,
        path: &str,
    ) -> Result<Decision, crate::error::ApiError> {
        let state = &self.state;
        let catalog = state.app.catalog();
        let path = path.split('?').next().unwrap_or(path);
        keyward_core::path::check_method(method)
            .map_err(|e| crate::error::ApiError::validation("method", e.to_string()))?;
        keyward_core::path::check_normal(path).map_err(|e| {
            crate::error::ApiError::validation(
                "path",
                format!("path `{path}` is not in normal form: {e}"),
            )
        })?;
        let route = keyward_core::path::strip_gateway_prefix(catalog.gateway_prefix(), path)
            .unwrap_or(path);
        let found = crate::auth::find_key(state, Ok(key)).await?;
        let access = found.as_ref().map(|e| e.access()).map_err(|f| *f);
        Ok(crate::auth::decide(
            catalog,
            access.as_ref().map_err(|f| *f),
            state.app.now(),
            &crate::auth::Question::Route(method, route),
        ))
    }

    /// Stops the background work and writes what is pending (last uses,
    /// usage counts, audit records), as a server's shutdown does. Layers
    /// still in use answer 503 from then on.
    pub async fn shutdown(self) {
        let Embedded {
            state,
            background,
            audit_task,
        } = self;
        crate::background::finish(state, background, audit_task).await;
    }
}

/// Decides every request before the service it wraps: refusals are
/// answered here with the contract's status and JSON document; an allowed
/// request reaches the service with a [`Caller`] in its extensions and
/// without its `Authorization` header, and an allowed write is audited with
/// the service's status once it has answered.
#[derive(Clone)]
pub struct KeywardLayer {
    state: Arc<State>,
    /// The client of a request without axum's `ConnectInfo`.
    unknown_peer: Client,
}

impl<S> tower_layer::Layer<S> for KeywardLayer {
    type Service = Keyward<S>;

    fn layer(&self, inner: S) -> Keyward<S> {
        Keyward {
            state: self.state.clone(),
            inner,
            unknown_peer: self.unknown_peer.clone(),
            last_peer: None,
        }
    }
}

/// The service [`KeywardLayer`] makes.
#[derive(Clone)]
pub struct Keyward<S> {
    state: Arc<State>,
    inner: S,
    unknown_peer: Client,
    /// The last peer seen, rendered: a connection's requests share it, and
    /// rendering an address costs an allocation.
    last_peer: Option<Client>,
}

impl<S, B, R> tower_service::Service<Request<B>> for Keyward<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: From<Bytes> + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was not polled ready goes on; the ready one serves
        // this request (tower's rule for services called from a future).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let state = self.state.clone();
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let client = match (peer, &self.last_peer) {
            (None, _) => self.unknown_peer.clone(),
            (Some(p), Some(last)) if last.addr == p.ip() => last.clone(),
            (Some(p), _) => {
                let c = Client::new(p);
                self.last_peer = Some(c.clone());
                c
            }
        };
        let fut = async move {
            let request_id = state.request_ids.next();
            // A standard method clones without allocating; the path is
            // borrowed for the decision and copied only for a write's audit.
            let method = req.method().clone();
            let write = is_write(&method);
            let admitted = admit(
                &state,
                Exchange {
                    method: &method,
                    path: req.uri().path(),
                    client: &client,
                    request_id: &request_id,
                    client_request_id: None,
                    key: None,
                },
                req.headers(),
                write,
                None,
            )
            .await;
            let (key, decision, limited) = match admitted {
                Ok(admitted) => admitted,
                Err(refused) => return Ok(into_host(refused)),
            };
            if write && let Some(refused) = write_gate(&state, &request_id) {
                return Ok(into_host(refused));
            }
            let written = write.then(|| req.uri().path().to_owned());
            let headers = req.headers_mut();
            headers.remove(AUTHORIZATION);
            // Identity headers the client sent, and what the service could
            // act on instead of what was judged (method and path overrides,
            // other spellings of keyward's headers), as the gateway strips
            // them. One pass over the names: most requests carry none.
            let strip = |n: &HeaderName| {
                n.as_str().starts_with("x-keyward-") || crate::authorize::acts_instead(n)
            };
            if headers.keys().any(strip) {
                let names: Vec<HeaderName> = headers.keys().filter(|n| strip(n)).cloned().collect();
                for name in names {
                    headers.remove(name);
                }
            }
            req.extensions_mut().insert(Caller {
                entry: key.clone(),
                request_id: request_id.clone(),
            });
            let mut res = inner.call(req).await?;
            if let Some(path) = &written {
                let ex = Exchange {
                    method: &method,
                    path,
                    client: &client,
                    request_id: &request_id,
                    client_request_id: None,
                    key: Some(&key),
                };
                let entry = ex.audit(
                    state.app.catalog().key_prefix(),
                    &state.default_org,
                    res.status().as_u16(),
                    crate::auth::required_names(&state, &decision),
                    "allowed",
                );
                if state.record(entry).await.is_err() {
                    let status = Some(res.status().as_u16());
                    return Ok(into_host(crate::auth::audit_unavailable(
                        &state,
                        &request_id,
                        status,
                    )));
                }
            }
            if let Some(note) = limited {
                note.write(res.headers_mut());
            }
            res.headers_mut()
                .insert(crate::telemetry::X_REQUEST_ID.clone(), request_id);
            Ok(res)
        };
        Box::pin(fut)
    }
}

/// A refusal keyward wrote, in the host service's body type.
fn into_host<R: From<Bytes>>(res: Response<Body>) -> Response<R> {
    res.map(|body| match body {
        Body::Full(bytes) => R::from(bytes.unwrap_or_default()),
        Body::Upstream(_) | Body::Admin(_) => R::from(Bytes::new()),
    })
}
