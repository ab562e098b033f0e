//! The OpenAPI document of the client API, generated from the handlers'
//! `#[utoipa::path]` annotations and the [`crate::model`] types, served at
//! `/v1/openapi.json` and committed as `docs/openapi.json` (a test fails when
//! the two differ; regenerate with `kvserver --print-openapi > docs/openapi.json`).

use axum::Json;
use utoipa::OpenApi;

use super::backup;
use super::cluster;
use super::kv;
use super::ops;
use super::partitions;
use super::range;
use super::txn;
use super::watch;
use crate::model;

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvserver",
        description = "One node of kvcluster: a Raft-replicated, strongly consistent key-value store. \
                       Any node accepts any request; writes are handed to the leader, and linearizable reads are served by any member once it has caught up with the leader. \
                       Every error is `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`; `503` with `Retry-After` means retry.",
        license(name = "Apache-2.0")
    ),
    paths(
        kv::get_key, kv::put_key, kv::delete_key, range::list, range::delete_prefix, range::batch_get,
        txn::txn, watch::watch,
        cluster::info, partitions::list, partitions::key, cluster::init, backup::backup, cluster::add_learner, cluster::change_membership, cluster::transfer_leader,
        ops::healthz, ops::readyz, ops::status, ops::metrics, openapi_json,
    ),
    components(schemas(model::ErrorBody, model::ErrorDetail, model::DroppedBody, model::WatchEventBody)),
    modifiers(&OptionalBodies, &BearerAuth),
    tags(
        (name = "kv", description = "Keys and values: CRUD, compare-and-set, TTL, listing, batch get, transactions"),
        (name = "watch", description = "Change feed as Server-Sent Events"),
        (name = "cluster", description = "Membership: init, learners, voters, leadership"),
        (name = "ops", description = "Health, readiness, status, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// Marks request bodies the handlers accept absent (`POST /v1/cluster/init`):
/// `#[utoipa::path]` has no switch for it, and a fuzzer rightly flags a
/// "required" body that the server does not require.
struct OptionalBodies;

impl utoipa::Modify for OptionalBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(utoipa::openapi::RefOr::T(body)) = doc
            .paths
            .paths
            .get_mut("/v1/cluster/init")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
        {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// The bearer-token scheme, required on every operation but the open ones
/// (`crate::api::auth`), each of which then also documents its 401 and 403.
struct BearerAuth;

/// Operations open to anyone with the default `auth` settings.
const OPEN: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::security::Http;
        use utoipa::openapi::security::HttpAuthScheme;
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::security::SecurityScheme;
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "A token from the nodes' token files (or, with client TLS, a client certificate bound to a role); see docs/security.md"
                .into(),
        );
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let error = |description: &str| {
            let content = utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build();
            RefOr::T(
                utoipa::openapi::ResponseBuilder::new()
                    .description(description)
                    .content("application/json", content)
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if OPEN.contains(&path.as_str()) {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                let r = &mut op.responses.responses;
                r.entry("401".into()).or_insert_with(|| {
                    error("No usable credential (`unauthenticated`; `WWW-Authenticate` says why)")
                });
                r.entry("403".into()).or_insert_with(|| {
                    error("The principal's role or key prefixes do not cover the request (`forbidden`)")
                });
            }
        }
    }
}

/// The document as JSON, with unsigned integers described as such: utoipa writes
/// every `u64` as `format: int64, minimum: 0`, whose range stops at 2^63 - 1,
/// while the server takes any `u64`. `uint64` (OpenAPI format registry) says so.
pub fn document_value() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    mark_unsigned(&mut doc);
    doc
}

fn mark_unsigned(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let unsigned = map.get("format").and_then(|f| f.as_str()) == Some("int64")
                && map.get("minimum").and_then(|m| m.as_u64()) == Some(0);
            if unsigned {
                map.insert("format".into(), "uint64".into());
            }
            map.values_mut().for_each(mark_unsigned);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mark_unsigned),
        _ => {}
    }
}

/// The document as pretty JSON (what `--print-openapi` prints).
pub fn document() -> String {
    serde_json::to_string_pretty(&document_value())
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(document_value())
}
