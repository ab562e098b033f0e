//! Continuous backup: follows a cluster's watch feed and ships every committed
//! change, in order, to a destination as segments.
//!
//! Why the watch feed and not a hook in the leader: the feed already delivers
//! every revision in order, exactly once, resumable from any revision on any
//! member (`from_revision`, 410 once compacted), so leader changes need no
//! hand-over and a follower can serve it; and the process that ships segments
//! is the one that holds the destination (a ReadWriteOnce volume can be mounted
//! by one pod only, and object-storage credentials stay out of the members).
//!
//! Where it starts: after the last segment stored for the cluster; with none,
//! after the newest full backup; with neither, it takes a full backup first
//! (a chain needs a base). Revisions are buffered whole (a transaction's
//! events are one revision) and flushed as one segment every
//! `flush_interval` or `max_segment_bytes`, so what can be lost is bounded by
//! the interval (the RPO). After a crash it resumes from the stored segments:
//! nothing is shipped twice and nothing skipped. If the cluster compacted the
//! history it needs (it was down too long), the gap cannot be filled: it says
//! so, takes a new full backup and continues from there; restores into the
//! gap are refused by [`super::point`].

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use futures_util::StreamExt;

use super::BackupError;
use super::Destination;
use super::dest::Position;
use super::segment::Revision;
use super::segment::Segment;
use super::segment::SegmentHeader;
use crate::client::Client;
use crate::model::ListQuery;
use crate::record::StoredKv;

/// Settings of continuous backup.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Changes are shipped at least this often (the recovery point objective).
    pub flush_interval: Duration,
    /// A segment is shipped early once its changes reach this size.
    pub max_segment_bytes: usize,
    /// Where full backups are downloaded before upload.
    pub scratch: PathBuf,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(2),
            max_segment_bytes: 8 << 20,
            scratch: std::env::temp_dir(),
        }
    }
}

/// What continuous backup has done so far (published after every step).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FollowStatus {
    pub cluster_id: String,
    /// Every revision up to this one is stored.
    pub shipped: u64,
    /// Unix ms of the last successful upload (segment or position).
    pub shipped_at_ms: u64,
    /// Segments stored by this run.
    pub segments: u64,
    /// Times the chain had to restart from a new full backup (compacted history).
    pub rebases: u64,
    /// Consecutive failures (0 when the last step worked).
    pub failures: u64,
    pub last_error: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Follows `client`'s cluster into `dest` until `stop` turns true; publishes
/// progress on `status`. Transient failures are retried with backoff forever;
/// only a destination or cluster that refuses outright ends it with an error.
pub async fn follow(
    client: Client,
    dest: Destination,
    opts: FollowOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
    status: tokio::sync::watch::Sender<FollowStatus>,
) -> Result<(), BackupError> {
    let cluster = client.cluster().await?.cluster_id;
    let partitions = client.partitions().await?.partitions;
    if partitions > 1 {
        // Its segments would need one position per partition (issue 21).
        return Err(BackupError::NotFound(format!(
            "cluster {cluster} has {partitions} partitions: continuous backup (point-in-time restore) of a partitioned cluster is not built yet; take full backups"
        )));
    }
    let mut st = FollowStatus {
        cluster_id: cluster.clone(),
        ..Default::default()
    };
    let mut shipped = resume_point(&client, &dest, &cluster, &opts, &mut st).await?;
    st.shipped = shipped;
    status.send_replace(st.clone());
    tracing::info!(cluster = %cluster, after = shipped, dest = %dest, "continuous backup started");
    let mut buffer: Vec<Revision> = Vec::new();
    let mut buffered_bytes = 0usize;
    let mut first_buffered: Option<Instant> = None;
    let mut last_quiet_check = Instant::now();
    let mut backoff = Duration::from_millis(200);
    'outer: loop {
        // Resume after the last whole revision received (shipped or buffered).
        let from = buffer.last().map(|r| r.revision).unwrap_or(shipped);
        // The new stream delivers revision `from + 1` from its first event.
        let mut partial: Option<Revision> = None;
        let mut stream = Box::pin(client.watch_revisions("", Some(from)));
        let mut tick = tokio::time::interval(opts.flush_interval / 2);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    if *stop.borrow() {
                        // Ship what is whole before stopping.
                        let _ = flush(&dest, &cluster, &mut shipped, &mut buffer, &mut st).await;
                        status.send_replace(st.clone());
                        return Ok(());
                    }
                }
                item = stream.next() => {
                    match item {
                        Some(Ok((ev, completes))) => {
                            backoff = Duration::from_millis(200);
                            let rev = partial.get_or_insert_with(|| Revision {
                                revision: ev.revision,
                                at_ms: ev.time_ms,
                                changes: Vec::new(),
                            });
                            if rev.revision != ev.revision {
                                // The feed skipped the rest of a revision: never expected.
                                tracing::error!(had = rev.revision, got = ev.revision, "watch feed split a revision; resuming");
                                continue 'outer;
                            }
                            buffered_bytes += ev.key.len()
                                + ev.kv.as_ref().and_then(|k| k.value.as_ref()).map_or(0, String::len);
                            let kv = ev.kv.map(StoredKv::from_api);
                            rev.changes.push((ev.key, kv));
                            if completes && let Some(done) = partial.take() {
                                buffer.push(done);
                                first_buffered.get_or_insert_with(Instant::now);
                            }
                            if buffered_bytes >= opts.max_segment_bytes {
                                step(flush(&dest, &cluster, &mut shipped, &mut buffer, &mut st).await, &mut st, &status);
                                buffered_bytes = 0;
                                first_buffered = None;
                            }
                        }
                        Some(Err(e)) if e.status() == Some(410) => {
                            // History is gone: nothing can fill the gap. Ship what we have and
                            // rebase on a new full backup.
                            step(flush(&dest, &cluster, &mut shipped, &mut buffer, &mut st).await, &mut st, &status);
                            tracing::error!(after = shipped, error = %e, "continuous backup lost its place (history compacted): revisions after it cannot be restored to; taking a new full backup");
                            match super::save::save_to_destination(&client, &dest, &opts.scratch).await {
                                Ok((name, s)) => {
                                    tracing::info!(name, revision = s.header.revision, "new base for continuous backup");
                                    shipped = s.header.revision;
                                    st.shipped = shipped;
                                    st.rebases += 1;
                                    buffer.clear();
                                    buffered_bytes = 0;
                                    step(Ok(()), &mut st, &status);
                                }
                                Err(e) => {
                                    step(Err(e), &mut st, &status);
                                    tokio::time::sleep(backoff).await;
                                    backoff = (backoff * 2).min(Duration::from_secs(10));
                                }
                            }
                            continue 'outer;
                        }
                        Some(Err(e)) => {
                            step(Err(e.into()), &mut st, &status);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                            continue 'outer;
                        }
                        None => continue 'outer,
                    }
                }
                _ = tick.tick() => {
                    if first_buffered.is_some_and(|t| t.elapsed() >= opts.flush_interval) {
                        step(flush(&dest, &cluster, &mut shipped, &mut buffer, &mut st).await, &mut st, &status);
                        buffered_bytes = 0;
                        first_buffered = None;
                    } else if buffer.is_empty() && partial.is_none()
                        && last_quiet_check.elapsed() >= opts.flush_interval
                    {
                        last_quiet_check = Instant::now();
                        step(mark_quiet(&client, &dest, &cluster, shipped, &mut st).await, &mut st, &status);
                    }
                }
            }
        }
    }
}

/// Records the outcome of one step in the status.
fn step(
    r: Result<(), BackupError>,
    st: &mut FollowStatus,
    status: &tokio::sync::watch::Sender<FollowStatus>,
) {
    match r {
        Ok(()) => {
            st.failures = 0;
            st.last_error = None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "continuous backup step failed; retrying");
            st.failures += 1;
            st.last_error = Some(e.to_string());
        }
    }
    status.send_replace(st.clone());
}

/// Where the chain continues: after the last segment, else the newest full backup,
/// else a full backup taken now.
async fn resume_point(
    client: &Client,
    dest: &Destination,
    cluster: &str,
    opts: &FollowOptions,
    st: &mut FollowStatus,
) -> Result<u64, BackupError> {
    let last_segment = dest.segments(cluster).await?.last().map(|s| s.upto);
    let last_full = dest.full_backups(cluster).await?.last().map(|f| f.revision);
    if let Some(upto) = last_segment.max(last_full) {
        return Ok(upto);
    }
    let (name, s) = super::save::save_to_destination(client, dest, &opts.scratch).await?;
    tracing::info!(
        name,
        revision = s.header.revision,
        "continuous backup: took the first full backup as its base"
    );
    st.rebases += 1;
    Ok(s.header.revision)
}

/// Ships the buffered revisions as one segment.
async fn flush(
    dest: &Destination,
    cluster: &str,
    shipped: &mut u64,
    buffer: &mut Vec<Revision>,
    st: &mut FollowStatus,
) -> Result<(), BackupError> {
    let Some(last) = buffer.last() else {
        return Ok(());
    };
    let upto = last.revision;
    let upto_at_ms = last.at_ms;
    let seg = Segment {
        header: SegmentHeader {
            cluster_id: cluster.to_string(),
            after: *shipped,
            upto,
            writer_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        revisions: std::mem::take(buffer),
    };
    let bytes = match seg.encode().await {
        Ok(b) => b,
        Err(e) => {
            *buffer = seg.revisions;
            return Err(e);
        }
    };
    if let Err(e) = dest
        .put(&Destination::segment_name(cluster, *shipped, upto), bytes)
        .await
    {
        *buffer = seg.revisions;
        return Err(e);
    }
    *shipped = upto;
    st.shipped = upto;
    st.segments += 1;
    st.shipped_at_ms = now_ms();
    // Advisory: the segments themselves are the record; a failed position write
    // only makes restores to the most recent seconds wait for the next one.
    let _ = dest
        .set_position(
            cluster,
            &Position {
                upto,
                upto_at_ms,
                complete_at_ms: None,
            },
        )
        .await;
    Ok(())
}

/// With nothing buffered: if the cluster is still at the shipped revision (a
/// linearizable read), everything up to now is backed up; record that.
async fn mark_quiet(
    client: &Client,
    dest: &Destination,
    cluster: &str,
    shipped: u64,
    st: &mut FollowStatus,
) -> Result<(), BackupError> {
    // Taken before the read: the read proves nothing newer existed at this moment.
    let checked_at = now_ms();
    let current = client
        .list(&ListQuery {
            prefix: String::new(),
            limit: Some(1),
            keys_only: true,
            ..Default::default()
        })
        .await
        .map_err(BackupError::from)?
        .revision;
    if current != shipped {
        return Ok(());
    }
    let mut p = dest.position(cluster).await?.unwrap_or_default();
    if p.upto != shipped {
        p = Position {
            upto: shipped,
            upto_at_ms: None,
            complete_at_ms: None,
        };
    }
    p.complete_at_ms = Some(checked_at);
    dest.set_position(cluster, &p).await?;
    st.shipped_at_ms = now_ms();
    Ok(())
}
