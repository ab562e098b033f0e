//! The API error type: every failure a client can see, with its HTTP status,
//! a stable machine-readable `code` and a human message, rendered as
//! `{"error":{"code":"...","message":"...", ...details}}`.

use axum::Json;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::IntoResponse;
use axum::response::Response;
use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use serde_json::Value;
use serde_json::json;

use crate::command::NodeId;
use crate::command::TypeConfig;
use crate::model::KeyValue;
use crate::store::StoreError;

/// Errors at the HTTP API boundary.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("value is {size} bytes; the limit is {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("request body is larger than this server accepts ({limit} bytes)")]
    BodyTooLarge { limit: usize },
    #[error(
        "the answer would hold more than {limit} bytes of keys and values (limits.max_response_bytes); ask for fewer keys"
    )]
    ResponseTooLarge { limit: usize },
    #[error("key not found: {key}")]
    KeyNotFound {
        key: String,
        revision: u64,
        node_id: NodeId,
    },
    #[error("revision mismatch on {key}: expected {expected}, key is at {actual}")]
    RevisionMismatch {
        key: String,
        expected: u64,
        actual: u64,
        current: Option<Box<KeyValue>>,
        revision: u64,
    },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("revision {requested} has been compacted; history starts at revision {oldest}")]
    Gone {
        requested: u64,
        oldest: u64,
        revision: u64,
    },
    #[error(
        "this node is not part of an initialized cluster yet (POST /v1/cluster/init on one node, then add the others)"
    )]
    NotInitialized,
    #[error("no leader is known right now; retry shortly")]
    NoLeader { leader_hint: Option<NodeId> },
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry: bool,
    },
    #[error("{message}")]
    TooMany { code: &'static str, message: String },
    #[error("{0}")]
    Unauthenticated(crate::auth::Unauthenticated),
    #[error("{0}")]
    Forbidden(crate::auth::Forbidden),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::command::Invalid> for ApiError {
    fn from(e: crate::command::Invalid) -> Self {
        let code = match e.code.as_str() {
            "invalid_key" => "invalid_key",
            "key_too_long" => "key_too_long",
            "value_too_large" => "value_too_large",
            "invalid_ttl" => "invalid_ttl",
            "invalid_txn" => "invalid_txn",
            "invalid_parameter" => "invalid_parameter",
            _ => "invalid_command",
        };
        ApiError::bad(code, e.message)
    }
}

impl ApiError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ValueTooLarge { .. }
            | ApiError::BodyTooLarge { .. }
            | ApiError::ResponseTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::KeyNotFound { .. } | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::RevisionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Gone { .. } => StatusCode::GONE,
            ApiError::NotInitialized | ApiError::NoLeader { .. } | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::ValueTooLarge { .. } => "value_too_large",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::ResponseTooLarge { .. } => "response_too_large",
            ApiError::KeyNotFound { .. } => "key_not_found",
            ApiError::RevisionMismatch { .. } => "revision_mismatch",
            ApiError::Conflict { code, .. } => code,
            ApiError::Gone { .. } => "compacted",
            ApiError::NotFound { code, .. } => code,
            ApiError::NotInitialized => "not_initialized",
            ApiError::NoLeader { .. } => "no_leader",
            ApiError::Unavailable { code, .. } => code,
            ApiError::TooMany { code, .. } => code,
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Internal(_) => "internal",
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ApiError::KeyNotFound {
                key,
                revision,
                node_id,
            } => Some(json!({"key": key, "revision": revision, "node_id": node_id})),
            ApiError::RevisionMismatch {
                key,
                expected,
                actual,
                current,
                revision,
            } => Some(json!({
                "key": key, "expected_revision": expected, "actual_revision": actual,
                "current": current, "revision": revision,
            })),
            ApiError::ValueTooLarge { size, limit } => Some(json!({"size": size, "limit": limit})),
            ApiError::ResponseTooLarge { limit } => Some(json!({"limit": limit})),
            ApiError::Gone {
                requested,
                oldest,
                revision,
            } => Some(
                json!({"requested_revision": requested, "oldest_revision": oldest, "revision": revision}),
            ),
            ApiError::NoLeader {
                leader_hint: Some(l),
            } => Some(json!({"leader_hint": l})),
            _ => None,
        }
    }

    fn retry_after(&self) -> bool {
        matches!(
            self,
            ApiError::NoLeader { .. }
                | ApiError::Unavailable { retry: true, .. }
                | ApiError::TooMany { .. }
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code(), error = %self, "request failed");
        }
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let (Some(Value::Object(extra)), Value::Object(obj)) = (self.details(), &mut error) {
            obj.extend(extra);
        }
        let retry = self.retry_after();
        let challenge = match &self {
            ApiError::Unauthenticated(u) => Some(u.challenge()),
            _ => None,
        };
        let mut resp = (status, Json(json!({ "error": error }))).into_response();
        if let Some(c) = challenge {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(c),
            );
        }
        if retry {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => {
                ApiError::Unavailable {
                    code: "storage_unavailable",
                    message: e.to_string(),
                    retry: true,
                }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<Fatal<TypeConfig>> for ApiError {
    fn from(e: Fatal<TypeConfig>) -> Self {
        match e {
            Fatal::Stopped => ApiError::Unavailable {
                code: "shutting_down",
                message: "this node is shutting down".into(),
                retry: true,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Maps membership-change and other write errors that are not "go to the leader".
pub fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ApiError {
    match e {
        RaftError::Fatal(f) => f.into(),
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ApiError::NoLeader { leader_hint: f.leader_id },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => ApiError::Unavailable {
            code: "write_outcome_unknown",
            message: "leadership changed while the write was in flight; it may or may not have been applied \
                      (read the key, or use if_revision, before retrying)"
                .into(),
            retry: false,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(m)) => {
            use openraft::error::ChangeMembershipError as C;
            match m {
                C::InProgress(p) => ApiError::Conflict {
                    code: "membership_change_in_progress",
                    message: format!("another membership change is not yet committed: {p}"),
                },
                C::LearnerNotFound(l) => ApiError::bad("learner_not_found", format!("{l}; add it as a learner first")),
                C::EmptyMembership(e) => ApiError::bad("empty_membership", format!("{e}: a cluster needs at least one voter")),
                other => ApiError::Conflict { code: "membership_change_refused", message: other.to_string() },
            }
        }
        RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => {
            ApiError::Conflict { code: "membership_precondition_failed", message: p.to_string() }
        }
    }
}

/// Maps linearizable-read errors other than "go to the leader".
pub fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> ApiError {
    match e {
        RaftError::Fatal(f) => f.into(),
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => ApiError::NoLeader {
            leader_hint: f.leader_id,
        },
        RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => ApiError::Unavailable {
            code: "no_quorum",
            message: format!(
                "the leader cannot reach a quorum to confirm a linearizable read: {q}"
            ),
            retry: true,
        },
    }
}
