//! Continuous-backup segments: the committed changes of a contiguous run of
//! revisions, shipped after a full backup so a restore can stop at any
//! revision or time after it.
//!
//! A segment covers the revisions `after + 1 ..= upto`, every one of them
//! exactly once and in order: every revision of the store changes at least one
//! key (a command that changes nothing does not bump it), so a run with a
//! missing or repeated revision is damage, not a quiet cluster. Layout as in
//! [`super::format`]: magic `KVSEGMNT`, version, framed records (header, one
//! per revision, an end record with the count), SHA-256 of everything before.
//! Segments are small (one flush interval of changes) and are built and
//! checked in memory.

use serde::Deserialize;
use serde::Serialize;

use super::BackupError;
use super::format::FrameReader;
use super::format::FrameWriter;
use crate::record::StoredKv;

const MAGIC: &[u8; 8] = b"KVSEGMNT";
pub const SEGMENT_VERSION: u32 = 1;

/// What a segment says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub cluster_id: String,
    /// The segment starts after this revision.
    pub after: u64,
    /// The last revision in it.
    pub upto: u64,
    pub writer_version: String,
}

/// The changes of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    /// Leader clock of the command (unix ms); `None` for deletes written before
    /// the cluster recorded it.
    pub at_ms: Option<u64>,
    /// Each changed key: its record after a put, `None` after a delete.
    pub changes: Vec<(String, Option<StoredKv>)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Header(SegmentHeader),
    Revision(Revision),
    End { revisions: u64 },
}

/// A whole, checked segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub header: SegmentHeader,
    pub revisions: Vec<Revision>,
}

impl Segment {
    /// Encodes the segment; refuses revisions that are not exactly `after+1..=upto`.
    pub async fn encode(&self) -> Result<Vec<u8>, BackupError> {
        check_run(&self.header, &self.revisions).map_err(BackupError::Encode)?;
        let mut w = FrameWriter::start(Vec::new(), MAGIC, SEGMENT_VERSION).await?;
        w.frame(&Record::Header(self.header.clone())).await?;
        for r in &self.revisions {
            w.frame(&RecordRef::Revision(r)).await?;
        }
        w.frame(&Record::End {
            revisions: self.revisions.len() as u64,
        })
        .await?;
        Ok(w.finish().await?.0)
    }

    /// Decodes and checks a segment (framing, checksum, contiguous revisions).
    pub async fn decode(bytes: &[u8]) -> Result<Segment, BackupError> {
        let (mut r, _) = FrameReader::start(bytes, MAGIC, SEGMENT_VERSION, "segment").await?;
        let header = match r.frame::<Record>().await? {
            Record::Header(h) => h,
            _ => return Err(r.corrupt("the first record is not the header")),
        };
        let mut revisions = Vec::new();
        loop {
            match r.frame::<Record>().await? {
                Record::Revision(rev) => {
                    let want = header.after + revisions.len() as u64 + 1;
                    if rev.revision != want {
                        return Err(r.corrupt(format!(
                            "revision {} where {want} belongs: the run has a gap or a repeat",
                            rev.revision
                        )));
                    }
                    revisions.push(rev);
                }
                Record::End { revisions: n } if n == revisions.len() as u64 => break,
                Record::End { revisions: n } => {
                    return Err(r.corrupt(format!(
                        "the trailer counts {n} revisions but the segment holds {}",
                        revisions.len()
                    )));
                }
                Record::Header(_) => return Err(r.corrupt("a second header")),
            }
        }
        let seg = Segment { header, revisions };
        if let Err(detail) = check_run(&seg.header, &seg.revisions) {
            return Err(r.corrupt(detail));
        }
        r.finish().await?;
        Ok(seg)
    }
}

fn check_run(h: &SegmentHeader, revs: &[Revision]) -> Result<(), String> {
    if h.upto <= h.after {
        return Err(format!("empty run: after {} upto {}", h.after, h.upto));
    }
    if revs.len() as u64 != h.upto - h.after {
        return Err(format!(
            "the header covers revisions {}..={} but the segment holds {}",
            h.after + 1,
            h.upto,
            revs.len()
        ));
    }
    for (i, r) in revs.iter().enumerate() {
        if r.revision != h.after + 1 + i as u64 {
            return Err(format!("revision {} out of sequence", r.revision));
        }
        if r.changes.is_empty() {
            return Err(format!("revision {} changes nothing", r.revision));
        }
    }
    Ok(())
}

#[derive(Serialize)]
enum RecordRef<'a> {
    #[allow(dead_code)]
    Header(&'a SegmentHeader),
    Revision(&'a Revision),
}
