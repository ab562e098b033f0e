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

use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use super::BackupError;
use crate::record::StoredKv;

const MAGIC: &[u8; 8] = b"KVBACKUP";
/// The newest format this build reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;
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

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Header(BackupHeader),
    Kv(StoredKv),
    End { count: u64 },
}

/// What a finished or verified backup amounts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub header: BackupHeader,
    pub keys: u64,
    pub bytes: u64,
    /// SHA-256 of the content (hex): the backup's identity.
    pub sha256: String,
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
}

impl<W: AsyncWrite + Unpin> BackupWriter<W> {
    pub async fn new(out: W, header: BackupHeader) -> Result<Self, BackupError> {
        let mut frames = FrameWriter::start(out, MAGIC, FORMAT_VERSION).await?;
        frames.frame(&Record::Header(header.clone())).await?;
        Ok(Self {
            frames,
            header,
            count: 0,
            last_key: None,
        })
    }

    /// Appends one key; keys must come in strictly increasing order.
    pub async fn kv(&mut self, kv: &StoredKv) -> Result<(), BackupError> {
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
}

impl<R: AsyncRead + Unpin> BackupReader<R> {
    /// Reads and checks the magic, version and header.
    pub async fn open(inner: R) -> Result<Self, BackupError> {
        let (mut frames, _version) =
            FrameReader::start(inner, MAGIC, FORMAT_VERSION, "backup").await?;
        let header = match frames.frame::<Record>().await? {
            Record::Header(h) => h,
            _ => return Err(frames.corrupt("the first record is not the header")),
        };
        Ok(Self {
            frames: Some(frames),
            header,
            seen: 0,
            last_key: None,
            end: None,
        })
    }

    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The next key; `None` once the trailer, count, checksum and end of file checked out.
    pub async fn next_kv(&mut self) -> Result<Option<StoredKv>, BackupError> {
        let Some(frames) = self.frames.as_mut() else {
            return Ok(None);
        };
        match frames.frame::<Record>().await? {
            Record::Kv(kv) => {
                if self.last_key.as_ref().is_some_and(|k| *k >= kv.key) {
                    return Err(frames.corrupt(format!("key {:?} out of order", kv.key)));
                }
                self.seen += 1;
                self.last_key = Some(kv.key.clone());
                Ok(Some(kv))
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
        })
    }
}
