//! The OpenAPI document of the client API, generated from the handlers'
//! `#[utoipa::path]` annotations and the [`crate::model`] types, served at
//! `/v1/openapi.json` and committed as `docs/openapi.json` (a test fails when
//! the two differ; regenerate with `kvserver --print-openapi > docs/openapi.json`).

use axum::Json;
use utoipa::OpenApi;

use super::cluster;
use super::kv;
use super::ops;
use super::txn;
use super::watch;
use crate::model;

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvserver",
        description = "One node of kvcluster: a Raft-replicated, strongly consistent key-value store. \
                       Any node accepts any request; writes and linearizable reads are forwarded to the leader. \
                       Every error is `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`; `503` with `Retry-After` means retry.",
        license(name = "Apache-2.0")
    ),
    paths(
        kv::get_key, kv::put_key, kv::delete_key, kv::list, kv::delete_prefix, kv::batch_get,
        txn::txn, watch::watch,
        cluster::info, cluster::init, cluster::add_learner, cluster::change_membership, cluster::transfer_leader,
        ops::healthz, ops::readyz, ops::status, ops::metrics, openapi_json,
    ),
    components(schemas(model::ErrorBody, model::ErrorDetail, model::DroppedBody, model::WatchEventBody)),
    tags(
        (name = "kv", description = "Keys and values: CRUD, compare-and-set, TTL, listing, batch get, transactions"),
        (name = "watch", description = "Change feed as Server-Sent Events"),
        (name = "cluster", description = "Membership: init, learners, voters, leadership"),
        (name = "ops", description = "Health, readiness, status, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `--print-openapi` prints).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
