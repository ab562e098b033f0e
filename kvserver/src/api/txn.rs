//! `POST /v1/txn`: compare, then apply the `success` or `failure` operations
//! atomically through one Raft entry (one revision for all its writes).
//!
//! The JSON form is flexible (a comparison's operand is a string, a number or
//! a bool depending on its target); it is validated here and turned into the
//! strict [`Condition`] / [`TxnStep`] of the replicated command, with TTLs resolved
//! to absolute expiries on the leader.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;

use super::ApiError;
use super::AppState;
use super::Q;
use super::Raw;
use super::kv::MAX_TTL_SECONDS;
use super::kv::NoParams;
use super::kv::require_outcome;
use super::kv::validate_key;
use crate::command::Command;
use crate::command::Condition;
use crate::command::ConditionOp;
use crate::command::ConditionTarget;
use crate::command::Outcome;
use crate::command::StepResult;
use crate::command::StoredKv;
use crate::command::TxnStep;
use crate::command::now_ms;
use crate::model::Compare;
use crate::model::CompareTarget;
use crate::model::Operation;
use crate::model::OperationResult;
use crate::model::TxnRequest;
use crate::model::TxnResponse;
use crate::route;
use crate::route::Routed;

pub use crate::command::MAX_TXN_ITEMS;

fn bad(msg: String) -> ApiError {
    ApiError::bad("invalid_txn", msg)
}

fn to_cmp(i: usize, c: Compare) -> Result<Condition, ApiError> {
    validate_key(&c.key)?;
    let op = match c.op.as_str() {
        "==" => ConditionOp::Eq,
        "!=" => ConditionOp::Ne,
        "<" => ConditionOp::Lt,
        ">" => ConditionOp::Gt,
        other => {
            return Err(bad(format!(
                "compare[{i}].op: {other:?} is not one of ==, !=, <, >"
            )));
        }
    };
    let num = |v: &serde_json::Value| {
        v.as_u64()
            .ok_or_else(|| bad(format!("compare[{i}].value must be a non-negative integer")))
    };
    let target = match c.target {
        CompareTarget::Value => ConditionTarget::Value(
            c.value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("compare[{i}].value must be a string")))?,
        ),
        CompareTarget::Version => ConditionTarget::Version(num(&c.value)?),
        CompareTarget::CreateRevision => ConditionTarget::CreateRevision(num(&c.value)?),
        CompareTarget::ModRevision => ConditionTarget::ModRevision(num(&c.value)?),
        CompareTarget::Exists => {
            if !matches!(op, ConditionOp::Eq | ConditionOp::Ne) {
                return Err(bad(format!("compare[{i}]: exists takes only == or !=")));
            }
            ConditionTarget::Exists(
                c.value
                    .as_bool()
                    .ok_or_else(|| bad(format!("compare[{i}].value must be true or false")))?,
            )
        }
    };
    Ok(Condition {
        key: c.key,
        op,
        target,
    })
}

fn to_op(
    branch: &str,
    i: usize,
    o: Operation,
    now: u64,
    max_value: usize,
) -> Result<TxnStep, ApiError> {
    Ok(match o {
        Operation::Put {
            key,
            value,
            ttl_seconds,
        } => {
            validate_key(&key)?;
            if value.len() > max_value {
                return Err(ApiError::ValueTooLarge {
                    size: value.len(),
                    limit: max_value,
                });
            }
            let expires_at_ms = match ttl_seconds {
                None => None,
                Some(t) if t == 0 || t > MAX_TTL_SECONDS => {
                    return Err(bad(format!(
                        "{branch}[{i}].ttl_seconds must be between 1 and {MAX_TTL_SECONDS}"
                    )));
                }
                Some(t) => Some(now + t * 1000),
            };
            TxnStep::Put {
                key,
                value,
                expires_at_ms,
            }
        }
        Operation::Delete { key } => {
            validate_key(&key)?;
            TxnStep::Delete { key }
        }
        Operation::Get { key } => {
            validate_key(&key)?;
            TxnStep::Get { key }
        }
    })
}

/// Turns a validated request into the replicated command.
pub fn to_command(req: TxnRequest, now: u64, max_value: usize) -> Result<Command, ApiError> {
    for (name, n) in [
        ("compare", req.compare.len()),
        ("success", req.success.len()),
        ("failure", req.failure.len()),
    ] {
        if n > MAX_TXN_ITEMS {
            return Err(bad(format!(
                "{name} has {n} items; the limit is {MAX_TXN_ITEMS}"
            )));
        }
    }
    let compare = req
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| to_cmp(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    let success = req
        .success
        .into_iter()
        .enumerate()
        .map(|(i, o)| to_op("success", i, o, now, max_value))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = req
        .failure
        .into_iter()
        .enumerate()
        .map(|(i, o)| to_op("failure", i, o, now, max_value))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command::Txn {
        compare,
        success,
        failure,
        now_ms: now,
    })
}

/// `POST /v1/txn`.
#[utoipa::path(
    post, path = "/v1/txn", tag = "kv",
    request_body = TxnRequest,
    responses(
        (status = 200, description = "The transaction ran; `succeeded` says which branch", body = TxnResponse),
        (status = 400, description = "Invalid transaction", body = crate::model::ErrorBody),
        (status = 413, description = "A value is over the limit", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader, or outcome unknown", body = crate::model::ErrorBody),
    )
)]
pub async fn txn(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let req: TxnRequest = raw.json()?;
    let cmd = to_command(req, now_ms(), state.config.max_value_bytes)?;
    let mut keys = Vec::new();
    if let Command::Txn {
        compare,
        success,
        failure,
        ..
    } = &cmd
    {
        keys.extend(compare.iter().map(|c| c.key.as_str()));
        keys.extend(success.iter().chain(failure).map(|s| match s {
            TxnStep::Put { key, .. } | TxnStep::Delete { key } | TxnStep::Get { key } => {
                key.as_str()
            }
        }));
    }
    let target = match route::target::locate_keys(&state, &raw, &keys).await? {
        route::Located::Here(t) => t,
        route::Located::Relayed(resp) => return Ok(resp),
    };
    let (revision, outcome) = match route::write(&state, &target, &raw, cmd).await? {
        Routed::Relayed(resp) => return Ok(resp),
        Routed::Local(r) => require_outcome(r)?,
    };
    let Outcome::Txn { succeeded, results } = outcome else {
        return Err(ApiError::Internal(format!(
            "unexpected outcome for txn: {outcome:?}"
        )));
    };
    let results = results
        .into_iter()
        .map(|r| match r {
            StepResult::Put { created, kv, prev } => OperationResult::Put {
                created,
                kv: kv.into_api(),
                prev_kv: prev.map(StoredKv::into_api),
            },
            StepResult::Delete { deleted, prev } => OperationResult::Delete {
                deleted,
                prev_kv: prev.map(StoredKv::into_api),
            },
            StepResult::Get { kv } => OperationResult::Get {
                kv: kv.map(StoredKv::into_api),
            },
        })
        .collect();
    Ok(target.tag(
        Json(TxnResponse {
            revision,
            node_id: state.id,
            succeeded,
            results,
        })
        .into_response(),
    ))
}
