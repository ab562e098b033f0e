//! Endpoints that address many keys: paginated prefix listing, prefix delete
//! and batch get. In a cluster of one partition they are served by its group as
//! they always were. In a partitioned cluster, `partition=<p>` narrows one to a
//! partition (served by a node that hosts it); without it the request spans
//! every partition (`crate::route::fanout`) and the parts are merged here:
//! - a listing is merged in key order: each partition lists up to `limit` keys
//!   after `start_after`, the page is the first `limit` of them, and
//!   `next_start_after` (the page's last key) continues across partitions;
//! - a prefix delete deletes in every partition (each atomically, at its own
//!   revision) and adds up the counts;
//! - a batch get asks each partition for its keys and answers in the order
//!   asked.
//!
//! Every answer that spans partitions carries `revisions` (partition →
//! revision); `revision` is then the highest of them.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;

use super::ApiError;
use super::AppState;
use super::Q;
use super::Raw;
use super::kv::MAX_KEY_BYTES;
use super::kv::MAX_PAGE;
use super::kv::require_outcome;
use super::kv::validate_key;
use super::merge::merge_batches;
use super::merge::merge_pages;
use super::merge::revisions;
use crate::auth::Access;
use crate::command::Command;
use crate::command::Outcome;
use crate::command::StoredKv;
use crate::command::now_ms;
use crate::model::BatchGetQuery;
use crate::model::BatchGetRequest;
use crate::model::BatchGetResponse;
use crate::model::DeleteResponse;
use crate::model::ListQuery;
use crate::model::ListResponse;
use crate::model::PrefixDeleteQuery;
use crate::placement::PartitionId;
use crate::placement::hash::partition_of;
use crate::route;
use crate::route::Located;
use crate::route::Routed;
use crate::route::Target;
use crate::route::fanout::Failed;
use crate::route::fanout::Part;
use crate::route::fanout::Scope;

const DEFAULT_PAGE: usize = 1_000;

/// The answer of a spanning request that failed: this node's error, or a
/// partition's answer as it came.
fn failed(f: Failed) -> Result<Response, ApiError> {
    match f {
        Failed::Api(e) => Err(e),
        Failed::Answer(resp) => Ok(resp),
    }
}

/// The answer of one group's part: its JSON, naming the partition, or the
/// answer of the node it was relayed to.
fn answer<T: serde::Serialize>(target: &Target, part: Part<T>) -> Response {
    match part {
        Part::Done(t) => target.tag(Json(t).into_response()),
        Part::Answer(resp) => resp,
    }
}

/// `GET /v1/kv`: lists keys by prefix, in key order, paginated.
#[utoipa::path(
    get, path = "/v1/kv", tag = "kv",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of keys", body = ListResponse),
        (status = 400, description = "Invalid parameter", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader or storage unavailable", body = crate::model::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Q(q): Q<ListQuery>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad(
            "invalid_parameter",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    if q.prefix.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad(
            "key_too_long",
            format!("prefix is longer than {MAX_KEY_BYTES} bytes"),
        ));
    }
    let target = match route::fanout::scope(&state, &raw, q.partition).await? {
        Scope::One(Located::Here(t)) => t,
        Scope::One(Located::Relayed(resp)) => return Ok(resp),
        Scope::All(map) => {
            route::authorize(&state, &raw.principal, &[Access::ReadPrefix(&q.prefix)])?;
            let parts: Vec<(PartitionId, Bytes)> =
                (0..map.partitions).map(|p| (p, Bytes::new())).collect();
            let q = &q;
            let state_ref = &state;
            let pages =
                match route::fanout::each(&state, &raw, &map, parts, |_, t, sub| async move {
                    list_one(state_ref, &t, &sub, q, limit).await
                })
                .await
                {
                    Ok(pages) => pages,
                    Err(f) => return failed(f),
                };
            let mut page = merge_pages(pages, limit, state.config.limits.max_response_bytes);
            page.node_id = state.id;
            return Ok(Json(page).into_response());
        }
    };
    Ok(answer(
        &target,
        list_one(&state, &target, &raw, &q, limit).await?,
    ))
}

/// One group's page.
async fn list_one(
    state: &AppState,
    target: &Target,
    raw: &Raw,
    q: &ListQuery,
    limit: usize,
) -> Result<Part<ListResponse>, ApiError> {
    let access = [Access::ReadPrefix(&q.prefix)];
    if let Routed::Relayed(resp) = route::read(state, target, raw, &access, q.consistency).await? {
        return Ok(Part::Answer(resp));
    }
    let (kvs, more) = target
        .store
        .list(
            &q.prefix,
            q.start_after.as_deref(),
            limit,
            q.keys_only,
            now_ms(),
            state.config.limits.max_response_bytes,
        )
        .await?;
    let revision = target.store.revision();
    let next = if more {
        kvs.last().map(|k| k.key.clone())
    } else {
        None
    };
    Ok(Part::Done(ListResponse {
        revision,
        node_id: state.id,
        count: kvs.len(),
        kvs: kvs
            .into_iter()
            .map(|kv| kv.into_api_with(!q.keys_only))
            .collect(),
        more,
        next_start_after: next,
        revisions: None,
    }))
}

/// `DELETE /v1/kv?prefix=`: deletes every key with a prefix, as one revision
/// (of each partition, when the cluster has several).
#[utoipa::path(
    delete, path = "/v1/kv", tag = "kv",
    params(PrefixDeleteQuery),
    responses(
        (status = 200, description = "Keys deleted (possibly 0)", body = DeleteResponse),
        (status = 400, description = "Missing or empty prefix", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader or commit timeout", body = crate::model::ErrorBody),
    )
)]
pub async fn delete_prefix(
    State(state): State<AppState>,
    Q(q): Q<PrefixDeleteQuery>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let prefix = match &q.prefix {
        Some(p) if !p.is_empty() => p.clone(),
        _ => {
            return Err(ApiError::bad(
                "invalid_parameter",
                "prefix is required and must not be empty",
            ));
        }
    };
    if prefix.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad(
            "key_too_long",
            format!("prefix is longer than {MAX_KEY_BYTES} bytes"),
        ));
    }
    let target = match route::fanout::scope(&state, &raw, q.partition).await? {
        Scope::One(Located::Here(t)) => t,
        Scope::One(Located::Relayed(resp)) => return Ok(resp),
        Scope::All(map) => {
            route::authorize(&state, &raw.principal, &[Access::WritePrefix(&prefix)])?;
            let parts: Vec<(PartitionId, Bytes)> =
                (0..map.partitions).map(|p| (p, Bytes::new())).collect();
            let (state_ref, prefix_ref) = (&state, &prefix);
            let done =
                match route::fanout::each(&state, &raw, &map, parts, |_, t, sub| async move {
                    delete_one(state_ref, &t, &sub, prefix_ref.clone()).await
                })
                .await
                {
                    Ok(done) => done,
                    Err(f) => return failed(f),
                };
            let (revision, revs) = revisions(&done, |d: &DeleteResponse| d.revision);
            return Ok(Json(DeleteResponse {
                revision,
                node_id: state.id,
                deleted: done.iter().map(|(_, d)| d.deleted).sum(),
                prev_kv: None,
                revisions: Some(revs),
            })
            .into_response());
        }
    };
    Ok(answer(
        &target,
        delete_one(&state, &target, &raw, prefix).await?,
    ))
}

/// One group's prefix delete.
async fn delete_one(
    state: &AppState,
    target: &Target,
    raw: &Raw,
    prefix: String,
) -> Result<Part<DeleteResponse>, ApiError> {
    let cmd = Command::DeletePrefix {
        prefix,
        now_ms: now_ms(),
    };
    let (revision, outcome) = match route::write(state, target, raw, cmd).await? {
        Routed::Relayed(resp) => return Ok(Part::Answer(resp)),
        Routed::Local(r) => require_outcome(r)?,
    };
    match outcome {
        Outcome::Deleted { count, .. } => Ok(Part::Done(DeleteResponse {
            revision,
            node_id: state.id,
            deleted: count,
            prev_kv: None,
            revisions: None,
        })),
        other => Err(ApiError::Internal(format!(
            "unexpected outcome for prefix delete: {other:?}"
        ))),
    }
}

/// `POST /v1/batch/get`: reads several keys from one consistent view (of each
/// partition, when the keys are in several).
#[utoipa::path(
    post, path = "/v1/batch/get", tag = "kv",
    params(BatchGetQuery),
    request_body = BatchGetRequest,
    responses(
        (status = 200, description = "Found keys and missing names", body = BatchGetResponse),
        (status = 400, description = "Invalid keys", body = crate::model::ErrorBody),
        (status = 413, description = "The keys found hold more than `limits.max_response_bytes` (`response_too_large`): ask for fewer", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader or storage unavailable", body = crate::model::ErrorBody),
    )
)]
pub async fn batch_get(
    State(state): State<AppState>,
    Q(q): Q<BatchGetQuery>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let body: BatchGetRequest = raw.json()?;
    if body.keys.is_empty() || body.keys.len() > MAX_PAGE {
        return Err(ApiError::bad(
            "invalid_parameter",
            format!("keys must hold between 1 and {MAX_PAGE} keys"),
        ));
    }
    for k in &body.keys {
        validate_key(k)?;
    }
    // A batch narrowed to one partition holds only that partition's keys.
    let map = state.store.placement();
    if let Some(p) = q.partition.filter(|p| map.epoch > 0 && *p < map.partitions)
        && let Some(k) = body
            .keys
            .iter()
            .find(|k| partition_of(k.as_bytes(), map.partitions) != p)
    {
        return Err(ApiError::bad(
            "invalid_parameter",
            format!(
                "key {k:?} is in partition {}, not {p}",
                partition_of(k.as_bytes(), map.partitions)
            ),
        ));
    }
    let target = match route::fanout::scope(&state, &raw, q.partition).await? {
        Scope::One(Located::Here(t)) => t,
        Scope::One(Located::Relayed(resp)) => return Ok(resp),
        Scope::All(map) => {
            let access: Vec<Access<'_>> = body.keys.iter().map(|k| Access::Read(k)).collect();
            route::authorize(&state, &raw.principal, &access)?;
            let mut by_part: BTreeMap<PartitionId, Vec<String>> = BTreeMap::new();
            for k in &body.keys {
                by_part
                    .entry(partition_of(k.as_bytes(), map.partitions))
                    .or_default()
                    .push(k.clone());
            }
            let mut parts = Vec::with_capacity(by_part.len());
            for (p, keys) in by_part {
                let sub = BatchGetRequest {
                    keys,
                    consistency: body.consistency,
                };
                let bytes = serde_json::to_vec(&sub).map_err(|e| {
                    ApiError::Internal(format!("encoding a partition's batch: {e}"))
                })?;
                parts.push((p, Bytes::from(bytes)));
            }
            let state_ref = &state;
            let got = match route::fanout::each(&state, &raw, &map, parts, |_, t, sub| async move {
                let keys: BatchGetRequest = sub.json()?;
                get_many_one(state_ref, &t, &sub, &keys).await
            })
            .await
            {
                Ok(got) => got,
                Err(f) => return failed(f),
            };
            let limit = state.config.limits.max_response_bytes;
            let Some(mut merged) = merge_batches(&body.keys, got, limit) else {
                state
                    .metrics
                    .api_limited
                    .with_label_values(&["response_bytes"])
                    .inc();
                return Err(ApiError::ResponseTooLarge { limit });
            };
            merged.node_id = state.id;
            return Ok(Json(merged).into_response());
        }
    };
    Ok(answer(
        &target,
        get_many_one(&state, &target, &raw, &body).await?,
    ))
}

/// One group's batch get.
async fn get_many_one(
    state: &AppState,
    target: &Target,
    raw: &Raw,
    body: &BatchGetRequest,
) -> Result<Part<BatchGetResponse>, ApiError> {
    let access: Vec<Access<'_>> = body.keys.iter().map(|k| Access::Read(k)).collect();
    if let Routed::Relayed(resp) =
        route::read(state, target, raw, &access, body.consistency).await?
    {
        return Ok(Part::Answer(resp));
    }
    let limit = state.config.limits.max_response_bytes;
    let Some((kvs, missing)) = target.store.get_many(&body.keys, now_ms(), limit).await? else {
        state
            .metrics
            .api_limited
            .with_label_values(&["response_bytes"])
            .inc();
        return Err(ApiError::ResponseTooLarge { limit });
    };
    Ok(Part::Done(BatchGetResponse {
        revision: target.store.revision(),
        node_id: state.id,
        kvs: kvs.into_iter().map(StoredKv::into_api).collect(),
        missing,
        revisions: None,
    }))
}
