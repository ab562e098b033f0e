//! The on-disk format of the Raft log: frames of records.
//!
//! A *frame* is what one write of the log writer puts on disk before its sync:
//! `magic u32 | seq u64 | len u32 | crc u32 | payload[len]` (little endian), where
//! `seq` numbers frames across all segments without gaps and `crc` is CRC-32 of
//! `seq | len | payload`. A frame that fails its checks is either a torn tail (the
//! last write, never acknowledged) or corruption; `segment.rs` tells which.
//!
//! The payload is a sequence of *records*, each `kind u8 | group u64 | index u64 |
//! len u32 | bytes[len]`: one Raft entry, a vote, a committed index, a truncation
//! a purge or the drop of one Raft group, or the identity of the node that owns the log.
//! Records are opaque bytes to this layer (the openraft adapter encodes them), so
//! the format knows nothing of openraft's types.

/// First bytes of every frame ("KVLG").
pub const MAGIC: u32 = 0x4b56_4c47;
/// Frame header: magic, seq, len, crc.
pub const FRAME_HEADER: usize = 4 + 8 + 4 + 4;
/// Record header: kind, group, index, len.
pub const RECORD_HEADER: usize = 1 + 8 + 8 + 4;
/// Largest payload a frame may claim: a bound for garbage lengths, far above any
/// frame the writer makes (it splits batches at `MAX_FRAME_PAYLOAD`).
pub const MAX_CLAIMED_PAYLOAD: usize = 1 << 30;
/// The writer starts a new frame once a frame's payload passes this size.
pub const MAX_FRAME_PAYLOAD: usize = 4 << 20;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A Raft entry at `index` (an entry at or below the last one replaces from there).
    Entry = 1,
    /// The group's vote.
    Vote = 2,
    /// The group's committed log id (advisory, see openraft's `save_committed`).
    Committed = 3,
    /// Entries at `index` and after are gone.
    Truncate = 4,
    /// Entries up to and including `index` are gone; `bytes` is the purged log id.
    Purge = 5,
    /// Who owns this log (first record of every segment); `group` and `index` are 0.
    Identity = 6,
    /// Everything of the group is gone: entries, vote, committed and purge marker
    /// (the node no longer hosts it, see `crate::group`). Records of the group
    /// after this one start it afresh.
    Drop = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Entry,
            2 => Kind::Vote,
            3 => Kind::Committed,
            4 => Kind::Truncate,
            5 => Kind::Purge,
            6 => Kind::Identity,
            7 => Kind::Drop,
            _ => return None,
        })
    }
}

/// One record, borrowed from a decoded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: Kind,
    pub group: u64,
    pub index: u64,
    pub bytes: &'a [u8],
    /// Where `bytes` starts within the payload (entries are read back from there).
    pub offset: usize,
}

/// Appends one record to a payload; returns where its bytes start in the payload.
pub fn put_record(out: &mut Vec<u8>, kind: Kind, group: u64, index: u64, bytes: &[u8]) -> usize {
    out.push(kind as u8);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    let at = out.len();
    out.extend_from_slice(bytes);
    at
}

/// The records of a payload, or the offset within it where they stop making sense.
/// A payload passed its frame's checksum, so a bad record means a bug or a forged
/// frame: it is reported, never skipped.
pub fn records(payload: &[u8]) -> Result<Vec<Record<'_>>, usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let head = payload.get(at..at + RECORD_HEADER).ok_or(at)?;
        let kind = Kind::from_u8(head[0]).ok_or(at)?;
        let group = u64::from_le_bytes(head[1..9].try_into().map_err(|_| at)?);
        let index = u64::from_le_bytes(head[9..17].try_into().map_err(|_| at)?);
        let len = u32::from_le_bytes(head[17..21].try_into().map_err(|_| at)?) as usize;
        let start = at + RECORD_HEADER;
        let bytes = payload.get(start..start + len).ok_or(at)?;
        out.push(Record {
            kind,
            group,
            index,
            bytes,
            offset: start,
        });
        at = start + len;
    }
    Ok(out)
}

fn checksum(seq: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Writes the header of a frame whose payload is `payload` in front of it:
/// `buf[at..at + FRAME_HEADER]` must be reserved.
pub fn seal(buf: &mut [u8], at: usize, seq: u64) {
    let payload = &buf[at + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = checksum(seq, len, payload);
    let head = &mut buf[at..at + FRAME_HEADER];
    head[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    head[4..12].copy_from_slice(&seq.to_le_bytes());
    head[12..16].copy_from_slice(&len.to_le_bytes());
    head[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// A frame read from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub seq: u64,
    pub payload: &'a [u8],
    /// Total length, header included.
    pub len: usize,
}

/// Why no frame could be read at some position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Only zeros from here to the end of the buffer (or nothing at all): a clean end.
    End,
    /// Anything else: a torn write or corruption.
    Invalid(&'static str),
}

/// Reads the frame at `buf[at..]`, checking magic, length and checksum.
pub fn read_frame(buf: &[u8], at: usize) -> Result<Frame<'_>, Bad> {
    let rest = buf.get(at..).unwrap_or(&[]);
    if rest.iter().all(|b| *b == 0) {
        return Err(Bad::End);
    }
    let head = rest
        .get(..FRAME_HEADER)
        .ok_or(Bad::Invalid("frame header cut short"))?;
    let word = |r: std::ops::Range<usize>| -> [u8; 4] {
        let mut w = [0u8; 4];
        w.copy_from_slice(&head[r]);
        w
    };
    if u32::from_le_bytes(word(0..4)) != MAGIC {
        return Err(Bad::Invalid("no frame magic"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&head[4..12]);
    let seq = u64::from_le_bytes(seq);
    let len = u32::from_le_bytes(word(12..16));
    let crc = u32::from_le_bytes(word(16..20));
    if len as usize > MAX_CLAIMED_PAYLOAD {
        return Err(Bad::Invalid("frame length out of range"));
    }
    let payload = rest
        .get(FRAME_HEADER..FRAME_HEADER + len as usize)
        .ok_or(Bad::Invalid("frame cut short"))?;
    if checksum(seq, len, payload) != crc {
        return Err(Bad::Invalid("frame checksum mismatch"));
    }
    Ok(Frame {
        seq,
        payload,
        len: FRAME_HEADER + len as usize,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(seq: u64, recs: &[(Kind, u64, u64, Vec<u8>)]) -> Vec<u8> {
        let mut buf = vec![0u8; FRAME_HEADER];
        for (k, g, i, b) in recs {
            put_record(&mut buf, *k, *g, *i, b);
        }
        seal(&mut buf, 0, seq);
        buf
    }

    #[test]
    fn zeros_are_a_clean_end_and_anything_else_is_not() {
        assert_eq!(read_frame(&[0u8; 64], 0), Err(Bad::End));
        assert_eq!(read_frame(&[], 0), Err(Bad::End));
        assert_eq!(
            read_frame(&[1, 0, 0], 0),
            Err(Bad::Invalid("frame header cut short"))
        );
        let f = frame(7, &[(Kind::Entry, 3, 9, b"abc".to_vec())]);
        let cut = &f[..f.len() - 1];
        assert_eq!(read_frame(cut, 0), Err(Bad::Invalid("frame cut short")));
    }

    proptest! {
        #[test]
        fn frames_round_trip_and_any_flipped_bit_is_caught(
            seq in any::<u64>(),
            recs in proptest::collection::vec((1u8..=6, any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
            flip in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let recs: Vec<(Kind, u64, u64, Vec<u8>)> = recs
                .into_iter()
                .map(|(k, g, i, b)| (Kind::from_u8(k).expect("kind"), g, i, b))
                .collect();
            let buf = frame(seq, &recs);
            let f = read_frame(&buf, 0).expect("valid frame");
            prop_assert_eq!(f.seq, seq);
            prop_assert_eq!(f.len, buf.len());
            let got = records(f.payload).expect("records");
            prop_assert_eq!(got.len(), recs.len());
            for (r, (k, g, i, b)) in got.iter().zip(&recs) {
                prop_assert_eq!((r.kind, r.group, r.index, r.bytes), (*k, *g, *i, &b[..]));
                prop_assert_eq!(&f.payload[r.offset..r.offset + b.len()], &b[..]);
            }
            let mut bad = buf.clone();
            let at = flip.index(bad.len());
            bad[at] ^= 1 << bit;
            prop_assert!(read_frame(&bad, 0).is_err(), "flipped bit {bit} at {at} not caught");
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(f) = read_frame(&buf, 0) {
                let _ = records(f.payload);
            }
            let _ = records(&buf);
        }
    }
}
