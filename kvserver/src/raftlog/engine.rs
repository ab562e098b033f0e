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
use super::frame;
use super::frame::Kind;
use super::group::Group;
use super::group::Pos;
use super::segment;

/// Called once with the outcome when an operation is durable (or failed).
pub type Done = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// A record queued for the writer.
enum Rec {
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

struct Op {
    id: u64,
    recs: Vec<Rec>,
    done: Option<Done>,
}

/// Shared between callers and the writer.
struct Inner {
    groups: BTreeMap<u64, Group>,
    /// Live entries per segment (every existing segment has a row).
    live: BTreeMap<u64, usize>,
    pending: Vec<Op>,
    next_op: u64,
    durable_op: u64,
    /// The last operation that dropped an entry already on disk: segments may be
    /// deleted only once it is durable.
    last_removal: u64,
    next_slot: u64,
    closed: bool,
    failed: Option<String>,
}

struct Shared {
    /// Held (locked) for as long as the log is open; released by `close`.
    lock: Mutex<Option<File>>,
    dir: PathBuf,
    opts: LogOptions,
    inner: Mutex<Inner>,
    wake: Condvar,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    syncs: std::sync::atomic::AtomicU64,
    written_bytes: std::sync::atomic::AtomicU64,
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
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent before anything that can
        // panic, so a poisoned lock still guards usable state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        // First pass: each group's last purge marker. A purge that emptied the oldest
        // segment may be recorded only after the next segment's header, so replay
        // starts from the final markers: what they cover is gone for good (purges are
        // durable before segments go), and the entries left must follow them.
        // Learned from `durability.rs`'s purge-and-crash test, whose node refused to
        // start with "entry 474 does not continue the log (expected 449)".
        for &n in &numbers {
            let path = segment::path(dir, n);
            let scanned = segment::scan(&path, next_seq, n == last_number)?;
            if let Some(at) = scanned.repaired_at {
                tracing::warn!(file = %path.display(), offset = at, "raft log: dropped a torn tail (a write that was never acknowledged)");
            }
            for f in &scanned.frames {
                for r in frame::records(&f.payload).unwrap_or_default() {
                    if r.kind == Kind::Purge {
                        let mut removed = Vec::new();
                        let bytes = Bytes::copy_from_slice(r.bytes);
                        inner.group(r.group).purge(r.index, bytes, &mut removed);
                    }
                }
                next_seq = Some(f.seq + 1);
            }
        }
        next_seq = None;
        for &n in &numbers {
            let path = segment::path(dir, n);
            let scanned = segment::scan(&path, next_seq, n == last_number)?;
            inner.live.insert(n, 0);
            for f in &scanned.frames {
                replay_frame(&mut inner, &opts.identity, &path, n, f)?;
                next_seq = Some(f.seq + 1);
            }
            end = scanned.end;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(LogError::io(&path))?;
            files.insert(n, Arc::new(file));
        }
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

/// Applies one replayed frame to the in-memory state.
fn replay_frame(
    inner: &mut Inner,
    identity: &str,
    path: &Path,
    number: u64,
    f: &segment::ScannedFrame,
) -> Result<(), LogError> {
    let recs = frame::records(&f.payload).map_err(|at| LogError::Corrupt {
        file: path.to_path_buf(),
        offset: f.payload_at + at as u64,
        detail: "malformed record in a frame whose checksum holds".into(),
    })?;
    for r in recs {
        let mut removed = Vec::new();
        let bytes = || Bytes::copy_from_slice(r.bytes);
        match r.kind {
            Kind::Identity => {
                let stored = String::from_utf8_lossy(r.bytes);
                if stored != identity {
                    return Err(LogError::Identity {
                        stored: stored.into_owned(),
                        configured: identity.to_string(),
                    });
                }
            }
            Kind::Entry => {
                let id = inner.next_slot;
                inner.next_slot += 1;
                let pos = Pos {
                    segment: number,
                    offset: f.payload_at + r.offset as u64,
                    len: r.bytes.len() as u32,
                };
                let placed =
                    inner
                        .group(r.group)
                        .append(r.index, id, Some(pos), None, &mut removed);
                placed.map_err(|h| LogError::Corrupt {
                    file: path.to_path_buf(),
                    offset: pos.offset,
                    detail: format!(
                        "group {} entry {} does not continue the log (expected {})",
                        r.group, h.got, h.expected
                    ),
                })?;
                if inner.group(r.group).last_index() == Some(r.index)
                    && let Some(n) = inner.live.get_mut(&number)
                {
                    *n += 1;
                }
            }
            Kind::Vote => inner.group(r.group).vote = Some(bytes()),
            Kind::Committed => inner.group(r.group).committed = Some(bytes()),
            Kind::Truncate => inner.group(r.group).truncate(r.index, &mut removed),
            Kind::Purge => inner.group(r.group).purge(r.index, bytes(), &mut removed),
        }
        inner.removed(0, &removed);
    }
    Ok(())
}

/// A group's metadata as of the records written so far (for segment headers).
#[derive(Clone, Default)]
struct Meta {
    vote: Option<Bytes>,
    committed: Option<Bytes>,
    purged: Option<(u64, Bytes)>,
}

impl Meta {
    fn of(g: &Group) -> Meta {
        Meta {
            vote: g.vote.clone(),
            committed: g.committed.clone(),
            purged: g.purged.clone(),
        }
    }
}

/// An entry written in this batch, to be given its position after the sync.
struct Placed {
    group: u64,
    index: u64,
    id: u64,
    pos: Pos,
}

/// The writer thread's own state.
struct Writer {
    shared: Arc<Shared>,
    active: Arc<File>,
    number: u64,
    offset: u64,
    next_seq: u64,
    /// End of the active segment's header frame (0 when unknown: treated as data).
    header_end: u64,
    written: BTreeMap<u64, Meta>,
    spare: Option<JoinHandle<Result<File, LogError>>>,
}

/// One frame being built: its buffer (header reserved), entries in it, and the
/// metadata changes to fold into `written` once it is placed.
struct Building {
    buf: Vec<u8>,
    entries: Vec<(u64, u64, u64, usize, u32)>,
    metas: Vec<(Kind, u64, u64, Bytes)>,
}

impl Building {
    fn new() -> Building {
        Building {
            buf: vec![0u8; frame::FRAME_HEADER],
            entries: Vec::new(),
            metas: Vec::new(),
        }
    }
}

impl Writer {
    fn run(mut self) {
        loop {
            let (ops, closing) = {
                let mut inner = self.shared.lock();
                while inner.pending.is_empty() && !inner.closed {
                    // Every handle dropped without `close` (a node dropped in a test):
                    // nothing can queue more, so stop and release the lock.
                    if Arc::strong_count(&self.shared) == 1 {
                        inner.closed = true;
                        break;
                    }
                    inner = self
                        .shared
                        .wake
                        .wait_timeout(inner, std::time::Duration::from_millis(500))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                (std::mem::take(&mut inner.pending), inner.closed)
            };
            if !ops.is_empty() {
                self.batch(ops);
            }
            if closing && self.shared.lock().pending.is_empty() {
                break;
            }
        }
        if let Some(h) = self.spare.take() {
            let _ = h.join();
        }
    }

    /// Writes and syncs one batch, places its entries, deletes dead segments and
    /// completes the callers.
    fn batch(&mut self, ops: Vec<Op>) {
        let started = std::time::Instant::now();
        let last_op = ops.last().map_or(0, |o| o.id);
        let mut frames = vec![Building::new()];
        let mut dones = Vec::new();
        for op in ops {
            for rec in op.recs {
                let b = frames.last_mut().expect("at least one frame");
                match rec {
                    Rec::Entry {
                        group,
                        index,
                        id,
                        bytes,
                    } => {
                        let at = frame::put_record(&mut b.buf, Kind::Entry, group, index, &bytes);
                        b.entries.push((group, index, id, at, bytes.len() as u32));
                    }
                    Rec::Meta {
                        kind,
                        group,
                        index,
                        bytes,
                    } => {
                        frame::put_record(&mut b.buf, kind, group, index, &bytes);
                        b.metas.push((kind, group, index, bytes));
                    }
                }
                if b.buf.len() - frame::FRAME_HEADER >= frame::MAX_FRAME_PAYLOAD {
                    frames.push(Building::new());
                }
            }
            dones.extend(op.done);
        }
        let result = self.write_frames(frames);
        if let Some(h) = &self.shared.opts.sync_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        let outcome = match result {
            Ok(placed) => {
                let dead = self.place(placed, last_op);
                self.delete(dead);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "raft log write failed; the log stops");
                let mut inner = self.shared.lock();
                inner.failed = Some(e.to_string());
                // Nobody else will be told: fail what is still queued too.
                dones.extend(
                    std::mem::take(&mut inner.pending)
                        .into_iter()
                        .filter_map(|o| o.done),
                );
                Err(e.to_string())
            }
        };
        for d in dones {
            d(outcome.clone().map_err(io::Error::other));
        }
    }

    fn write_frames(&mut self, frames: Vec<Building>) -> io::Result<Vec<Placed>> {
        let mut placed = Vec::new();
        for mut b in frames {
            if b.buf.len() == frame::FRAME_HEADER {
                continue;
            }
            let len = b.buf.len() as u64;
            if self.offset + len > self.shared.opts.segment_bytes && self.has_data() {
                self.rotate()?;
            }
            frame::seal(&mut b.buf, 0, self.next_seq);
            self.active.write_all_at(&b.buf, self.offset)?;
            for (group, index, id, at, len) in b.entries {
                placed.push(Placed {
                    group,
                    index,
                    id,
                    pos: Pos {
                        segment: self.number,
                        offset: self.offset + at as u64,
                        len,
                    },
                });
            }
            for (kind, group, index, bytes) in b.metas {
                let m = self.written.entry(group).or_default();
                match kind {
                    Kind::Vote => m.vote = Some(bytes),
                    Kind::Committed => m.committed = Some(bytes),
                    Kind::Purge if m.purged.as_ref().is_none_or(|(p, _)| *p < index) => {
                        m.purged = Some((index, bytes))
                    }
                    _ => {}
                }
            }
            self.offset += len;
            self.next_seq += 1;
            self.shared
                .written_bytes
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        }
        self.active.sync_data()?;
        self.shared
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(placed)
    }

    /// Whether the active segment holds more than its header (a segment is never
    /// rotated for a frame larger than it: the frame goes in and the file grows).
    fn has_data(&self) -> bool {
        self.offset > self.header_end
    }

    /// Starts the next segment: syncs this one, takes the spare, writes the header.
    fn rotate(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        let next = self.number + 1;
        let path = segment::path(&self.shared.dir, next);
        let spare = self.spare.take().map(|h| {
            h.join()
                .map_err(|_| io::Error::other("spare segment thread panicked"))
        });
        let file = match spare {
            Some(Ok(Ok(f))) => {
                std::fs::rename(self.shared.dir.join(segment::SPARE), &path)?;
                f
            }
            _ => segment::preallocate(&path, self.shared.opts.segment_bytes)
                .map_err(|e| io::Error::other(e.to_string()))?,
        };
        segment::sync_dir(&self.shared.dir).map_err(|e| io::Error::other(e.to_string()))?;
        let file = Arc::new(file);
        self.shared
            .files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(next, file.clone());
        self.shared.lock().live.insert(next, 0);
        self.active = file;
        self.number = next;
        self.offset = 0;
        self.write_header()?;
        self.prepare_spare();
        Ok(())
    }

    /// The first frame of a segment: identity and every group's metadata.
    fn write_header(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; frame::FRAME_HEADER];
        frame::put_record(
            &mut buf,
            Kind::Identity,
            0,
            0,
            self.shared.opts.identity.as_bytes(),
        );
        for (g, m) in &self.written {
            if let Some((index, id)) = &m.purged {
                frame::put_record(&mut buf, Kind::Purge, *g, *index, id);
            }
            if let Some(v) = &m.vote {
                frame::put_record(&mut buf, Kind::Vote, *g, 0, v);
            }
            if let Some(c) = &m.committed {
                frame::put_record(&mut buf, Kind::Committed, *g, 0, c);
            }
        }
        frame::seal(&mut buf, 0, self.next_seq);
        self.active.write_all_at(&buf, self.offset)?;
        self.offset += buf.len() as u64;
        self.header_end = self.offset;
        self.next_seq += 1;
        Ok(())
    }

    /// Zero-fills the next segment in the background, so a rotation only renames.
    fn prepare_spare(&mut self) {
        let path = self.shared.dir.join(segment::SPARE);
        let size = self.shared.opts.segment_bytes;
        self.spare = std::thread::Builder::new()
            .name("raft-log-spare".into())
            .spawn(move || segment::preallocate(&path, size))
            .ok();
    }

    /// Gives written entries their positions; returns the segments that may go.
    fn place(&mut self, placed: Vec<Placed>, last_op: u64) -> Vec<u64> {
        let mut inner = self.shared.lock();
        inner.durable_op = inner.durable_op.max(last_op);
        let budget = self.shared.opts.cache_bytes_per_group;
        let mut groups = Vec::new();
        for p in placed {
            let Some(g) = inner.groups.get_mut(&p.group) else {
                continue;
            };
            match g.slot_mut(p.index) {
                Some(s) if s.id == p.id => s.pos = Some(p.pos),
                // Truncated or purged meanwhile: nothing refers to this copy.
                _ => continue,
            }
            if let Some(n) = inner.live.get_mut(&p.pos.segment) {
                *n += 1;
            }
            if groups.last() != Some(&p.group) {
                groups.push(p.group);
            }
        }
        for g in groups {
            if let Some(g) = inner.groups.get_mut(&g) {
                g.evict(budget);
            }
        }
        let mut dead = Vec::new();
        if inner.durable_op >= inner.last_removal {
            while let Some((&n, &live)) = inner.live.iter().next() {
                if n >= self.number || live > 0 {
                    break;
                }
                inner.live.remove(&n);
                dead.push(n);
            }
        }
        dead
    }

    fn delete(&mut self, dead: Vec<u64>) {
        if dead.is_empty() {
            return;
        }
        let mut files = self.shared.files.write().unwrap_or_else(|p| p.into_inner());
        for n in &dead {
            files.remove(n);
        }
        drop(files);
        for n in dead {
            let path = segment::path(&self.shared.dir, n);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "raft log: could not delete a dead segment");
            }
        }
        if let Err(e) = segment::sync_dir(&self.shared.dir) {
            tracing::warn!(error = %e, "raft log: could not sync the log directory");
        }
    }
}
