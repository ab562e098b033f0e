//! Restore points: the state of a cluster at a chosen revision or time,
//! composed from a full backup and the segments after it, as a backup file a
//! node restores like any other (`restore_from`).
//!
//! The base is the newest full backup at or before the point; the segments
//! must continue from it without a hole up to the point (a missing revision is
//! an error naming the hole, never skipped). A point in time means: every
//! revision whose change was made at or before that time, in revision order,
//! up to the first one made after it. Memory holds only the keys changed
//! between the base and the point; the base streams through in key order.

use std::collections::BTreeMap;

use tokio::io::AsyncWrite;

use super::BackupError;
use super::BackupHeader;
use super::BackupReader;
use super::BackupSummary;
use super::BackupWriter;
use super::Destination;
use super::dest::FullEntry;
use super::segment::Segment;
use crate::record::StoredKv;

/// Where to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// As far as the backups reach.
    Latest,
    /// Exactly this revision.
    Revision(u64),
    /// The last change made at or before this time (unix ms).
    Time(u64),
}

/// The cluster whose backups to use: `wanted`, or the only one in `dest`.
pub async fn pick_cluster(dest: &Destination, wanted: Option<&str>) -> Result<String, BackupError> {
    let all = dest.clusters().await?;
    match wanted {
        Some(w) if all.iter().any(|c| c == w) => Ok(w.to_string()),
        Some(w) => Err(BackupError::NotFound(format!(
            "{dest}: no backups of cluster {w:?} (found: {all:?})"
        ))),
        None => match all.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(BackupError::NotFound(format!("{dest}: no backups"))),
            many => Err(BackupError::NotFound(format!(
                "{dest} holds backups of several clusters {many:?}: choose one"
            ))),
        },
    }
}

/// The full backup a restore to `target` starts from.
fn base_for(fulls: &[FullEntry], target: Target) -> Option<&FullEntry> {
    fulls
        .iter()
        .filter(|f| match target {
            Target::Latest => true,
            Target::Revision(r) => f.revision <= r,
            Target::Time(t) => f.taken_at_ms <= t,
        })
        .max_by_key(|f| (f.revision, f.taken_at_ms))
}

/// Writes the state of `cluster` at `target` into `out` as a backup file.
pub async fn compose<W: AsyncWrite + Unpin>(
    dest: &Destination,
    cluster: &str,
    target: Target,
    out: W,
) -> Result<(W, BackupSummary), BackupError> {
    let fulls = dest.full_backups(cluster).await?;
    let base = base_for(&fulls, target).ok_or_else(|| {
        BackupError::NotFound(format!(
            "{dest}: no full backup of {cluster} at or before {}{}",
            describe(target),
            fulls
                .first()
                .map(|f| format!(" (the oldest is at revision {})", f.revision))
                .unwrap_or_default()
        ))
    })?;
    let mut reader = BackupReader::open(dest.reader(&base.name).await?).await?;
    if reader.partition_count().is_some() {
        // A partitioned cluster has no segments (continuous backup of one is not
        // built yet): its latest point is its latest full backup, as it is.
        if target != Target::Latest {
            return Err(BackupError::NotFound(format!(
                "{}: a partitioned cluster's backup; restoring one to a revision or time is not built yet (no continuous backup): restore the latest, or a named full backup",
                base.name
            )));
        }
        drop(reader);
        let mut out = out;
        tokio::io::copy(&mut dest.reader(&base.name).await?, &mut out).await?;
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        let summary = BackupReader::open(dest.reader(&base.name).await?)
            .await?
            .verify()
            .await?;
        return Ok((out, summary));
    }
    let base_header = reader.header().clone();
    if base_header.cluster_id != cluster {
        return Err(BackupError::Corrupt {
            what: "backup",
            offset: 0,
            detail: format!(
                "{} says it is of cluster {:?}",
                base.name, base_header.cluster_id
            ),
        });
    }
    // Replay the segments after the base into the set of changed keys.
    let segments = dest.segments(cluster).await?;
    let mut at = base_header.revision;
    let mut at_ms = base_header.taken_at_ms;
    let mut changed: BTreeMap<String, Option<StoredKv>> = BTreeMap::new();
    let mut reached = matches!(target, Target::Revision(r) if r == at);
    while !reached {
        let Some(next) = segments
            .iter()
            .filter(|s| s.after <= at && s.upto > at)
            .max_by_key(|s| s.upto)
        else {
            break;
        };
        let seg = Segment::decode(&dest.get(&next.name).await?)
            .await
            .map_err(|e| match e {
                BackupError::Corrupt { offset, detail, .. } => BackupError::Corrupt {
                    what: "segment",
                    offset,
                    detail: format!("{}: {detail}", next.name),
                },
                other => other,
            })?;
        if seg.header.cluster_id != cluster
            || (seg.header.after, seg.header.upto) != (next.after, next.upto)
        {
            return Err(BackupError::Corrupt {
                what: "segment",
                offset: 0,
                detail: format!("{} does not hold what its name says", next.name),
            });
        }
        let from = at;
        for rev in seg.revisions.into_iter().filter(|r| r.revision > from) {
            match target {
                Target::Revision(r) if rev.revision > r => {
                    reached = true;
                    break;
                }
                Target::Time(t) => match rev.at_ms {
                    Some(ms) if ms > t => {
                        reached = true;
                        break;
                    }
                    Some(_) => {}
                    None => {
                        return Err(BackupError::Gap(format!(
                            "revision {} has no recorded time (written by an older release): restore to a revision instead",
                            rev.revision
                        )));
                    }
                },
                _ => {}
            }
            for (key, kv) in rev.changes {
                changed.insert(key, kv);
            }
            at = rev.revision;
            if let Some(ms) = rev.at_ms {
                at_ms = ms;
            }
            if target == Target::Revision(at) {
                reached = true;
                break;
            }
        }
    }
    if !reached {
        check_reach(dest, cluster, target, at, at_ms, &segments).await?;
    }
    // Merge the base (in key order) with the changed keys (in key order).
    let header = BackupHeader {
        cluster_id: cluster.to_string(),
        revision: at,
        taken_at_ms: at_ms,
        writer_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: 0,
    };
    let mut w = BackupWriter::new(out, header).await?;
    let mut pending = changed.into_iter().peekable();
    while let Some(kv) = reader.next_kv().await? {
        while let Some((k, _)) = pending.peek()
            && *k < kv.key
        {
            if let Some((_, Some(v))) = pending.next() {
                w.kv(&v).await?;
            }
        }
        match pending.peek() {
            Some((k, _)) if *k == kv.key => {
                if let Some((_, Some(v))) = pending.next() {
                    w.kv(&v).await?;
                }
            }
            _ => w.kv(&kv).await?,
        }
    }
    for (_, v) in pending {
        if let Some(v) = v {
            w.kv(&v).await?;
        }
    }
    w.finish().await
}

/// The chain ended at `at` before the target: fine for `Latest`, and for a time
/// the backups are known complete for; otherwise a gap, named.
async fn check_reach(
    dest: &Destination,
    cluster: &str,
    target: Target,
    at: u64,
    at_ms: u64,
    segments: &[super::dest::SegmentEntry],
) -> Result<(), BackupError> {
    let hole = || {
        segments
            .iter()
            .filter(|s| s.after > at)
            .map(|s| s.after)
            .min()
            .map(|next| format!(" (revisions {}..={next} are missing)", at + 1))
            .unwrap_or_default()
    };
    match target {
        Target::Latest => Ok(()),
        Target::Revision(r) => Err(BackupError::Gap(format!(
            "the backups of {cluster} reach revision {at}, not {r}{}",
            hole()
        ))),
        Target::Time(t) => {
            let complete = match dest.position(cluster).await? {
                Some(p) if p.upto == at => p.complete_at_ms.unwrap_or(0).max(at_ms),
                _ => at_ms,
            };
            if t <= complete {
                Ok(())
            } else {
                Err(BackupError::Gap(format!(
                    "the backups of {cluster} are known complete up to {} (revision {at}), not up to {}{}",
                    show_ms(complete),
                    show_ms(t),
                    hole()
                )))
            }
        }
    }
}

fn describe(t: Target) -> String {
    match t {
        Target::Latest => "now".into(),
        Target::Revision(r) => format!("revision {r}"),
        Target::Time(ms) => show_ms(ms),
    }
}

/// Unix ms as `<ms> ms since the epoch` plus a UTC rendering when representable.
pub fn show_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
