//! What the embedded layer adds to a request of the service it protects:
//! the same axum handler called bare and behind `KeywardLayer`, over a real
//! SQLite database holding the key. The layer's work per request is the
//! gateway's decision (bearer, digest, snapshot lookup, path, route,
//! scopes), the last-use and usage counts, and the `Caller` put in the
//! request's extensions. Target: ≤ 1 µs median added.
//!
//! `cargo bench -p keyward-embed --bench layer`
//!
//! Both variants pay the same runtime entry (`block_on`) and request
//! construction, so the difference of their medians is the layer's cost.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "bench code: a panic is a failed run, and it measures real time"
)]
#![allow(missing_docs)]

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use keyward_app::env::{OsRng, SystemClock};
use keyward_app::{Actor, App, CreateKey};
use keyward_core::{Catalog, GrantRequest};
use std::hint::black_box;
use std::sync::Arc;
use tower_service::Service as _;

const PATH: &str = "/api/third-party/v1/vehicles/42";

fn request(key: &str) -> Request<Body> {
    Request::get(PATH)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let key = rt.block_on(async {
        let store = keyward_store::open_as(&url, "bench").await.unwrap();
        let catalog = Arc::new(Catalog::fleet().unwrap());
        let app = App::new(
            store,
            catalog.clone(),
            keyward_app::env::digester_from_env(),
            Arc::new(SystemClock),
            Arc::new(OsRng),
        );
        let actor = Actor::operator("cli:bench", &catalog);
        let (org, _) = app.bootstrap(&actor).await.unwrap();
        let created = app
            .create_key(
                &actor,
                &org,
                CreateKey {
                    name: "bench".into(),
                    grants: GrantRequest {
                        scopes: vec!["vehicles:read".into()],
                        ..GrantRequest::default()
                    },
                    ..CreateKey::default()
                },
            )
            .await
            .unwrap();
        created.key
    });
    let verifier = rt
        .block_on(keyward_embed::Verifier::open(
            &url,
            keyward_embed::Options::default(),
        ))
        .unwrap();
    let handler = || async { "[]" };
    // `with_state(())` turns each handler into its route once, as
    // `axum::serve` does; a `Router` called bare would do it per request.
    let mut bare: axum::Router = axum::Router::new()
        .route(
            "/api/third-party/v1/vehicles/{id}",
            axum::routing::get(handler),
        )
        .with_state(());
    let mut guarded: axum::Router = axum::Router::new()
        .route(
            "/api/third-party/v1/vehicles/{id}",
            axum::routing::get(handler),
        )
        .layer(verifier.layer())
        .with_state(());
    // Both answer as expected before they are timed.
    let status = |r: &mut axum::Router, key: &str| {
        rt.block_on(r.call(request(key))).unwrap().status().as_u16()
    };
    assert_eq!(status(&mut bare, &key), 200);
    assert_eq!(status(&mut guarded, &key), 200);
    assert_eq!(status(&mut guarded, "insp_live_nope"), 401);

    // `LAYER_LOOP=bare|guarded LAYER_ITERS=n`: only that variant, n times,
    // for `perf stat -e instructions` (counts tell a change from the
    // machine's weather; bench/README.md).
    if let (Ok(which), Ok(n)) = (std::env::var("LAYER_LOOP"), std::env::var("LAYER_ITERS")) {
        let n: u64 = n.parse().unwrap();
        let router = if which == "bare" {
            &mut bare
        } else {
            &mut guarded
        };
        for _ in 0..n {
            black_box(rt.block_on(router.call(request(&key))).unwrap());
        }
        drop(guarded);
        rt.block_on(verifier.shutdown());
        return;
    }
    let mut group = c.benchmark_group("embedded");
    group.bench_function("bare handler", |b| {
        b.iter(|| black_box(rt.block_on(bare.call(request(&key))).unwrap()));
    });
    group.bench_function("behind KeywardLayer", |b| {
        b.iter(|| black_box(rt.block_on(guarded.call(request(&key))).unwrap()));
    });
    group.finish();
    drop(guarded);
    rt.block_on(verifier.shutdown());
}

criterion_group!(benches, layer);
criterion_main!(benches);
