//! The snapshot file: a streamable dump of the state machine at one log id.
//!
//! A snapshot lives in `data_dir/snapshots/` as a sequence of length-prefixed
//! bincode records (`Header`, one `Kv` per key, `End`), written to a temporary
//! file, fsynced and renamed, so a crash never leaves a half-written snapshot
//! under a final name. Files are read and written record by record, so neither
//! building, sending nor installing a snapshot holds the whole state in memory.
//! The `End` record carries the key count: a truncated transfer is detected.

use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;

use super::StoreError;
use crate::command::StoredKv;

const MAGIC: &[u8; 8] = b"KVSNAP01";
/// Upper bound of one record: a key (4 KiB) plus the largest value we could ever accept.
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// One record of a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
pub enum Record {
    Header {
        revision: u64,
    },
    Kv(StoredKv),
    End {
        count: u64,
    },
    /// The placement map the state machine held (the cluster group's, with
    /// partitions): after the header, before the keys. Absent without one.
    Placement(crate::placement::map::PlacementMap),
}

/// An open snapshot file: what openraft carries around as `SnapshotData`.
///
/// It holds an open handle, so the bytes stay readable even when a newer
/// snapshot replaces (unlinks) this file while it is being sent.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: tokio::fs::File,
}

impl SnapshotFile {
    /// Opens an existing snapshot file for reading from the start.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let file = tokio::fs::File::open(path).await?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Size in bytes.
    pub async fn len(&self) -> Result<u64, StoreError> {
        Ok(self.file.metadata().await?.len())
    }

    /// Whether the file is empty.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    /// Reads and validates the whole file record by record.
    pub fn reader(self) -> SnapshotReader {
        SnapshotReader {
            inner: BufReader::new(self.file),
            started: false,
            seen: 0,
            done: false,
            placement: None,
        }
    }
}

/// Writes a snapshot into a temporary file next to its final place.
pub struct SnapshotWriter {
    tmp_path: PathBuf,
    out: BufWriter<tokio::fs::File>,
    count: u64,
}

impl SnapshotWriter {
    pub async fn create(dir: &Path, revision: u64) -> Result<Self, StoreError> {
        let tmp_path = dir.join(format!("{}.tmp", uuid::Uuid::new_v4()));
        let file = tokio::fs::File::create(&tmp_path).await?;
        let mut w = Self {
            tmp_path,
            out: BufWriter::new(file),
            count: 0,
        };
        w.out.write_all(MAGIC).await?;
        w.record(&Record::Header { revision }).await?;
        Ok(w)
    }

    async fn record(&mut self, rec: &Record) -> Result<(), StoreError> {
        let bytes = super::encode(rec)?;
        self.out.write_u32(bytes.len() as u32).await?;
        self.out.write_all(&bytes).await?;
        Ok(())
    }

    /// Records the placement map; called before the first key.
    pub async fn placement(
        &mut self,
        map: &crate::placement::map::PlacementMap,
    ) -> Result<(), StoreError> {
        self.record(&Record::Placement(map.clone())).await
    }

    pub async fn kv(&mut self, kv: StoredKv) -> Result<(), StoreError> {
        self.count += 1;
        self.record(&Record::Kv(kv)).await
    }

    /// Writes the trailer, fsyncs, and renames the file to `final_path`.
    pub async fn finish(mut self, final_path: &Path) -> Result<SnapshotFile, StoreError> {
        let count = self.count;
        self.record(&Record::End { count }).await?;
        self.out.flush().await?;
        let file = self.out.into_inner();
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.tmp_path, final_path).await?;
        if let Some(dir) = final_path.parent() {
            sync_dir(dir).await;
        }
        SnapshotFile::open(final_path).await
    }
}

/// Reads records back, checking framing, magic and trailer.
pub struct SnapshotReader {
    inner: BufReader<tokio::fs::File>,
    started: bool,
    seen: u64,
    done: bool,
    /// The placement map, once read (it precedes the keys).
    pub placement: Option<crate::placement::map::PlacementMap>,
}

impl SnapshotReader {
    /// The next key, `None` after a valid trailer. The header's revision is
    /// returned through [`SnapshotReader::header`] first.
    pub async fn header(&mut self) -> Result<u64, StoreError> {
        let mut magic = [0u8; 8];
        self.inner
            .read_exact(&mut magic)
            .await
            .map_err(|e| corrupt(format!("missing magic: {e}")))?;
        if &magic != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        self.started = true;
        match self.read_record().await? {
            Record::Header { revision } => Ok(revision),
            other => Err(corrupt(format!("expected header, got {other:?}"))),
        }
    }

    pub async fn next_kv(&mut self) -> Result<Option<StoredKv>, StoreError> {
        if !self.started {
            return Err(corrupt("header not read".into()));
        }
        if self.done {
            return Ok(None);
        }
        let mut record = self.read_record().await?;
        if let Record::Placement(map) = record {
            if self.seen > 0 || self.placement.is_some() {
                return Err(corrupt("a placement record after the first key".into()));
            }
            self.placement = Some(map);
            record = self.read_record().await?;
        }
        match record {
            Record::Kv(kv) => {
                self.seen += 1;
                Ok(Some(kv))
            }
            Record::End { count } if count == self.seen => {
                self.done = true;
                Ok(None)
            }
            Record::End { count } => Err(corrupt(format!(
                "trailer says {count} keys, file has {}",
                self.seen
            ))),
            Record::Header { .. } => Err(corrupt("second header".into())),
            Record::Placement(_) => Err(corrupt("a second placement record".into())),
        }
    }

    async fn read_record(&mut self) -> Result<Record, StoreError> {
        let len = self
            .inner
            .read_u32()
            .await
            .map_err(|e| corrupt(format!("truncated: {e}")))?;
        if len > MAX_RECORD {
            return Err(corrupt(format!("record of {len} bytes exceeds limit")));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .await
            .map_err(|e| corrupt(format!("truncated: {e}")))?;
        super::decode("snapshot record", &buf)
    }
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        what: "snapshot".into(),
        detail,
    }
}

/// fsync a directory so a rename in it is durable; best effort.
async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

/// Removes leftovers of interrupted snapshot writes or transfers.
pub fn remove_temp_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A fresh temporary path in `dir` for receiving a snapshot over the network.
pub fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{}.tmp", uuid::Uuid::new_v4()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, expires: Option<u64>) -> StoredKv {
        StoredKv {
            key: key.into(),
            value: format!("value of {key}"),
            create_revision: 1,
            mod_revision: 2,
            version: 2,
            expires_at_ms: expires,
            created_at_ms: 10,
            updated_at_ms: 20,
        }
    }

    /// Reads a whole snapshot file: the keys, or the first error.
    async fn read_all(path: &Path) -> Result<(u64, Vec<StoredKv>), StoreError> {
        let mut r = SnapshotFile::open(path).await?.reader();
        let revision = r.header().await?;
        let mut keys = Vec::new();
        while let Some(k) = r.next_kv().await? {
            keys.push(k);
        }
        Ok((revision, keys))
    }

    /// Snapshot files written by earlier releases (and sent by older peers) must
    /// still read: a key record is bincode of its variant index and the fields in
    /// this order, whatever the type is called.
    #[test]
    fn key_records_keep_their_format() {
        let k = kv("a/b", Some(99));
        let ours = crate::store::encode(&Record::Kv(k.clone())).expect("encode");
        let expected = bincode::serialize(&(
            1u32,
            k.key,
            k.value,
            k.create_revision,
            k.mod_revision,
            k.version,
            k.expires_at_ms,
            k.created_at_ms,
            k.updated_at_ms,
        ))
        .expect("encode");
        assert_eq!(ours, expected);
    }

    /// The placement map travels with the cluster group's snapshots, before the
    /// keys; a file without one (every snapshot before partitions) reads as before.
    #[tokio::test]
    async fn the_placement_map_travels_before_the_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let map = crate::placement::map::PlacementMap::initial(&[1, 2, 3].into(), 4, 3);
        let mut w = SnapshotWriter::create(dir.path(), 7).await.expect("create");
        w.placement(&map).await.expect("placement");
        w.kv(kv("a", None)).await.expect("kv");
        w.kv(kv("b", None)).await.expect("kv");
        let with = dir.path().join("with.snap");
        w.finish(&with).await.expect("finish");
        let mut r = SnapshotFile::open(&with).await.expect("open").reader();
        assert_eq!(r.header().await.expect("header"), 7);
        let mut keys = 0;
        while r.next_kv().await.expect("kv").is_some() {
            keys += 1;
        }
        assert_eq!((keys, r.placement), (2, Some(map)));

        let mut w = SnapshotWriter::create(dir.path(), 3).await.expect("create");
        w.kv(kv("a", None)).await.expect("kv");
        let without = dir.path().join("without.snap");
        w.finish(&without).await.expect("finish");
        let mut r = SnapshotFile::open(&without).await.expect("open").reader();
        r.header().await.expect("header");
        while r.next_kv().await.expect("kv").is_some() {}
        assert_eq!(r.placement, None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A snapshot stream from a peer is untrusted: any bytes after a valid
        /// magic (or none) decode to an error or to keys, never a panic.
        #[test]
        fn arbitrary_snapshot_bytes_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            with_magic in proptest::prelude::any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("x.snap");
            let mut bytes = if with_magic { MAGIC.to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&body);
            std::fs::write(&path, &bytes).expect("write");
            let _ = rt.block_on(read_all(&path));
        }

        /// Every strict prefix of a valid snapshot is refused, and a flipped byte
        /// never yields more keys than were written.
        #[test]
        fn truncated_or_damaged_snapshots_are_refused(
            n in 0usize..20,
            cut_at in proptest::prelude::any::<proptest::sample::Index>(),
            flip_at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("s.snap");
            rt.block_on(async {
                let mut w = SnapshotWriter::create(dir.path(), 7).await.expect("create");
                for i in 0..n {
                    w.kv(kv(&format!("k{i}"), None)).await.expect("kv");
                }
                w.finish(&path).await.expect("finish");
            });
            let bytes = std::fs::read(&path).expect("read");
            let cut = cut_at.index(bytes.len());
            let p2 = dir.path().join("cut.snap");
            std::fs::write(&p2, &bytes[..cut]).expect("write");
            assert!(rt.block_on(read_all(&p2)).is_err(), "prefix of {cut}/{} bytes accepted", bytes.len());
            let mut damaged = bytes.clone();
            let at = flip_at.index(damaged.len());
            damaged[at] ^= flip;
            std::fs::write(&p2, &damaged).expect("write");
            if let Ok((_, keys)) = rt.block_on(read_all(&p2)) {
                assert!(keys.len() <= n);
            }
        }
    }

    #[tokio::test]
    async fn roundtrip_and_truncation_detected() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let mut w = SnapshotWriter::create(dir.path(), 42).await?;
        let keys = vec![kv("a", None), kv("b/c", Some(99)), kv("ünï", None)];
        for k in &keys {
            w.kv(k.clone()).await?;
        }
        let path = dir.path().join("s.snap");
        let file = w.finish(&path).await?;
        let mut r = file.reader();
        assert_eq!(r.header().await?, 42);
        let mut back = Vec::new();
        while let Some(k) = r.next_kv().await? {
            back.push(k);
        }
        assert_eq!(back, keys);

        // Cut the trailer off: the reader must refuse the file instead of installing a prefix.
        let bytes = std::fs::read(&path)?;
        let cut = dir.path().join("cut.snap");
        std::fs::write(&cut, &bytes[..bytes.len() - 6])?;
        let mut r = SnapshotFile::open(&cut).await?.reader();
        r.header().await?;
        let mut err = None;
        for _ in 0..10 {
            match r.next_kv().await {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(err.is_some(), "truncated snapshot must fail to read");

        std::fs::write(&cut, b"NOTASNAPSHOT")?;
        assert!(
            SnapshotFile::open(&cut)
                .await?
                .reader()
                .header()
                .await
                .is_err()
        );
        Ok(())
    }
}
