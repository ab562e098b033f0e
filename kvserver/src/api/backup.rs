//! `GET /v1/backup` (admin only): a full backup of the cluster's state, as a
//! `KVBACKUP` file (`crate::backup::format`).
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
//!
//! A partitioned cluster's backup holds every partition (format 2): the node
//! takes each partition's copy, here if it hosts the partition, else from a
//! host (`partition=<p>`, relayed with the client's credential and streamed
//! to a temporary file), one partition after the other, and writes them into
//! one file. Each partition's copy is linearizable and at its own revision;
//! the copies are not one snapshot across partitions (no request is).

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use super::AppState;
use super::Q;
use super::Raw;
use crate::auth::Access;
use crate::backup::BackupHeader;
use crate::backup::BackupReader;
use crate::backup::BackupSummary;
use crate::backup::BackupWriter;
use crate::model::BackupQuery;
use crate::model::Consistency;
use crate::placement::PartitionId;
use crate::placement::map::PlacementMap;
use crate::route::Routed;
use crate::route::Target;
use crate::route::fanout::Whole as Scope;

/// Chunk size of the response body.
const CHUNK: usize = 256 * 1024;

#[utoipa::path(
    get, path = "/v1/backup", tag = "cluster",
    params(BackupQuery),
    responses(
        (status = 200, description = "The backup file (application/octet-stream); headers `x-kv-revision`, `x-kv-keys`, `x-kv-backup-sha256`, and for a partitioned cluster `x-kv-partitions`", content_type = "application/octet-stream"),
        (status = 400, description = "Invalid parameter", body = crate::model::ErrorBody),
        (status = 401, description = "No credentials", body = crate::model::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::model::ErrorBody),
        (status = 429, description = "Another backup is running on this node (`backup_in_progress`)", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, linearizability could not be confirmed, or a partition has no reachable host", body = crate::model::ErrorBody),
    )
)]
pub async fn backup(
    State(state): State<AppState>,
    Q(q): Q<BackupQuery>,
    raw: Raw,
) -> Result<Response, ApiError> {
    crate::route::authorize(&state, &raw.principal, &[Access::Admin])?;
    let Ok(_running) = state.backup_slot.clone().try_lock_owned() else {
        return Err(ApiError::TooMany {
            code: "backup_in_progress",
            message: "a backup is already being taken on this node; retry when it is done".into(),
        });
    };
    let started = std::time::Instant::now();
    let (file, summary) = match crate::route::fanout::whole(&state, &raw, q.partition)? {
        Scope::Group(target) => match take(&state, &target, &raw).await? {
            Ok(done) => done,
            Err(relayed) => return Ok(relayed),
        },
        Scope::Relay(p, map) => return relay_partition(&state, &raw, &map, p).await,
        Scope::All(map) => compose(&state, &raw, &map).await?,
    };
    state
        .metrics
        .backup_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        principal = %raw.principal.name,
        revision = summary.header.revision,
        keys = summary.keys,
        bytes = summary.bytes,
        partitions = summary.partitions.as_ref().map(|p| p.len()),
        "backup taken"
    );
    Ok(respond(&state, file, &summary))
}

/// A temporary file beside `target`'s snapshots, removed when dropped unless
/// opened and unlinked before.
struct Temp(std::path::PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Opens `tmp` for reading and unlinks it: the open handle keeps the bytes.
async fn open_unlinked(tmp: Temp) -> Result<tokio::fs::File, ApiError> {
    let file = tokio::fs::File::open(&tmp.0).await;
    drop(tmp);
    file.map_err(|e| ApiError::Internal(format!("backup: {e}")))
}

/// `target`'s copy, after a linearizable barrier, as an open (unlinked) file
/// (or the leader's answer, when the barrier is the leader's to give).
async fn take(
    state: &AppState,
    target: &Target,
    raw: &Raw,
) -> Result<Result<(tokio::fs::File, BackupSummary), Response>, ApiError> {
    let tmp = Temp(crate::store::snapshot::temp_path(
        &target.store.snapshot_dir,
    ));
    Ok(match take_into(state, target, raw, &tmp).await? {
        Ok(summary) => Ok((open_unlinked(tmp).await?, summary)),
        Err(relayed) => Err(relayed),
    })
}

/// [`take`], into the file at `tmp`.
async fn take_into(
    state: &AppState,
    target: &Target,
    raw: &Raw,
    tmp: &Temp,
) -> Result<Result<BackupSummary, Response>, ApiError> {
    if let Routed::Relayed(resp) = crate::route::read(
        state,
        target,
        raw,
        &[Access::Admin],
        Consistency::Linearizable,
    )
    .await?
    {
        return Ok(Err(resp));
    }
    let file = tokio::fs::File::create(&tmp.0).await.map_err(io)?;
    let out = tokio::io::BufWriter::new(file);
    let (out, summary) = target
        .store
        .backup_into(out, &state.cluster_id, state.id)
        .await?;
    drop(out);
    Ok(Ok(summary))
}

/// Partition `p`'s backup, from a node that hosts it, streamed through.
async fn relay_partition(
    state: &AppState,
    raw: &Raw,
    map: &PlacementMap,
    p: PartitionId,
) -> Result<Response, ApiError> {
    let resp = fetch(state, raw, map, p).await?;
    let status = resp.status();
    let mut out = axum::http::Response::builder().status(status);
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_DISPOSITION,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out = out.header(name, v.clone());
        }
    }
    for name in [
        "x-kv-revision",
        "x-kv-keys",
        "x-kv-node-id",
        "x-kv-backup-sha256",
        crate::route::target::PARTITION,
    ] {
        if let Some(v) = resp.headers().get(name) {
            out = out.header(name, v.clone());
        }
    }
    let body = futures_util::stream::unfold(Some(resp), |resp| async move {
        let mut resp = resp?;
        match resp.chunk().await {
            Ok(Some(b)) => Some((Ok(b), Some(resp))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    out.body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(format!("backup: {e}")))
}

/// Opens partition `p`'s backup on a host, the first that answers.
async fn fetch(
    state: &AppState,
    raw: &Raw,
    map: &PlacementMap,
    p: PartitionId,
) -> Result<reqwest::Response, ApiError> {
    let hosts: Vec<u64> = map.of(p).map(|a| a.hosts.clone()).unwrap_or_default();
    let path = format!("/v1/backup?partition={p}");
    let mut last = None;
    for host in hosts.iter().filter(|h| **h != state.id) {
        match crate::route::leader::relay_stream(state, raw, *host, &path, None).await {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                last = Some(ApiError::Unavailable {
                    code: "partition_unavailable",
                    message: format!(
                        "partition {p}'s host {host} answered {status} to the backup: {body}"
                    ),
                    retry: true,
                });
            }
            Err(e @ ApiError::NoLeader { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(ApiError::Unavailable {
        code: "no_host",
        message: format!("no node hosting partition {p} is reachable"),
        retry: true,
    }))
}

/// Every partition's copy, in one partitioned backup. The copies are taken
/// first (each into a temporary file, none held open), so the header can say
/// the highest revision.
async fn compose(
    state: &AppState,
    raw: &Raw,
    map: &PlacementMap,
) -> Result<(tokio::fs::File, BackupSummary), ApiError> {
    let mut parts = Vec::with_capacity(map.partitions as usize);
    for p in 0..map.partitions {
        parts.push(partition_copy(state, raw, map, p).await?);
    }
    let highest = parts.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let out_tmp = Temp(crate::store::snapshot::temp_path(&state.store.snapshot_dir));
    let out = tokio::io::BufWriter::new(tokio::fs::File::create(&out_tmp.0).await.map_err(io)?);
    let header = BackupHeader {
        cluster_id: state.cluster_id.clone(),
        revision: highest,
        taken_at_ms: crate::command::now_ms(),
        writer_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: state.id,
    };
    let mut w = BackupWriter::partitioned(out, header, map.partitions)
        .await
        .map_err(failed)?;
    for (p, (part, revision)) in parts.into_iter().enumerate() {
        let file = open_unlinked(part).await?;
        let mut r = BackupReader::open(tokio::io::BufReader::new(file))
            .await
            .map_err(failed)?;
        w.partition(p as PartitionId, revision)
            .await
            .map_err(failed)?;
        while let Some(kv) = r.next_kv().await.map_err(failed)? {
            w.kv(&kv).await.map_err(failed)?;
        }
    }
    let (mut out, summary) = w.finish().await.map_err(failed)?;
    out.flush().await.map_err(io)?;
    drop(out);
    Ok((open_unlinked(out_tmp).await?, summary))
}

/// A partition's copy that did not read back, or the backup that could not be
/// written: the client may try again.
fn failed(e: crate::backup::BackupError) -> ApiError {
    ApiError::Unavailable {
        code: "backup_failed",
        message: format!("composing the backup failed: {e}"),
        retry: true,
    }
}

fn io(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("backup: {e}"))
}

/// Partition `p`'s copy, in a temporary file, and its revision: taken here
/// when this node hosts it, else downloaded from a host.
async fn partition_copy(
    state: &AppState,
    raw: &Raw,
    map: &PlacementMap,
    p: PartitionId,
) -> Result<(Temp, u64), ApiError> {
    let sub = Raw {
        method: raw.method.clone(),
        path_and_query: format!("/v1/backup?partition={p}"),
        headers: raw.headers.clone(),
        body: raw.body.clone(),
        principal: raw.principal.clone(),
    };
    let tmp = Temp(crate::store::snapshot::temp_path(&state.store.snapshot_dir));
    let target = crate::route::target::here(state, &sub, map, p);
    let relayed = match &target {
        Some(target) => match take_into(state, target, &sub, &tmp).await? {
            Ok(summary) => return Ok((tmp, summary.header.revision)),
            Err(relayed) => Some(relayed),
        },
        None => None,
    };
    let mut file = tokio::fs::File::create(&tmp.0).await.map_err(io)?;
    match relayed {
        // The group's leader answered (the barrier was its to give): its answer
        // is the copy.
        Some(relayed) if relayed.status().is_success() => {
            let bytes = axum::body::to_bytes(relayed.into_body(), usize::MAX)
                .await
                .map_err(io)?;
            file.write_all(&bytes).await.map_err(io)?;
        }
        Some(relayed) => {
            return Err(ApiError::Unavailable {
                code: "partition_unavailable",
                message: format!(
                    "partition {p}'s leader answered {} to the backup",
                    relayed.status()
                ),
                retry: true,
            });
        }
        None => {
            let mut resp = fetch(state, raw, map, p).await?;
            while let Some(chunk) = resp.chunk().await.map_err(|e| ApiError::Unavailable {
                code: "partition_unavailable",
                message: format!("partition {p}'s backup was cut: {e}"),
                retry: true,
            })? {
                file.write_all(&chunk).await.map_err(io)?;
            }
        }
    }
    file.flush().await.map_err(io)?;
    drop(file);
    let r = BackupReader::open(tokio::io::BufReader::new(
        tokio::fs::File::open(&tmp.0).await.map_err(io)?,
    ))
    .await
    .map_err(failed)?;
    if r.partition_count().is_some() {
        return Err(ApiError::Internal(format!(
            "partition {p}'s copy is itself partitioned"
        )));
    }
    let revision = r.header().revision;
    Ok((tmp, revision))
}

/// The backup in `file` as the answer.
fn respond(state: &AppState, file: tokio::fs::File, summary: &BackupSummary) -> Response {
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
    if let Some(p) = &summary.partitions {
        h.insert("x-kv-partitions", HeaderValue::from(p.len()));
    }
    if let Ok(v) = HeaderValue::from_str(&summary.sha256) {
        h.insert("x-kv-backup-sha256", v);
    }
    resp
}
