//! The admin API (SPEC §6): keys, groups, audit queries, the catalog, and
//! `/openapi.json`.
//!
//! Routes are registered with `utoipa_axum::routes!`, which takes each
//! handler's `#[utoipa::path]` for both the route and its OpenAPI operation:
//! a route cannot exist without its spec. The four endpoints served by hand
//! in [`crate::own`] and [`crate::verify`] (verify, whoami, healthz,
//! metrics) are documented by the stubs of `docs.rs`, and a test checks the
//! two lists agree. `keys.rs`, `usage.rs` and `people.rs` hold the
//! endpoints, each file its own routes; `common.rs` what they share.
//!
//! Every handler does four things only: authorize (the `Authorized`
//! extractor, before the body is read, so a caller without the scope learns
//! nothing from validation errors), read the input (our own extractors,
//! whose rejections are the SPEC error shape, never axum's plain text), call
//! the one use case of [`keyward_app::App`] the CLI also calls, and render.

mod common;
mod docs;
mod keys;
mod people;
mod scanning;
mod settings;
mod usage;
mod webhooks;

use crate::body::Body;
use crate::web::{Ctx, reply};
use common::Shared;
use common::{NoFields, parse_time};
use http::Response;
use http::header::{CONTENT_TYPE, HeaderValue};
use keys::{CreateKeyBody, RollBody};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// The admin API's routes over `state`, `/openapi.json` included, for
/// [`crate::own::Routes`] to serve beside the console's.
pub(crate) fn router(state: Shared) -> axum::Router {
    let mut spec = serde_json::to_value(openapi()).unwrap_or_default();
    describe_catalog(&mut spec, state.app.catalog());
    let spec = bytes::Bytes::from(serde_json::to_vec(&spec).unwrap_or_default());
    api_router().with_state(state).split_for_parts().0.route(
        "/openapi.json",
        axum::routing::get(move || {
            let spec = spec.clone();
            async move {
                let mut res = Response::new(Body::full(spec));
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                reply(res)
            }
        }),
    )
}

/// The OpenAPI document, for tests and tools.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// Narrows the served document to the catalog in force: the grants a key
/// may be created with are this catalog's names, and one list must be
/// non-empty. Generic clients (and fuzzers) then send what the server takes.
fn describe_catalog(spec: &mut serde_json::Value, catalog: &keyward_core::Catalog) {
    if !spec["components"]["schemas"]["CreateKeyBody"].is_object() {
        return;
    }
    let scopes: Vec<&str> = catalog
        .scopes()
        .iter()
        .filter(|s| s.status() == keyward_core::ScopeStatus::Available)
        .map(keyward_core::Scope::name)
        .collect();
    let sets: Vec<&str> = catalog.permission_sets().iter().map(|p| p.id()).collect();
    let presets: Vec<&str> = catalog.presets().iter().map(|p| p.id()).collect();
    for (field, names) in [
        ("scopes", scopes),
        ("permission_sets", sets),
        ("presets", presets),
    ] {
        if field == "scopes" {
            let verify = &mut spec["components"]["schemas"]["VerifyScopesDoc"];
            if verify.is_object() {
                verify["properties"]["scopes"]["items"]["enum"] = serde_json::json!(names);
            }
        }
        let body = &mut spec["components"]["schemas"]["CreateKeyBody"];
        body["properties"][field]["items"]["enum"] = serde_json::json!(names);
        body["properties"][field]["uniqueItems"] = serde_json::Value::Bool(true);
    }
    let body = &mut spec["components"]["schemas"]["CreateKeyBody"];
    body["anyOf"] = serde_json::json!([
        {"required": ["scopes"], "properties": {"scopes": {"minItems": 1}}},
        {"required": ["permission_sets"], "properties": {"permission_sets": {"minItems": 1}}},
        {"required": ["presets"], "properties": {"presets": {"minItems": 1}}},
    ]);
}

fn api_router() -> OpenApiRouter<Shared> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(keys::routes())
        .merge(usage::routes())
        .merge(people::routes())
        .merge(settings::routes())
        .merge(webhooks::routes())
        .merge(scanning::routes())
}

/// The admin API's side of the `json_bodies` fuzz target: every JSON body
/// the admin API reads goes through its own parser; an input is accepted or
/// refused with a 4xx, never a panic or a 5xx.
pub(crate) fn fuzz_json_bodies(data: &[u8]) {
    fn check<T: serde::de::DeserializeOwned>(data: &[u8], ctx: &Ctx) -> Option<T> {
        match crate::web::parse_json::<T>(data, ctx) {
            Ok(v) => Some(v),
            Err(reply) => {
                let status = reply.status();
                assert!(status.is_client_error(), "{status} for a body");
                None
            }
        }
    }
    let ctx = Ctx {
        client: crate::web::Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        request_id: HeaderValue::from_static("fuzz"),
    };
    if let Some(body) = check::<CreateKeyBody>(data, &ctx)
        && let Some(at) = body.expires_at.as_deref()
    {
        let _ = parse_time("expires_at", at);
    }
    if let Some(body) = check::<RollBody>(data, &ctx)
        && let Some(grace) = body.grace.as_deref()
    {
        let _ = keyward_core::parse_duration_ms(grace);
    }
    if let Some(body) = check::<settings::PolicyBody>(data, &ctx)
        && let Ok(text) = body.into_text()
    {
        let _ = text.check();
    }
    let _ = check::<keyward_app::webhooks::NewWebhook>(data, &ctx);
    let _ = check::<NoFields>(data, &ctx);
    if let Err(e) = scanning::parse_report(data) {
        assert!(e.status.is_client_error(), "{} for a report", e.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths [`crate::own`] serves by hand, which the spec must document.
    const HAND_WRITTEN: &[(&str, &str)] = &[
        ("post", "/v1/verify"),
        ("get", "/v1/whoami"),
        ("get", "/v1/authorize"),
        ("get", "/healthz"),
        ("get", "/metrics"),
    ];

    #[test]
    fn the_spec_documents_every_hand_written_endpoint() {
        let spec = serde_json::to_value(openapi()).unwrap_or_default();
        for (method, path) in HAND_WRITTEN {
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} is served but not documented"
            );
        }
        for path in ["/v1/keys", "/v1/keys/{id}", "/v1/groups/{id}/users/{user}"] {
            assert!(spec["paths"][path].is_object(), "{path}");
        }
        assert_eq!(
            spec["paths"]["/v1/keys/{id}"]
                .as_object()
                .map(|o| o.len())
                .unwrap_or(0),
            5,
            "GET plus the four refused verbs"
        );
    }

    #[test]
    fn request_bodies_refuse_unknown_fields_in_the_spec_too() {
        let spec = serde_json::to_value(openapi()).unwrap_or_default();
        for name in [
            "CreateKeyBody",
            "RollBody",
            "VerifyRouteDoc",
            "VerifyScopesDoc",
            "PolicyBody",
        ] {
            assert_eq!(
                spec["components"]["schemas"][name]["additionalProperties"],
                serde_json::Value::Bool(false),
                "{name}"
            );
        }
    }
}
