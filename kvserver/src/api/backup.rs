//! `GET /v1/backup` (admin only): a full backup of the cluster's state at one
//! revision, as a `KVBACKUP` file (`crate::backup::format`).
//!
//! The request is linearizable like a read: every write acknowledged before it
//! is in the backup, whichever member serves it (a follower serves it once it
//! applied the leader's read index, which keeps the load off the leader). The
//! copy is one consistent read, written first to a temporary file beside the
//! snapshots so the read transaction lasts only as long as the local copy (a
//! slow client cannot hold it open), then streamed with its size known. The
//! file is unlinked as soon as it is open, so nothing is left behind whatever
//! happens to the connection. One backup at a time per node: a second request
//! gets 429 `backup_in_progress`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::ApiError;
use super::AppState;
use super::Q;
use super::Raw;
use super::kv::NoParams;
use crate::auth::Access;
use crate::model::Consistency;
use crate::route::Routed;

/// Chunk size of the response body.
const CHUNK: usize = 256 * 1024;

#[utoipa::path(
    get, path = "/v1/backup", tag = "cluster",
    responses(
        (status = 200, description = "The backup file (application/octet-stream); headers `x-kv-revision`, `x-kv-keys`, `x-kv-backup-sha256`", content_type = "application/octet-stream"),
        (status = 401, description = "No credentials", body = crate::model::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::model::ErrorBody),
        (status = 429, description = "Another backup is running on this node (`backup_in_progress`)", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, or linearizability could not be confirmed", body = crate::model::ErrorBody),
    )
)]
pub async fn backup(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let Ok(_running) = state.backup_slot.clone().try_lock_owned() else {
        return Err(ApiError::TooMany {
            code: "backup_in_progress",
            message: "a backup is already being taken on this node; retry when it is done".into(),
        });
    };
    if let Routed::Relayed(resp) = crate::route::read(
        &state,
        &crate::route::unpartitioned(&state)?,
        &raw,
        &[Access::Admin],
        Consistency::Linearizable,
    )
    .await?
    {
        return Ok(resp);
    }
    let started = std::time::Instant::now();
    let tmp = crate::store::snapshot::temp_path(&state.store.snapshot_dir);
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| ApiError::Internal(format!("backup: {e}")))?;
    let out = tokio::io::BufWriter::new(file);
    let written = state
        .store
        .backup_into(out, &state.cluster_id, state.id)
        .await;
    let (out, summary) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
    };
    drop(out);
    let file = tokio::fs::File::open(&tmp).await;
    // Unlinked now: the open handle keeps the bytes until the response is done.
    let _ = tokio::fs::remove_file(&tmp).await;
    let file = file.map_err(|e| ApiError::Internal(format!("backup: {e}")))?;
    state
        .metrics
        .backup_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        principal = %raw.principal.name,
        revision = summary.header.revision,
        keys = summary.keys,
        bytes = summary.bytes,
        "backup taken"
    );
    let body = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed();
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(summary.bytes));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-r{}.kvbak\"",
        state.cluster_id, summary.header.revision
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert("x-kv-revision", HeaderValue::from(summary.header.revision));
    h.insert("x-kv-keys", HeaderValue::from(summary.keys));
    h.insert("x-kv-node-id", HeaderValue::from(state.id));
    if let Ok(v) = HeaderValue::from_str(&summary.sha256) {
        h.insert("x-kv-backup-sha256", v);
    }
    Ok(resp)
}
