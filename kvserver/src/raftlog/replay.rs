//! Rebuilding the log's in-memory state from its segments on start.
//!
//! Records are applied in order with the log's own rules (an entry replaces
//! everything from its index on, a truncation drops a suffix, a purge a prefix),
//! and only the *final* state must be a log without holes. Intermediate holes
//! are normal once old segments are deleted: a segment goes when all its entries
//! are dead, but the records that killed them (a purge, or a truncation that
//! also removed later entries) may come after entries in the next segment that
//! followed them. Two cases taught this: a purge recorded after the next
//! segment's header (`durability.rs`'s purge-and-crash test: "entry 474 does
//! not continue the log (expected 449)"), and a truncation of entries on both
//! sides of a segment boundary (the model test in `tests.rs`, seed in
//! `proptest-regressions/raftlog/tests.txt`).

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use bytes::Bytes;

use super::LogError;
use super::frame;
use super::frame::Kind;
use super::group::Group;
use super::group::Pos;
use super::group::Slot;
use super::segment::ScannedFrame;

#[derive(Default)]
struct Replaying {
    entries: BTreeMap<u64, Pos>,
    vote: Option<Bytes>,
    committed: Option<Bytes>,
    purged: Option<(u64, Bytes)>,
}

/// The state being rebuilt.
#[derive(Default)]
pub(super) struct Replay {
    groups: BTreeMap<u64, Replaying>,
    paths: BTreeMap<u64, PathBuf>,
}

/// The rebuilt state.
pub(super) struct Replayed {
    pub groups: BTreeMap<u64, Group>,
    /// Live entries per segment.
    pub live: BTreeMap<u64, usize>,
    /// The next free slot id.
    pub next_slot: u64,
}

impl Replay {
    /// Applies the records of one frame of segment `number` (at `path`).
    pub fn frame(
        &mut self,
        identity: &str,
        path: &Path,
        number: u64,
        f: &ScannedFrame,
    ) -> Result<(), LogError> {
        self.paths
            .entry(number)
            .or_insert_with(|| path.to_path_buf());
        let recs = frame::records(&f.payload).map_err(|at| LogError::Corrupt {
            file: path.to_path_buf(),
            offset: f.payload_at + at as u64,
            detail: "malformed record in a frame whose checksum holds".into(),
        })?;
        for r in recs {
            if r.kind == Kind::Identity {
                let stored = String::from_utf8_lossy(r.bytes);
                if stored != identity {
                    return Err(LogError::Identity {
                        stored: stored.into_owned(),
                        configured: identity.to_string(),
                    });
                }
                continue;
            }
            if r.kind == Kind::Drop {
                self.groups.remove(&r.group);
                continue;
            }
            let g = self.groups.entry(r.group).or_default();
            let bytes = || Bytes::copy_from_slice(r.bytes);
            match r.kind {
                Kind::Entry => {
                    if g.purged.as_ref().is_some_and(|(p, _)| *p >= r.index) {
                        continue;
                    }
                    g.entries.split_off(&r.index);
                    g.entries.insert(
                        r.index,
                        Pos {
                            segment: number,
                            offset: f.payload_at + r.offset as u64,
                            len: r.bytes.len() as u32,
                        },
                    );
                }
                Kind::Truncate => {
                    g.entries.split_off(&r.index);
                }
                Kind::Purge => {
                    if g.purged.as_ref().is_none_or(|(p, _)| *p < r.index) {
                        g.purged = Some((r.index, bytes()));
                        g.entries = g.entries.split_off(&(r.index.saturating_add(1)));
                    }
                }
                Kind::Vote => g.vote = Some(bytes()),
                Kind::Committed => g.committed = Some(bytes()),
                Kind::Identity | Kind::Drop => {}
            }
        }
        Ok(())
    }

    /// Checks that every group's log is whole and builds the in-memory state.
    pub fn finish(self, segments: &[u64]) -> Result<Replayed, LogError> {
        let mut live: BTreeMap<u64, usize> = segments.iter().map(|n| (*n, 0)).collect();
        let mut groups = BTreeMap::new();
        let mut next_slot = 1;
        for (id, r) in self.groups {
            let mut expected = r.purged.as_ref().map(|(p, _)| p + 1);
            let mut g = Group::default();
            g.vote = r.vote;
            g.committed = r.committed;
            g.purged = r.purged;
            for (index, pos) in r.entries {
                if expected.is_some_and(|e| e != index) {
                    return Err(LogError::Corrupt {
                        file: self.paths.get(&pos.segment).cloned().unwrap_or_default(),
                        offset: pos.offset,
                        detail: format!(
                            "group {id} entry {index} does not continue the log (expected {})",
                            expected.unwrap_or_default()
                        ),
                    });
                }
                expected = Some(index + 1);
                *live.entry(pos.segment).or_default() += 1;
                g.slots.push_back(Slot {
                    index,
                    id: next_slot,
                    pos: Some(pos),
                    cached: None,
                });
                next_slot += 1;
            }
            groups.insert(id, g);
        }
        Ok(Replayed {
            groups,
            live,
            next_slot,
        })
    }
}
