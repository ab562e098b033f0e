//! The writer thread of the log engine (`engine.rs`): turns everything queued
//! since its last sync into frames, writes them into the active segment (rotating
//! to a preallocated spare when it is full, with a header frame of every group's
//! metadata), syncs once, gives the written entries their positions, deletes
//! segments nothing refers to any more and completes the callers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;

use super::LogError;
use super::engine::Op;
use super::engine::Rec;
use super::engine::Shared;
use super::frame;
use super::frame::Kind;
use super::group::Group;
use super::group::Pos;
use super::segment;

/// A group's metadata as of the records written so far (for segment headers).
#[derive(Clone, Default)]
pub(super) struct Meta {
    vote: Option<Bytes>,
    committed: Option<Bytes>,
    purged: Option<(u64, Bytes)>,
}

impl Meta {
    pub(super) fn of(g: &Group) -> Meta {
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
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) active: Arc<File>,
    pub(super) number: u64,
    pub(super) offset: u64,
    pub(super) next_seq: u64,
    /// End of the active segment's header frame (0 when unknown: treated as data).
    pub(super) header_end: u64,
    pub(super) written: BTreeMap<u64, Meta>,
    pub(super) spare: Option<JoinHandle<Result<File, LogError>>>,
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
    pub(super) fn run(mut self) {
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
        if let Some(m) = &self.shared.opts.metrics {
            m.sync_seconds.observe(started.elapsed().as_secs_f64());
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
                    // Later segment headers no longer carry the group.
                    Kind::Drop => *m = Meta::default(),
                    _ => {}
                }
            }
            self.offset += len;
            self.next_seq += 1;
            self.shared
                .written_bytes
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            if let Some(m) = &self.shared.opts.metrics {
                m.written_bytes.inc_by(len);
            }
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
        let segments = {
            let mut inner = self.shared.lock();
            inner.live.insert(next, 0);
            inner.live.len()
        };
        self.shared.count_segments(segments);
        self.active = file;
        self.number = next;
        self.offset = 0;
        self.write_header()?;
        self.prepare_spare();
        Ok(())
    }

    /// The first frame of a segment: identity and every group's metadata.
    pub(super) fn write_header(&mut self) -> io::Result<()> {
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
    pub(super) fn prepare_spare(&mut self) {
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
        if !dead.is_empty() {
            self.shared.count_segments(inner.live.len());
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
