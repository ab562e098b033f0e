//! Key-value endpoints of one key: get, put (with TTL and CAS) and delete (the
//! endpoints that address many keys are in `super::range`).
//!
//! Input is validated on the node that received the request (so bad input is
//! refused without a round trip), then writes become [`Command`]s that
//! `crate::route::write` proposes (here or on the leader), and reads run once
//! `crate::route::read` has made them linearizable (or at once with
//! `consistency=stale`). Time-dependent fields (TTL expiry, timestamps) are
//! computed here; a leader that receives a command from a follower moves them
//! to its own clock (`Command::restamp`).

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;

use super::ApiError;
use super::AppState;
use super::Q;
use super::Raw;
use crate::auth::Access;
use crate::command::ApplyResult;
use crate::command::Command;
use crate::command::Outcome;
use crate::command::StoredKv;
use crate::command::now_ms;
use crate::model::DeleteQuery;
use crate::model::DeleteResponse;
use crate::model::GetResponse;
use crate::model::PutRequest;
use crate::model::PutResponse;
use crate::model::ReadQuery;
use crate::route;
use crate::route::Located;
use crate::route::Routed;

pub use crate::command::MAX_KEY_BYTES;
pub use crate::command::MAX_TTL_SECONDS;
/// Most keys per list page and per batch get.
pub const MAX_PAGE: usize = 10_000;

/// Endpoints that take no query parameters reject any.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

pub fn validate_key(key: &str) -> Result<(), ApiError> {
    crate::command::check_key(key).map_err(ApiError::from)
}

pub fn require_outcome(r: ApplyResult) -> Result<(u64, Outcome), ApiError> {
    match r.outcome {
        Some(o) => Ok((r.revision, o)),
        None => Err(ApiError::Internal(
            "state machine returned no outcome for a command".into(),
        )),
    }
}

fn mismatch(
    key: String,
    expected: Option<u64>,
    current: Option<StoredKv>,
    revision: u64,
) -> ApiError {
    ApiError::RevisionMismatch {
        key,
        expected: expected.unwrap_or(0),
        actual: current.as_ref().map(|k| k.mod_revision).unwrap_or(0),
        current: current.map(|kv| Box::new(kv.into_api())),
        revision,
    }
}

pub async fn empty_key() -> ApiError {
    ApiError::bad("invalid_key", "key must not be empty: use /v1/kv/{key}")
}

/// `GET /v1/kv/{key}`: reads one key.
#[utoipa::path(
    get, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "The key (UTF-8, 1..4096 bytes, may contain `/`; percent-encode reserved characters)"), ReadQuery),
    responses(
        (status = 200, description = "The key", body = GetResponse),
        (status = 400, description = "Invalid key or parameter", body = crate::model::ErrorBody),
        (status = 404, description = "No such key (`key_not_found`)", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader or storage unavailable", body = crate::model::ErrorBody),
    )
)]
pub async fn get_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Q(q): Q<ReadQuery>,
    raw: Raw,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let target = match route::locate(&state, &raw, &key).await? {
        Located::Here(t) => t,
        Located::Relayed(resp) => return Ok(resp),
    };
    let access = [Access::Read(&key)];
    if let Routed::Relayed(resp) =
        route::read(&state, &target, &raw, &access, q.consistency).await?
    {
        return Ok(resp);
    }
    let kv = target.store.get(&key, now_ms()).await?;
    let revision = target.store.revision();
    match kv {
        Some(kv) => Ok(target.tag(
            Json(GetResponse {
                revision,
                node_id: state.id,
                kv: kv.into_api(),
            })
            .into_response(),
        )),
        None => Err(ApiError::KeyNotFound {
            key,
            revision,
            node_id: state.id,
        }),
    }
}

/// `PUT /v1/kv/{key}`: creates or replaces a key, optionally with a TTL and a CAS guard.
#[utoipa::path(
    put, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "The key (UTF-8, 1..4096 bytes, may contain `/`)")),
    request_body = PutRequest,
    responses(
        (status = 200, description = "Replaced", body = PutResponse),
        (status = 201, description = "Created", body = PutResponse),
        (status = 400, description = "Invalid key, body or TTL", body = crate::model::ErrorBody),
        (status = 412, description = "`if_revision` did not match (`revision_mismatch`; `current` holds the key)", body = crate::model::ErrorBody),
        (status = 413, description = "Value or body over the limit", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader, commit timeout or outcome unknown", body = crate::model::ErrorBody),
    )
)]
pub async fn put_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Q(_params): Q<NoParams>,
    raw: Raw,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let body: PutRequest = raw.json()?;
    let limit = state.config.max_value_bytes;
    if body.value.len() > limit {
        return Err(ApiError::ValueTooLarge {
            size: body.value.len(),
            limit,
        });
    }
    let now = now_ms();
    let expires_at_ms = match body.ttl_seconds {
        None => None,
        Some(0) => {
            return Err(ApiError::bad(
                "invalid_ttl",
                "ttl_seconds must be at least 1",
            ));
        }
        Some(t) if t > MAX_TTL_SECONDS => {
            return Err(ApiError::bad(
                "invalid_ttl",
                format!("ttl_seconds must be at most {MAX_TTL_SECONDS}"),
            ));
        }
        Some(t) => Some(now + t * 1000),
    };
    let cmd = Command::Put {
        key: key.clone(),
        value: body.value,
        expires_at_ms,
        if_revision: body.if_revision,
        now_ms: now,
    };
    let target = match route::locate(&state, &raw, &key).await? {
        Located::Here(t) => t,
        Located::Relayed(resp) => return Ok(resp),
    };
    let (revision, outcome) = match route::write(&state, &target, &raw, cmd).await? {
        Routed::Relayed(resp) => return Ok(resp),
        Routed::Local(r) => require_outcome(r)?,
    };
    match outcome {
        Outcome::Put { created, kv, prev } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = PutResponse {
                revision,
                node_id: state.id,
                created,
                kv: kv.into_api(),
                prev_kv: prev.map(StoredKv::into_api),
            };
            Ok(target.tag((status, Json(body)).into_response()))
        }
        Outcome::PreconditionFailed { current } => {
            Err(mismatch(key, body.if_revision, current, revision))
        }
        other => Err(ApiError::Internal(format!(
            "unexpected outcome for put: {other:?}"
        ))),
    }
}

/// `DELETE /v1/kv/{key}`: deletes a key, optionally guarded by its revision.
#[utoipa::path(
    delete, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "The key"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted", body = DeleteResponse),
        (status = 400, description = "Invalid key or parameter", body = crate::model::ErrorBody),
        (status = 404, description = "No such key", body = crate::model::ErrorBody),
        (status = 412, description = "`if_revision` did not match", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader or commit timeout", body = crate::model::ErrorBody),
    )
)]
pub async fn delete_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Q(q): Q<DeleteQuery>,
    raw: Raw,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let cmd = Command::Delete {
        key: key.clone(),
        if_revision: q.if_revision,
        now_ms: now_ms(),
    };
    let target = match route::locate(&state, &raw, &key).await? {
        Located::Here(t) => t,
        Located::Relayed(resp) => return Ok(resp),
    };
    let (revision, outcome) = match route::write(&state, &target, &raw, cmd).await? {
        Routed::Relayed(resp) => return Ok(resp),
        Routed::Local(r) => require_outcome(r)?,
    };
    match outcome {
        Outcome::Deleted { count, prev } => Ok(target.tag(
            Json(DeleteResponse {
                revision,
                node_id: state.id,
                deleted: count,
                prev_kv: prev.map(StoredKv::into_api),
                revisions: None,
            })
            .into_response(),
        )),
        Outcome::NotFound => Err(ApiError::KeyNotFound {
            key,
            revision,
            node_id: state.id,
        }),
        Outcome::PreconditionFailed { current } => {
            Err(mismatch(key, q.if_revision, current, revision))
        }
        other => Err(ApiError::Internal(format!(
            "unexpected outcome for delete: {other:?}"
        ))),
    }
}
