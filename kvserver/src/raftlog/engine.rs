//! The log engine: one append-only log per node shared by every Raft group on
//! it, written by one thread that turns everything queued since its last sync
//! into frames, writes them and syncs once (`fdatasync`) for all of them, then
//! completes the callers. With 16 groups on a node that is still one sync per
//! batch, not 16 (the way TiKV's raft-engine shares one log between regions).
//!
//! Callers change the in-memory state ([`super::group::Group`]) at once, so an
//! appended entry is readable when `append` returns (openraft requires it), and
//! queue the records; the writer gives entries their disk position after the
//! sync. Segments are rotated when full: a new segment starts with a header
//! frame holding the node's identity and every group's vote, committed id and
//! purge marker as of the records before it, so the oldest segment can be
//! deleted once none of its entries is live and every removal that killed them
//! is durable. Any write or sync error stops the log for good (no retried
//! fsync: after a failed one, the kernel may have dropped the dirty pages).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::RwLock;
use std::thread::JoinHandle;

use bytes::Bytes;

use super::LogError;
use super::LogOptions;
use super::frame::Kind;
use super::group::Group;
use super::group::Pos;
use super::segment;
use super::writer::Meta;
use super::writer::Writer;

/// Called once with the outcome when an operation is durable (or failed).
pub type Done = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// A record queued for the writer.
pub(super) enum Rec {
    Entry {
        group: u64,
        index: u64,
        id: u64,
        bytes: Bytes,
    },
    Meta {
        kind: Kind,
        group: u64,
        index: u64,
        bytes: Bytes,
    },
}

pub(super) struct Op {
    pub(super) id: u64,
    pub(super) recs: Vec<Rec>,
    pub(super) done: Option<Done>,
}

/// Shared between callers and the writer.
pub(super) struct Inner {
    pub(super) groups: BTreeMap<u64, Group>,
    /// Live entries per segment (every existing segment has a row).
    pub(super) live: BTreeMap<u64, usize>,
    pub(super) pending: Vec<Op>,
    pub(super) next_op: u64,
    pub(super) durable_op: u64,
    /// The last operation that dropped an entry already on disk: segments may be
    /// deleted only once it is durable.
    pub(super) last_removal: u64,
    pub(super) next_slot: u64,
    pub(super) closed: bool,
    pub(super) failed: Option<String>,
}

pub(super) struct Shared {
    /// Held (locked) for as long as the log is open; released by `close`.
    pub(super) lock: Mutex<Option<File>>,
    pub(super) dir: PathBuf,
    pub(super) opts: LogOptions,
    pub(super) inner: Mutex<Inner>,
    pub(super) wake: Condvar,
    pub(super) files: RwLock<BTreeMap<u64, Arc<File>>>,
    pub(super) writer: Mutex<Option<JoinHandle<()>>>,
    pub(super) syncs: std::sync::atomic::AtomicU64,
    pub(super) written_bytes: std::sync::atomic::AtomicU64,
}

/// Counters of the writer (for tests, benchmarks and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Batches written and synced.
    pub syncs: u64,
    /// Bytes written (frames, headers included).
    pub bytes: u64,
}

/// Handle on a node's log; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// What the log holds for a group, for openraft's `get_log_state`.
pub struct GroupState {
    pub purged: Option<(u64, Bytes)>,
    pub last: Option<u64>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent before anything that can
        // panic, so a poisoned lock still guards usable state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports the number of segment files on disk.
    pub(super) fn count_segments(&self, n: usize) {
        if let Some(m) = &self.opts.metrics {
            m.segments.set(n as i64);
        }
    }
}

impl Inner {
    fn check(&self) -> Result<(), LogError> {
        match (&self.failed, self.closed) {
            (Some(why), _) => Err(LogError::Failed(why.clone())),
            (None, true) => Err(LogError::Closed),
            _ => Ok(()),
        }
    }

    fn group(&mut self, g: u64) -> &mut Group {
        self.groups.entry(g).or_default()
    }

    /// Accounts for entries dropped by operation `op`.
    fn removed(&mut self, op: u64, removed: &[Pos]) {
        for p in removed {
            if let Some(n) = self.live.get_mut(&p.segment) {
                *n = n.saturating_sub(1);
            }
        }
        if !removed.is_empty() {
            self.last_removal = op;
        }
    }

    fn queue(&mut self, recs: Vec<Rec>, done: Option<Done>) -> u64 {
        let id = self.next_op;
        self.next_op += 1;
        self.pending.push(Op { id, recs, done });
        id
    }
}

impl Engine {
    /// Opens (or creates) the log in `dir`, replaying every segment; see `segment.rs`
    /// for how a torn tail and corruption are told apart.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Engine, LogError> {
        std::fs::create_dir_all(dir).map_err(LogError::io(dir))?;
        // One writer per log: a second process (or a node left running in a test)
        // on the same directory would interleave frames.
        let lock_path = dir.join("LOCK");
        let lock = std::fs::File::create(&lock_path).map_err(LogError::io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(LogError::io(&lock_path)(e)),
        }
        segment::remove_temp_files(dir);
        let mut numbers = segment::list(dir)?;
        if numbers.is_empty() {
            segment::preallocate(&segment::path(dir, 1), opts.segment_bytes)?;
            segment::sync_dir(dir)?;
            numbers.push(1);
        }
        let mut inner = Inner {
            groups: BTreeMap::new(),
            live: BTreeMap::new(),
            pending: Vec::new(),
            next_op: 1,
            durable_op: 0,
            last_removal: 0,
            next_slot: 1,
            closed: false,
            failed: None,
        };
        let mut files = BTreeMap::new();
        let mut next_seq = None;
        let mut end = 0;
        let last_number = numbers.last().copied().unwrap_or(1);
        let mut replay = super::replay::Replay::default();
        for &n in &numbers {
            let path = segment::path(dir, n);
            let tail = segment::scan_each(&path, next_seq, n == last_number, |f| {
                replay.frame(&opts.identity, &path, n, &f)?;
                next_seq = Some(f.seq + 1);
                Ok(())
            })?;
            if let Some(at) = tail.repaired_at {
                tracing::warn!(file = %path.display(), offset = at, "raft log: dropped a torn tail (a write that was never acknowledged)");
            }
            end = tail.end;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(LogError::io(&path))?;
            files.insert(n, Arc::new(file));
        }
        let replayed = replay.finish(&numbers)?;
        inner.groups = replayed.groups;
        inner.live = replayed.live;
        inner.next_slot = replayed.next_slot;
        let written = inner
            .groups
            .iter()
            .map(|(g, s)| (*g, Meta::of(s)))
            .collect();
        let active = files
            .get(&last_number)
            .cloned()
            .ok_or_else(|| LogError::Failed("no active segment".into()))?;
        let shared = Arc::new(Shared {
            lock: Mutex::new(Some(lock)),
            dir: dir.to_path_buf(),
            opts,
            inner: Mutex::new(inner),
            wake: Condvar::new(),
            files: RwLock::new(files),
            writer: Mutex::new(None),
            syncs: Default::default(),
            written_bytes: Default::default(),
        });
        let segments = shared.lock().live.len();
        shared.count_segments(segments);
        let mut writer = Writer {
            shared: shared.clone(),
            active,
            number: last_number,
            offset: end,
            next_seq: next_seq.unwrap_or(1),
            header_end: 0,
            written,
            spare: None,
        };
        if end == 0 {
            // A new segment, or one whose header never reached the disk.
            writer.write_header().map_err(LogError::io(dir))?;
            writer.active.sync_data().map_err(LogError::io(dir))?;
        }
        writer.prepare_spare();
        let handle = std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || writer.run())
            .map_err(LogError::io(dir))?;
        *shared.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(Engine { shared })
    }

    /// Appends entries `(index, bytes)` of `group`; readable on return, `done` once durable.
    pub fn append(
        &self,
        group: u64,
        entries: Vec<(u64, Bytes)>,
        done: Done,
    ) -> Result<(), LogError> {
        let mut inner = self.shared.lock();
        if let Err(e) = inner.check() {
            drop(inner);
            done(Err(io::Error::other(e.to_string())));
            return Err(e);
        }
        let op = inner.next_op;
        let mut removed = Vec::new();
        let mut recs = Vec::with_capacity(entries.len());
        for (index, bytes) in entries {
            let id = inner.next_slot;
            inner.next_slot += 1;
            let g = inner.group(group);
            if let Err(h) = g.append(index, id, None, Some(bytes.clone()), &mut removed) {
                drop(inner);
                let e = LogError::Hole {
                    group,
                    expected: h.expected,
                    got: h.got,
                };
                done(Err(io::Error::other(e.to_string())));
                return Err(e);
            }
            recs.push(Rec::Entry {
                group,
                index,
                id,
                bytes,
            });
        }
        inner.removed(op, &removed);
        let budget = self.shared.opts.cache_bytes_per_group;
        inner.group(group).evict(budget);
        inner.queue(recs, Some(done));
        drop(inner);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Queues a record that changes `group`'s metadata (after `apply` changed memory);
    /// waits until it is durable when `wait`.
    async fn meta(
        &self,
        kind: Kind,
        group: u64,
        index: u64,
        bytes: Bytes,
        wait: bool,
        apply: impl FnOnce(&mut Group, &mut Vec<Pos>),
    ) -> Result<(), LogError> {
        let rx = {
            let mut inner = self.shared.lock();
            inner.check()?;
            let op = inner.next_op;
            let mut removed = Vec::new();
            apply(inner.group(group), &mut removed);
            inner.removed(op, &removed);
            let rec = Rec::Meta {
                kind,
                group,
                index,
                bytes,
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let done: Option<Done> = wait.then(|| -> Done {
                Box::new(move |r| {
                    let _ = tx.send(r);
                })
            });
            inner.queue(vec![rec], done);
            rx
        };
        if !wait {
            // Nothing waits for it: it rides along with the next batch.
            return Ok(());
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(r) => r.map_err(|e| LogError::Failed(e.to_string())),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// Records `group`'s vote; returns once it is durable.
    pub async fn save_vote(&self, group: u64, vote: Bytes) -> Result<(), LogError> {
        let v = vote.clone();
        self.meta(Kind::Vote, group, 0, vote, true, |g, _| g.vote = Some(v))
            .await
    }

    /// Records `group`'s committed log id; written with the next batch (advisory).
    pub async fn save_committed(&self, group: u64, committed: Bytes) -> Result<(), LogError> {
        let c = committed.clone();
        self.meta(Kind::Committed, group, 0, committed, false, |g, _| {
            g.committed = Some(c)
        })
        .await
    }

    /// Drops `group`'s entries at `from` and after; returns once that is durable.
    pub async fn truncate(&self, group: u64, from: u64) -> Result<(), LogError> {
        if let Some(m) = &self.shared.opts.metrics {
            m.truncations.inc();
        }
        self.meta(
            Kind::Truncate,
            group,
            from,
            Bytes::new(),
            true,
            |g, removed| g.truncate(from, removed),
        )
        .await
    }

    /// Drops `group`'s entries up to `index` and records the purged log id.
    pub async fn purge(&self, group: u64, index: u64, log_id: Bytes) -> Result<(), LogError> {
        let l = log_id.clone();
        self.meta(Kind::Purge, group, index, log_id, false, |g, removed| {
            g.purge(index, l, removed)
        })
        .await?;
        // Wake the writer: segments may now be deleted.
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Forgets everything of `group` (the node no longer hosts it); returns once
    /// that is durable. The group's segments are freed like purged entries, and a
    /// later append to the group starts a new log.
    pub async fn drop_group(&self, group: u64) -> Result<(), LogError> {
        self.meta(Kind::Drop, group, 0, Bytes::new(), true, |g, removed| {
            g.truncate(0, removed);
            *g = Group::default();
        })
        .await?;
        {
            let mut inner = self.shared.lock();
            if inner
                .groups
                .get(&group)
                .is_some_and(|g| g.slots.is_empty() && g.vote.is_none() && g.purged.is_none())
            {
                inner.groups.remove(&group);
            }
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Waits until everything queued so far is durable.
    pub async fn flush(&self) -> Result<(), LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut inner = self.shared.lock();
            inner.check()?;
            inner.queue(
                Vec::new(),
                Some(Box::new(move |r| {
                    let _ = tx.send(r);
                })),
            );
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(r) => r.map_err(|e| LogError::Failed(e.to_string())),
            Err(_) => Err(LogError::Closed),
        }
    }

    pub fn vote(&self, group: u64) -> Option<Bytes> {
        self.shared.lock().groups.get(&group)?.vote.clone()
    }

    pub fn committed(&self, group: u64) -> Option<Bytes> {
        self.shared.lock().groups.get(&group)?.committed.clone()
    }

    pub fn state(&self, group: u64) -> GroupState {
        let inner = self.shared.lock();
        match inner.groups.get(&group) {
            None => GroupState {
                purged: None,
                last: None,
            },
            Some(g) => GroupState {
                purged: g.purged.clone(),
                last: g.last_index(),
            },
        }
    }

    /// The groups the log holds anything for.
    pub fn groups(&self) -> Vec<u64> {
        self.shared.lock().groups.keys().copied().collect()
    }

    /// `group`'s entries with `start <= index < end` (fewer if the log holds fewer):
    /// cached ones are copies, the rest are read from their segments. Blocking I/O.
    pub fn read(&self, group: u64, start: u64, end: u64) -> Result<Vec<Bytes>, LogError> {
        enum Got {
            Cached(Bytes),
            At(Pos),
        }
        let got: Vec<Got> = {
            let inner = self.shared.lock();
            let Some(g) = inner.groups.get(&group) else {
                return Ok(Vec::new());
            };
            let Some(first) = g.first_index() else {
                return Ok(Vec::new());
            };
            let from = usize::try_from(start.saturating_sub(first)).unwrap_or(usize::MAX);
            let mut out = Vec::new();
            for s in g.slots.iter().skip(from) {
                if s.index >= end {
                    break;
                }
                match (&s.cached, s.pos) {
                    (Some(b), _) => out.push(Got::Cached(b.clone())),
                    (None, Some(p)) => out.push(Got::At(p)),
                    (None, None) => {
                        return Err(LogError::Failed(format!(
                            "entry {} of group {group} is neither cached nor on disk",
                            s.index
                        )));
                    }
                }
            }
            out
        };
        got.into_iter()
            .map(|g| match g {
                Got::Cached(b) => Ok(b),
                Got::At(p) => {
                    let path = segment::path(&self.shared.dir, p.segment);
                    let f = self
                        .shared
                        .files
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&p.segment)
                        .cloned();
                    let f = f.ok_or_else(|| LogError::Corrupt {
                        file: path.clone(),
                        offset: p.offset,
                        detail: "segment of a live entry is gone".into(),
                    })?;
                    let mut buf = vec![0u8; p.len as usize];
                    f.read_exact_at(&mut buf, p.offset)
                        .map_err(LogError::io(&path))?;
                    Ok(Bytes::from(buf))
                }
            })
            .collect()
    }

    /// Whether the read of `[start, end)` needs the disk (so callers can move it off
    /// the async runtime).
    pub fn read_needs_disk(&self, group: u64, start: u64, end: u64) -> bool {
        let inner = self.shared.lock();
        let Some(g) = inner.groups.get(&group) else {
            return false;
        };
        let Some(first) = g.first_index() else {
            return false;
        };
        let from = usize::try_from(start.saturating_sub(first)).unwrap_or(usize::MAX);
        g.slots
            .iter()
            .skip(from)
            .take_while(|s| s.index < end)
            .any(|s| s.cached.is_none())
    }

    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        Stats {
            syncs: self.shared.syncs.load(Relaxed),
            bytes: self.shared.written_bytes.load(Relaxed),
        }
    }

    /// Segment numbers on disk (tests and metrics).
    pub fn segments(&self) -> Vec<u64> {
        self.shared.lock().live.keys().copied().collect()
    }

    /// Makes everything queued durable and stops the writer. Later calls fail.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        let handle = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.shared
            .lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}
