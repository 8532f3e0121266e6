//! A small fleet API protected in-process by keyward: no gateway, no
//! network hop. Every request is decided by the layer exactly as keyward's
//! gateway would decide it (refusals, limits, audit of writes), against the
//! keys of the database `keyward` manages.
//!
//! ```console
//! $ keyward migrate
//! $ keyward keys create --name dispatch --preset read-only-integration
//! $ cargo run -p keyward-embed --example embedded_axum      # listens on 127.0.0.1:3000
//! $ curl -H "Authorization: Bearer $KEY" http://127.0.0.1:3000/api/third-party/v1/vehicles
//! ```
//!
//! `KEYWARD_DATABASE_URL` names the database (default `sqlite://keyward.db`,
//! the CLI's), `EXAMPLE_LISTEN` the address.

use axum::extract::{Extension, Path};
use axum::routing::get;
use axum::{Json, Router};
use keyward_embed::{Caller, Options, Verifier};
use serde_json::{Value, json};
use std::net::SocketAddr;

/// The fleet API's own handlers: they read who called from the request's
/// extensions, never from a header a client could send.
fn fleet_api() -> Router {
    Router::new()
        .route(
            "/api/third-party/v1/vehicles",
            get(list_vehicles).post(create_vehicle),
        )
        .route(
            "/api/third-party/v1/vehicles/{id}",
            get(vehicle).delete(delete_vehicle),
        )
        .route(
            "/api/third-party/v1/inspections",
            get(|Extension(c): Extension<Caller>| async move {
                Json(json!({"org": c.org_id(), "data": []}))
            })
            .post(|Extension(c): Extension<Caller>| async move {
                Json(json!({"created_by": c.key_id()}))
            }),
        )
}

async fn list_vehicles(Extension(caller): Extension<Caller>) -> Json<Value> {
    // The caller's organization is the tenant whose data it may see.
    Json(json!({
        "org": caller.org_id(),
        "data": [{"id": 1, "plate": "KW-001"}, {"id": 2, "plate": "KW-002"}],
        "key": caller.key_id(),
        "request_id": caller.request_id(),
    }))
}

async fn vehicle(Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Json<Value> {
    Json(json!({"org": caller.org_id(), "id": id}))
}

async fn create_vehicle(
    Extension(caller): Extension<Caller>,
) -> (axum::http::StatusCode, Json<Value>) {
    (
        axum::http::StatusCode::CREATED,
        Json(json!({"created_by": caller.key_id()})),
    )
}

async fn delete_vehicle(Path(id): Path<String>) -> Json<Value> {
    Json(json!({"deleted": id}))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database =
        std::env::var("KEYWARD_DATABASE_URL").unwrap_or_else(|_| "sqlite://keyward.db".into());
    let listen = std::env::var("EXAMPLE_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let verifier = Verifier::open(&database, Options::default()).await?;
    let app = fleet_api().layer(verifier.layer());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "fleet API protected by keyward on http://{}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    verifier.shutdown().await;
    Ok(())
}
