//! What the log holds for one Raft group, in memory: where each live entry is
//! on disk (and a cache of recent ones), the vote, the committed log id and the
//! purge marker. The same rules serve appends at run time and the replay of the
//! segments on start, so a replayed log is exactly the one that was written.

use std::collections::VecDeque;

use bytes::Bytes;

/// Where an entry's bytes are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// One live entry.
#[derive(Debug, Clone)]
pub struct Slot {
    pub index: u64,
    /// Unique per append: the writer places an entry only if its slot is still this one.
    pub id: u64,
    /// `None` until the writer has put it in a segment.
    pub pos: Option<Pos>,
    /// The entry's bytes, while cached (always until it has a position).
    pub cached: Option<Bytes>,
}

/// An append that does not continue the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    pub expected: u64,
    pub got: u64,
}

/// One group's log.
#[derive(Debug, Default)]
pub struct Group {
    /// Consecutive indexes, oldest first.
    pub slots: VecDeque<Slot>,
    pub vote: Option<Bytes>,
    pub committed: Option<Bytes>,
    /// Index and encoded log id of the last purged entry.
    pub purged: Option<(u64, Bytes)>,
    /// Bytes held in `cached` fields.
    pub cached_bytes: usize,
    /// No entry below this index holds cached bytes that could be evicted.
    evict_from: u64,
}

impl Group {
    pub fn first_index(&self) -> Option<u64> {
        self.slots.front().map(|s| s.index)
    }

    pub fn last_index(&self) -> Option<u64> {
        self.slots.back().map(|s| s.index)
    }

    /// Appends (or, at or below the last index, replaces from there) one entry.
    /// Entries at or below the purge marker are ignored (replay of purged entries).
    /// `removed` receives the positions of entries this drops.
    pub fn append(
        &mut self,
        index: u64,
        id: u64,
        pos: Option<Pos>,
        cached: Option<Bytes>,
        removed: &mut Vec<Pos>,
    ) -> Result<(), Hole> {
        if self.purged.as_ref().is_some_and(|(p, _)| index <= *p) {
            return Ok(());
        }
        match (self.last_index(), &self.purged) {
            (Some(last), _) if index <= last => self.truncate(index, removed),
            (Some(last), _) if index != last + 1 => {
                return Err(Hole {
                    expected: last + 1,
                    got: index,
                });
            }
            (None, Some((p, _))) if index != p + 1 => {
                return Err(Hole {
                    expected: p + 1,
                    got: index,
                });
            }
            _ => {}
        }
        self.cached_bytes += cached.as_ref().map_or(0, Bytes::len);
        self.slots.push_back(Slot {
            index,
            id,
            pos,
            cached,
        });
        Ok(())
    }

    /// Drops entries at `from` and after.
    pub fn truncate(&mut self, from: u64, removed: &mut Vec<Pos>) {
        self.evict_from = self.evict_from.min(from);
        while self.last_index().is_some_and(|l| l >= from) {
            if let Some(s) = self.slots.pop_back() {
                self.forget(s, removed);
            }
        }
    }

    /// Drops entries up to and including `index` and records the marker; a marker
    /// at or below the current one changes nothing.
    pub fn purge(&mut self, index: u64, log_id: Bytes, removed: &mut Vec<Pos>) {
        if self.purged.as_ref().is_some_and(|(p, _)| *p >= index) {
            return;
        }
        self.purged = Some((index, log_id));
        while self.first_index().is_some_and(|f| f <= index) {
            if let Some(s) = self.slots.pop_front() {
                self.forget(s, removed);
            }
        }
    }

    fn forget(&mut self, s: Slot, removed: &mut Vec<Pos>) {
        self.cached_bytes -= s.cached.as_ref().map_or(0, Bytes::len);
        removed.extend(s.pos);
    }

    /// The slot of `index`, if live.
    pub fn slot_mut(&mut self, index: u64) -> Option<&mut Slot> {
        let first = self.first_index()?;
        let at = index.checked_sub(first)?;
        self.slots.get_mut(usize::try_from(at).ok()?)
    }

    /// Drops cached bytes of the oldest entries that are on disk until at most
    /// `budget` bytes stay cached. Entries not on disk yet stay (reads need them).
    pub fn evict(&mut self, budget: usize) {
        let Some(first) = self.first_index() else {
            return;
        };
        // Entries before the cursor hold nothing to evict: no rescan from the front.
        let skip = usize::try_from(self.evict_from.saturating_sub(first)).unwrap_or(usize::MAX);
        let mut stop = None;
        for s in self.slots.iter_mut().skip(skip) {
            if self.cached_bytes <= budget {
                stop.get_or_insert(s.index);
                break;
            }
            match (s.pos, s.cached.take()) {
                (Some(_), Some(b)) => self.cached_bytes -= b.len(),
                (None, kept) => {
                    s.cached = kept;
                    stop.get_or_insert(s.index);
                }
                (Some(_), None) => {}
            }
        }
        self.evict_from = stop.or(self.last_index().map(|l| l + 1)).unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(i: u64) -> Option<Pos> {
        Some(Pos {
            segment: 1,
            offset: i * 10,
            len: 10,
        })
    }

    fn indexes(g: &Group) -> Vec<u64> {
        g.slots.iter().map(|s| s.index).collect()
    }

    #[test]
    fn appends_replace_truncate_purge_and_refuse_holes() {
        let mut g = Group::default();
        let mut removed = Vec::new();
        for i in 1..=5 {
            g.append(i, i, pos(i), None, &mut removed).expect("append");
        }
        assert_eq!(
            g.append(7, 7, pos(7), None, &mut removed),
            Err(Hole {
                expected: 6,
                got: 7
            })
        );
        // An append at or below the last index replaces from there.
        g.append(4, 40, pos(40), None, &mut removed)
            .expect("replace");
        assert_eq!(indexes(&g), vec![1, 2, 3, 4]);
        assert_eq!(removed, vec![pos(5).expect("pos"), pos(4).expect("pos")]);
        removed.clear();
        g.purge(2, Bytes::from_static(b"p2"), &mut removed);
        assert_eq!(indexes(&g), vec![3, 4]);
        assert_eq!(removed.len(), 2);
        // Replayed entries at or below the marker are ignored.
        g.append(1, 99, pos(1), None, &mut removed)
            .expect("ignored");
        assert_eq!(indexes(&g), vec![3, 4]);
        // A purge past the end (a snapshot install) empties the log; the next entry follows it.
        g.purge(10, Bytes::from_static(b"p10"), &mut removed);
        assert!(g.slots.is_empty());
        assert!(g.append(12, 1, pos(12), None, &mut removed).is_err());
        g.append(11, 1, pos(11), None, &mut removed)
            .expect("after purge");
        g.truncate(0, &mut removed);
        assert!(g.slots.is_empty());
    }

    #[test]
    fn eviction_keeps_what_is_not_on_disk() {
        let mut g = Group::default();
        let mut removed = Vec::new();
        for i in 1..=4 {
            let p = if i <= 2 { pos(i) } else { None };
            g.append(i, i, p, Some(Bytes::from(vec![0u8; 10])), &mut removed)
                .expect("append");
        }
        g.evict(0);
        assert_eq!(g.cached_bytes, 20);
        assert!(g.slots[0].cached.is_none() && g.slots[2].cached.is_some());
        g.truncate(3, &mut removed);
        g.truncate(4, &mut removed);
        assert_eq!(g.cached_bytes, 0);
    }
}
