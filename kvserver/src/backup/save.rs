//! Taking a full backup from a running cluster into a file or a destination.
//!
//! The download goes to a temporary file first and is checked there (format,
//! count, checksum, and the checksum the server announced): only a backup that
//! checks out is renamed into place or uploaded, so a connection cut or a node
//! crashing mid-download leaves nothing that looks like a backup.

use std::path::Path;

use tokio::io::AsyncWriteExt;

use super::BackupError;
use super::BackupReader;
use super::BackupSummary;
use super::Destination;
use crate::client::Client;

/// Downloads a full backup into `path` (written whole or not at all).
pub async fn save_to_file(client: &Client, path: &Path) -> Result<BackupSummary, BackupError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.partial", uuid::Uuid::new_v4()));
    let result = download(client, &tmp).await;
    match result {
        Ok(summary) => {
            tokio::fs::rename(&tmp, path).await?;
            if let Ok(d) = tokio::fs::File::open(dir).await {
                let _ = d.sync_all().await;
            }
            Ok(summary)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// Downloads a full backup, checks it, and stores it in `dest` under its
/// standard name; returns the name and the summary. `scratch` holds the
/// download meanwhile.
pub async fn save_to_destination(
    client: &Client,
    dest: &Destination,
    scratch: &Path,
) -> Result<(String, BackupSummary), BackupError> {
    save_labelled(client, dest, scratch, None).await
}

/// [`save_to_destination`] under a labelled name (see [`Destination::labelled_full_name`]).
pub async fn save_labelled(
    client: &Client,
    dest: &Destination,
    scratch: &Path,
    label: Option<&str>,
) -> Result<(String, BackupSummary), BackupError> {
    tokio::fs::create_dir_all(scratch).await?;
    let tmp = scratch.join(format!(".{}.partial", uuid::Uuid::new_v4()));
    let result = async {
        let summary = download(client, &tmp).await?;
        let h = &summary.header;
        let name = match label {
            Some(l) => Destination::labelled_full_name(&h.cluster_id, h.revision, h.taken_at_ms, l),
            None => Destination::full_name(&h.cluster_id, h.revision, h.taken_at_ms),
        };
        upload_file(dest, &tmp, &name).await?;
        Ok((name, summary))
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    result
}

/// Uploads a local file as object `name` (multipart when large; nothing stays
/// behind when it fails).
pub async fn upload_file(dest: &Destination, path: &Path, name: &str) -> Result<(), BackupError> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut w = dest.writer(name);
    let copied = async {
        tokio::io::copy(&mut file, &mut w).await?;
        w.shutdown().await
    }
    .await;
    if let Err(e) = copied {
        let _ = w.abort().await;
        return Err(e.into());
    }
    Ok(())
}

async fn download(client: &Client, tmp: &Path) -> Result<BackupSummary, BackupError> {
    let mut dl = client.backup().await?;
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(tmp).await?);
    while let Some(chunk) = dl.chunk().await? {
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    let file = out.into_inner();
    file.sync_all().await?;
    drop(file);
    let summary = verify_file(tmp).await?;
    if let Some(announced) = &dl.sha256
        && *announced != summary.sha256
    {
        return Err(BackupError::Corrupt {
            what: "backup",
            offset: summary.bytes,
            detail: format!(
                "checksum {} differs from the {announced} the server announced",
                summary.sha256
            ),
        });
    }
    Ok(summary)
}

/// Checks a backup file from end to end.
pub async fn verify_file(path: &Path) -> Result<BackupSummary, BackupError> {
    let file = tokio::fs::File::open(path).await?;
    BackupReader::open(tokio::io::BufReader::with_capacity(1 << 20, file))
        .await?
        .verify()
        .await
}
