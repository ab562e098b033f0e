//! `kvctl backup ...`: full backups to a file or a destination, checking and
//! inspecting backup files, continuous backup, listing what a destination
//! holds, and composing a restore point (the state at a revision or time) that
//! `kvserver --restore-from` turns into a new cluster. Output is one JSON
//! object per line; a failed check exits non-zero with the reason.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kvserver::backup::Destination;
use kvserver::backup::dest::S3Options;
use kvserver::backup::follow::FollowOptions;
use kvserver::backup::point::Target;
use kvserver::client::Client;
use serde_json::json;

/// Where backups are kept.
#[derive(clap::Args, Debug, Clone)]
pub struct DestOpts {
    /// A directory (e.g. a mounted volume) or `s3://bucket/prefix`. S3 credentials come
    /// from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long = "dest", env = "KV_BACKUP_DEST")]
    pub url: String,
    /// Endpoint of an S3-compatible service (`http(s)://host:port`); unset = AWS.
    #[arg(long, env = "KV_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default us-east-1).
    #[arg(long, env = "KV_S3_REGION")]
    pub s3_region: Option<String>,
}

impl DestOpts {
    pub fn open(&self) -> anyhow::Result<Destination> {
        Ok(Destination::open(
            &self.url,
            &S3Options {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                credentials: None,
            },
        )?)
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum BackupCmd {
    /// Take a full backup of the cluster into FILE or, with --dest, into a destination.
    Save {
        /// Output file (written whole or not at all).
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        file: Option<PathBuf>,
        #[command(flatten)]
        dest: Option<DestOpts>,
        /// Scratch directory for the download before upload (with --dest).
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        scratch: PathBuf,
    },
    /// Check a backup file from end to end (format, count, checksum).
    Verify { file: PathBuf },
    /// Show what a backup file says about itself, and whether it checks out.
    Inspect { file: PathBuf },
    /// Follow the cluster and ship every change to the destination (point-in-time
    /// restore); runs until interrupted.
    Continuous {
        #[command(flatten)]
        dest: DestOpts,
        /// Ship changes at least this often (the recovery point objective).
        #[arg(long, default_value_t = 2000)]
        flush_interval_ms: u64,
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        scratch: PathBuf,
    },
    /// List full backups and continuous-backup coverage in a destination.
    List {
        #[command(flatten)]
        dest: DestOpts,
        /// Only this cluster id (default: every cluster in the destination).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Copy one backup object out of a destination into a file, checked end to end.
    Fetch {
        #[command(flatten)]
        dest: DestOpts,
        /// The object's name in the destination (`<cluster>/full/...kvbak`).
        #[arg(long)]
        object: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Delete full backups beyond the newest --keep or older than --max-age (never the
    /// newest, never labelled ones), and the segments only they could use.
    Prune {
        #[command(flatten)]
        dest: DestOpts,
        #[arg(long)]
        cluster: Option<String>,
        /// Keep at most this many full backups (0 = no count limit).
        #[arg(long, default_value_t = 7)]
        keep: u32,
        /// Delete full backups older than this (e.g. 36h, 30d).
        #[arg(long)]
        max_age: Option<String>,
        /// Say what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Compose the state at a revision or time into a backup file, from the newest full
    /// backup before it plus continuous-backup segments; refuses any gap.
    RestorePoint {
        #[command(flatten)]
        dest: DestOpts,
        /// The cluster id whose backups to use (default: the only one there).
        #[arg(long)]
        cluster: Option<String>,
        /// Stop at exactly this revision.
        #[arg(long, conflicts_with = "to_time_ms")]
        to_revision: Option<u64>,
        /// Stop at the last change made at or before this time (unix ms).
        #[arg(long)]
        to_time_ms: Option<u64>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn run(client: Client, cmd: BackupCmd) -> anyhow::Result<bool> {
    match cmd {
        BackupCmd::Save {
            file,
            dest,
            scratch,
        } => {
            let started = std::time::Instant::now();
            let (location, s) = match (file, dest) {
                (Some(f), _) => {
                    let s = kvserver::backup::save::save_to_file(&client, &f).await?;
                    (f.display().to_string(), s)
                }
                (None, Some(d)) => {
                    let dest = d.open()?;
                    let (name, s) =
                        kvserver::backup::save::save_to_destination(&client, &dest, &scratch)
                            .await?;
                    (format!("{dest}/{name}"), s)
                }
                (None, None) => anyhow::bail!("give a FILE or --dest"),
            };
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"kind": "backup", "location": location, "summary": s,
                       "seconds": secs, "mib_per_s": s.bytes as f64 / 1048576.0 / secs.max(1e-6)})
            );
            Ok(true)
        }
        BackupCmd::Verify { file } => match kvserver::backup::save::verify_file(&file).await {
            Ok(s) => {
                println!("{}", json!({"kind": "verify", "ok": true, "summary": s}));
                Ok(true)
            }
            Err(e) => {
                println!(
                    "{}",
                    json!({"kind": "verify", "ok": false, "file": file, "error": e.to_string()})
                );
                Ok(false)
            }
        },
        BackupCmd::Inspect { file } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let header = kvserver::backup::BackupReader::open(tokio::io::BufReader::new(f))
                .await
                .map(|r| r.header().clone());
            let checked = kvserver::backup::save::verify_file(&file).await;
            let ok = checked.is_ok();
            println!(
                "{}",
                json!({
                    "kind": "inspect",
                    "file": file,
                    "header": header.as_ref().ok(),
                    "taken_at": header.as_ref().ok().map(|h| kvserver::backup::point::show_ms(h.taken_at_ms)),
                    "ok": ok,
                    "keys": checked.as_ref().ok().map(|s| s.keys),
                    "bytes": checked.as_ref().ok().map(|s| s.bytes),
                    "sha256": checked.as_ref().ok().map(|s| s.sha256.clone()),
                    "error": checked.err().map(|e| e.to_string()),
                })
            );
            Ok(ok)
        }
        BackupCmd::Continuous {
            dest,
            flush_interval_ms,
            scratch,
        } => {
            let dest = dest.open()?;
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let (status, mut seen) =
                tokio::sync::watch::channel(kvserver::backup::follow::FollowStatus::default());
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = stop_tx.send(true);
            });
            tokio::spawn(async move {
                // One line per change of what was shipped or of the failure count, not
                // per quiet check.
                let mut shown = (u64::MAX, u64::MAX);
                while seen.changed().await.is_ok() {
                    let s = seen.borrow_and_update().clone();
                    if (s.shipped, s.failures) != shown {
                        shown = (s.shipped, s.failures);
                        println!("{}", json!({"kind": "continuous", "status": s}));
                    }
                }
            });
            kvserver::backup::follow::follow(
                client,
                dest,
                FollowOptions {
                    flush_interval: Duration::from_millis(flush_interval_ms.max(100)),
                    scratch,
                    ..Default::default()
                },
                stop,
                status,
            )
            .await?;
            Ok(true)
        }
        BackupCmd::List { dest, cluster } => {
            let dest = dest.open()?;
            let clusters = match cluster {
                Some(c) => vec![c],
                None => dest.clusters().await?,
            };
            for c in clusters {
                let fulls = dest.full_backups(&c).await?;
                let segments = dest.segments(&c).await?;
                let position = dest.position(&c).await?;
                println!(
                    "{}",
                    json!({
                        "kind": "backups",
                        "cluster": c,
                        "full": fulls.iter().map(|f| json!({"name": f.name, "revision": f.revision,
                            "taken_at": kvserver::backup::point::show_ms(f.taken_at_ms), "bytes": f.size})).collect::<Vec<_>>(),
                        "segments": segments.len(),
                        "segments_from": segments.first().map(|s| s.after),
                        "segments_upto": segments.last().map(|s| s.upto),
                        "position": position,
                    })
                );
            }
            Ok(true)
        }
        BackupCmd::Fetch { dest, object, out } => {
            let dest = dest.open()?;
            let tmp = out.with_extension("partial");
            let fetched = async {
                let mut r = dest.reader(&object).await?;
                let mut f = tokio::fs::File::create(&tmp).await?;
                tokio::io::copy(&mut r, &mut f).await?;
                f.sync_all().await?;
                kvserver::backup::save::verify_file(&tmp).await
            }
            .await;
            match fetched {
                Ok(s) => {
                    tokio::fs::rename(&tmp, &out).await?;
                    println!("{}", json!({"kind": "fetch", "file": out, "summary": s}));
                    Ok(true)
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    println!(
                        "{}",
                        json!({"kind": "fetch", "ok": false, "error": e.to_string()})
                    );
                    Ok(false)
                }
            }
        }
        BackupCmd::Prune {
            dest,
            cluster,
            keep,
            max_age,
            dry_run,
        } => {
            let dest = dest.open()?;
            let cluster = kvserver::backup::point::pick_cluster(&dest, cluster.as_deref()).await?;
            let max_age_ms = max_age
                .as_deref()
                .map(kvserver::backup::retention::parse_age)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--max-age {e}"))?;
            let plan = kvserver::backup::retention::plan(
                &dest.full_backups(&cluster).await?,
                &dest.segments(&cluster).await?,
                kvserver::backup::retention::Retention { keep, max_age_ms },
                now_ms(),
            );
            if !dry_run {
                // Segments first: a crash in between leaves only backups that still
                // restore (old bases with fewer segments after them).
                for name in plan.segments.iter().chain(&plan.full) {
                    dest.delete(name).await?;
                }
            }
            println!(
                "{}",
                json!({"kind": "prune", "cluster": cluster, "dry_run": dry_run,
                       "full": plan.full, "segments": plan.segments.len()})
            );
            Ok(true)
        }
        BackupCmd::RestorePoint {
            dest,
            cluster,
            to_revision,
            to_time_ms,
            out,
        } => {
            let dest = dest.open()?;
            let cluster = kvserver::backup::point::pick_cluster(&dest, cluster.as_deref()).await?;
            let target = match (to_revision, to_time_ms) {
                (Some(r), _) => Target::Revision(r),
                (None, Some(t)) => Target::Time(t),
                (None, None) => Target::Latest,
            };
            let tmp = out.with_extension("partial");
            let file = tokio::fs::File::create(&tmp).await?;
            let composed = kvserver::backup::point::compose(
                &dest,
                &cluster,
                target,
                tokio::io::BufWriter::new(file),
            )
            .await;
            match composed {
                Ok((w, s)) => {
                    w.into_inner().sync_all().await?;
                    tokio::fs::rename(&tmp, &out).await?;
                    println!(
                        "{}",
                        json!({"kind": "restore_point", "file": out, "summary": s})
                    );
                    Ok(true)
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    println!(
                        "{}",
                        json!({"kind": "restore_point", "ok": false, "error": e.to_string()})
                    );
                    Ok(false)
                }
            }
        }
    }
}
