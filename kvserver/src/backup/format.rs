//! The backup file: a consistent copy of the state machine at one revision.
//!
//! Layout: the magic `KVBACKUP`, the format version (u32, big-endian), then
//! length-prefixed bincode records exactly as in a Raft snapshot file (a
//! [`BackupHeader`], one record per key in key order, an `End` record with
//! the key count), then the SHA-256 of every byte before it. A reader checks
//! the version before anything else (a newer format is refused by name), the
//! framing, the count and the checksum, and that nothing follows: a truncated,
//! extended or bit-flipped file is refused, naming the byte offset where it
//! went wrong. Keys are handed out as they are read, so callers must treat
//! them as provisional until [`BackupReader::next_kv`] has returned `None`
//! (restore installs them in one transaction committed only then).
//!
//! A partitioned cluster's backup (format 2) holds every partition, each at
//! its own revision (a partition's revisions are its own, and the copies are
//! not one snapshot across partitions): after the header, a `Partitions`
//! record with the count, then per partition a `Partition` record (its index
//! and revision) followed by its keys in key order. The header's revision is
//! the highest partition's. A cluster of one partition still writes format 1,
//! so the releases before partitions read its backups.

use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use super::BackupError;
use crate::record::StoredKv;

const MAGIC: &[u8; 8] = b"KVBACKUP";
/// The newest format this build reads (and writes, for a partitioned cluster).
pub const FORMAT_VERSION: u32 = 2;
/// The format of a backup of a cluster of one partition.
const UNPARTITIONED_VERSION: u32 = 1;
/// Upper bound of one record: a key (4 KiB) plus the largest value a node accepts.
pub(crate) const MAX_RECORD: u32 = 64 * 1024 * 1024;
const DIGEST_LEN: usize = 32;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The cluster the state belongs to (`cluster_id` of its members).
    pub cluster_id: String,
    /// Every change up to and including this revision is in the backup; none after.
    pub revision: u64,
    /// Unix ms: when the copy was read (full backup) or of the last change
    /// replayed into it (a composed restore point).
    pub taken_at_ms: u64,
    /// Version of the kvserver (or kvctl) that wrote it.
    pub writer_version: String,
    /// Node that served the copy; 0 when composed from segments by kvctl.
    pub node_id: u64,
}

/// New variants go at the end: bincode numbers them in order.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Header(BackupHeader),
    Kv(StoredKv),
    End {
        count: u64,
    },
    /// Format 2: the cluster's partition count, right after the header.
    Partitions {
        count: u32,
    },
    /// Format 2: the keys that follow are this partition's, at this revision.
    Partition {
        partition: u32,
        revision: u64,
    },
}

/// What a finished or verified backup amounts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub header: BackupHeader,
    pub keys: u64,
    pub bytes: u64,
    /// SHA-256 of the content (hex): the backup's identity.
    pub sha256: String,
    /// A partitioned cluster's backup: each partition's revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<std::collections::BTreeMap<u32, u64>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Frames of length-prefixed bincode, hashed as they go out.
pub(crate) struct FrameWriter<W> {
    out: W,
    hash: ring::digest::Context,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) async fn start(out: W, magic: &[u8; 8], version: u32) -> Result<Self, BackupError> {
        let mut w = Self {
            out,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        };
        w.raw(magic).await?;
        w.raw(&version.to_be_bytes()).await?;
        Ok(w)
    }

    async fn raw(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.hash.update(bytes);
        self.out.write_all(bytes).await?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    pub(crate) async fn frame<T: Serialize>(&mut self, value: &T) -> Result<(), BackupError> {
        let body = bincode::serialize(value).map_err(|e| BackupError::Encode(e.to_string()))?;
        if body.len() > MAX_RECORD as usize {
            return Err(BackupError::Encode(format!(
                "a record of {} bytes exceeds the {MAX_RECORD}-byte limit",
                body.len()
            )));
        }
        self.raw(&(body.len() as u32).to_be_bytes()).await?;
        self.raw(&body).await
    }

    /// Writes the checksum, flushes, and returns the sink, the bytes and the checksum.
    pub(crate) async fn finish(mut self) -> Result<(W, u64, String), BackupError> {
        let digest = self.hash.finish();
        self.out.write_all(digest.as_ref()).await?;
        self.out.flush().await?;
        Ok((
            self.out,
            self.bytes + DIGEST_LEN as u64,
            hex(digest.as_ref()),
        ))
    }
}

/// Reads frames back, hashing everything before the checksum.
pub(crate) struct FrameReader<R> {
    inner: R,
    hash: ring::digest::Context,
    /// Bytes consumed so far (the offset errors name).
    pub(crate) offset: u64,
    what: &'static str,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Checks the magic and the version; returns the reader and the version.
    pub(crate) async fn start(
        inner: R,
        magic: &[u8; 8],
        supported: u32,
        what: &'static str,
    ) -> Result<(Self, u32), BackupError> {
        let mut r = Self {
            inner,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            offset: 0,
            what,
        };
        let mut m = [0u8; 8];
        r.exact(&mut m).await?;
        if &m != magic {
            return Err(BackupError::NotA { what });
        }
        let mut v = [0u8; 4];
        r.exact(&mut v).await?;
        let version = u32::from_be_bytes(v);
        if version > supported || version == 0 {
            return Err(BackupError::NewerFormat {
                what,
                found: version,
                supported,
            });
        }
        Ok((r, version))
    }

    pub(crate) fn corrupt(&self, detail: impl Into<String>) -> BackupError {
        BackupError::Corrupt {
            what: self.what,
            offset: self.offset,
            detail: detail.into(),
        }
    }

    async fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        match self.inner.read_exact(buf).await {
            Ok(_) => {
                self.hash.update(buf);
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(self.corrupt(format!(
                "truncated: the file ends inside a record (wanted {} more bytes)",
                buf.len()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn frame<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, BackupError> {
        let mut len = [0u8; 4];
        self.exact(&mut len).await?;
        let len = u32::from_be_bytes(len);
        if len > MAX_RECORD {
            return Err(self.corrupt(format!(
                "a record claims {len} bytes (limit {MAX_RECORD}): damaged length"
            )));
        }
        let mut body = vec![0u8; len as usize];
        let at = self.offset;
        self.exact(&mut body).await?;
        bincode::deserialize(&body).map_err(|e| BackupError::Corrupt {
            what: self.what,
            offset: at,
            detail: format!("undecodable record: {e}"),
        })
    }

    /// Reads the checksum and checks it, and that the file ends there. Returns it
    /// (hex) and the size of the whole file.
    pub(crate) async fn finish(mut self) -> Result<(String, u64), BackupError> {
        let expected = std::mem::replace(
            &mut self.hash,
            ring::digest::Context::new(&ring::digest::SHA256),
        )
        .finish();
        let mut found = [0u8; DIGEST_LEN];
        match self.inner.read_exact(&mut found).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(self.corrupt("truncated: the checksum at the end is missing"));
            }
            Err(e) => return Err(e.into()),
        }
        if found != expected.as_ref() {
            return Err(self.corrupt(
                "checksum mismatch: the content was changed or damaged after it was written",
            ));
        }
        self.offset += DIGEST_LEN as u64;
        let mut extra = [0u8; 1];
        if self.inner.read(&mut extra).await? != 0 {
            return Err(self.corrupt("unexpected bytes after the checksum"));
        }
        Ok((hex(expected.as_ref()), self.offset))
    }
}

/// Writes a backup to any byte sink.
pub struct BackupWriter<W> {
    frames: FrameWriter<W>,
    header: BackupHeader,
    count: u64,
    last_key: Option<String>,
    /// Format 2: the partition count, and the revision of each partition begun.
    partitions: Option<(u32, std::collections::BTreeMap<u32, u64>)>,
}

impl<W: AsyncWrite + Unpin> BackupWriter<W> {
    /// A backup of a cluster of one partition (format 1).
    pub async fn new(out: W, header: BackupHeader) -> Result<Self, BackupError> {
        let mut frames = FrameWriter::start(out, MAGIC, UNPARTITIONED_VERSION).await?;
        frames.frame(&Record::Header(header.clone())).await?;
        Ok(Self {
            frames,
            header,
            count: 0,
            last_key: None,
            partitions: None,
        })
    }

    /// A backup of a cluster of `count` partitions (format 2); each partition's
    /// keys follow [`Self::partition`].
    pub async fn partitioned(
        out: W,
        header: BackupHeader,
        count: u32,
    ) -> Result<Self, BackupError> {
        let mut frames = FrameWriter::start(out, MAGIC, FORMAT_VERSION).await?;
        frames.frame(&Record::Header(header.clone())).await?;
        frames.frame(&Record::Partitions { count }).await?;
        Ok(Self {
            frames,
            header,
            count: 0,
            last_key: None,
            partitions: Some((count, std::collections::BTreeMap::new())),
        })
    }

    /// Begins partition `partition`'s keys, at `revision`: partitions in
    /// increasing order, each at most once.
    pub async fn partition(&mut self, partition: u32, revision: u64) -> Result<(), BackupError> {
        let Some((count, begun)) = self.partitions.as_mut() else {
            return Err(BackupError::Encode(
                "a backup of one partition has no partition sections".into(),
            ));
        };
        if partition >= *count || begun.keys().next_back().is_some_and(|p| *p >= partition) {
            return Err(BackupError::Encode(format!(
                "partition {partition} out of order or out of range (0..{count})"
            )));
        }
        begun.insert(partition, revision);
        self.frames
            .frame(&Record::Partition {
                partition,
                revision,
            })
            .await?;
        self.last_key = None;
        Ok(())
    }

    /// Appends one key; keys must come in strictly increasing order (within
    /// their partition, in a partitioned backup).
    pub async fn kv(&mut self, kv: &StoredKv) -> Result<(), BackupError> {
        if self
            .partitions
            .as_ref()
            .is_some_and(|(_, begun)| begun.is_empty())
        {
            return Err(BackupError::Encode(
                "a key before the first partition section".into(),
            ));
        }
        if self.last_key.as_ref().is_some_and(|k| *k >= kv.key) {
            return Err(BackupError::Encode(format!(
                "keys out of order at {:?}",
                kv.key
            )));
        }
        self.frames.frame(&RecordRef::Kv(kv)).await?;
        self.count += 1;
        self.last_key = Some(kv.key.clone());
        Ok(())
    }

    /// Writes the trailer and checksum; returns the sink and the summary.
    pub async fn finish(mut self) -> Result<(W, BackupSummary), BackupError> {
        self.frames
            .frame(&Record::End { count: self.count })
            .await?;
        let (out, bytes, sha256) = self.frames.finish().await?;
        Ok((
            out,
            BackupSummary {
                header: self.header,
                keys: self.count,
                bytes,
                sha256,
                partitions: self.partitions.map(|(_, begun)| begun),
            },
        ))
    }
}

/// `Record::Kv` by reference (same encoding: variant index 1, then the key).
#[derive(Serialize)]
enum RecordRef<'a> {
    #[allow(dead_code)]
    Header(&'a BackupHeader),
    Kv(&'a StoredKv),
}

/// Reads a backup from any byte source, checking it as it goes.
pub struct BackupReader<R> {
    frames: Option<FrameReader<R>>,
    header: BackupHeader,
    seen: u64,
    last_key: Option<String>,
    /// Checksum (hex) and size, once the end checked out.
    end: Option<(String, u64)>,
    /// Format 2: the partition count, and each partition's revision as its
    /// section is reached.
    partitions: Option<(u32, std::collections::BTreeMap<u32, u64>)>,
    /// The partition whose keys are being read (format 2).
    current: Option<u32>,
}

impl<R: AsyncRead + Unpin> BackupReader<R> {
    /// Reads and checks the magic, version and header.
    pub async fn open(inner: R) -> Result<Self, BackupError> {
        let (mut frames, version) =
            FrameReader::start(inner, MAGIC, FORMAT_VERSION, "backup").await?;
        let header = match frames.frame::<Record>().await? {
            Record::Header(h) => h,
            _ => return Err(frames.corrupt("the first record is not the header")),
        };
        let partitions = if version >= 2 {
            match frames.frame::<Record>().await? {
                Record::Partitions { count } if count > 0 => {
                    Some((count, std::collections::BTreeMap::new()))
                }
                _ => {
                    return Err(frames.corrupt(
                        "a partitioned backup's second record is not the partition count",
                    ));
                }
            }
        } else {
            None
        };
        Ok(Self {
            frames: Some(frames),
            header,
            seen: 0,
            last_key: None,
            end: None,
            partitions,
            current: None,
        })
    }

    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// A partitioned cluster's backup: its partition count.
    pub fn partition_count(&self) -> Option<u32> {
        self.partitions.as_ref().map(|(c, _)| *c)
    }

    /// The partition of the key [`Self::next_kv`] returned last, and its
    /// revision (a partitioned cluster's backup).
    pub fn partition(&self) -> Option<(u32, u64)> {
        let p = self.current?;
        let r = self.partitions.as_ref()?.1.get(&p).copied()?;
        Some((p, r))
    }

    /// The next key; `None` once the trailer, count, checksum and end of file checked out.
    pub async fn next_kv(&mut self) -> Result<Option<StoredKv>, BackupError> {
        let Some(frames) = self.frames.as_mut() else {
            return Ok(None);
        };
        let mut record = frames.frame::<Record>().await?;
        // Partition sections (format 2) are read through to their keys.
        while let Record::Partition {
            partition,
            revision,
        } = record
        {
            let Some((count, seen)) = self.partitions.as_mut() else {
                return Err(frames.corrupt("a partition section in a backup of one partition"));
            };
            if partition >= *count || seen.keys().next_back().is_some_and(|p| *p >= partition) {
                return Err(frames.corrupt(format!(
                    "partition {partition} out of order or out of range (0..{count})"
                )));
            }
            seen.insert(partition, revision);
            self.current = Some(partition);
            self.last_key = None;
            record = frames.frame::<Record>().await?;
        }
        match record {
            Record::Kv(_) if self.partitions.is_some() && self.current.is_none() => {
                Err(frames.corrupt("a key before the first partition section"))
            }
            Record::Kv(kv) => {
                if self.last_key.as_ref().is_some_and(|k| *k >= kv.key) {
                    return Err(frames.corrupt(format!("key {:?} out of order", kv.key)));
                }
                self.seen += 1;
                self.last_key = Some(kv.key.clone());
                Ok(Some(kv))
            }
            Record::End { .. }
                if self
                    .partitions
                    .as_ref()
                    .is_some_and(|(count, seen)| seen.len() != *count as usize) =>
            {
                let (count, seen) = self
                    .partitions
                    .as_ref()
                    .map_or((0, 0), |(c, s)| (*c, s.len()));
                Err(frames.corrupt(format!("the backup holds {seen} of its {count} partitions")))
            }
            Record::End { count } if count == self.seen => {
                let frames = self
                    .frames
                    .take()
                    .ok_or(BackupError::Encode("reader state".into()))?;
                self.end = Some(frames.finish().await?);
                Ok(None)
            }
            Record::End { count } => Err(frames.corrupt(format!(
                "the trailer counts {count} keys but the file holds {}",
                self.seen
            ))),
            Record::Header(_) => Err(frames.corrupt("a second header")),
            Record::Partitions { .. } => Err(frames.corrupt("a second partition count")),
            Record::Partition { .. } => Err(frames.corrupt("a partition section out of place")),
        }
    }

    /// Reads the rest and returns the summary: a full check of the file.
    pub async fn verify(mut self) -> Result<BackupSummary, BackupError> {
        while self.next_kv().await?.is_some() {}
        self.summary()
    }

    /// The summary, once every key was read.
    pub fn summary(&self) -> Result<BackupSummary, BackupError> {
        let (sha256, bytes) = self
            .end
            .clone()
            .ok_or(BackupError::Encode("summary before the end".into()))?;
        Ok(BackupSummary {
            header: self.header.clone(),
            keys: self.seen,
            bytes,
            sha256,
            partitions: self.partitions.as_ref().map(|(_, seen)| seen.clone()),
        })
    }
}
