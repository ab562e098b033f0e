//! Unit tests of the backup and segment formats: round trips, and every kind of
//! damage refused with a message that names it.

use super::BackupError;
use super::BackupHeader;
use super::BackupReader;
use super::BackupWriter;
use super::segment::Revision;
use super::segment::Segment;
use super::segment::SegmentHeader;
use crate::record::StoredKv;

fn kv(key: &str, rev: u64) -> StoredKv {
    StoredKv {
        key: key.into(),
        value: format!("value of {key}"),
        create_revision: 1,
        mod_revision: rev,
        version: rev,
        expires_at_ms: None,
        created_at_ms: 10,
        updated_at_ms: 20,
    }
}

fn header(revision: u64) -> BackupHeader {
    BackupHeader {
        cluster_id: "orders-1234abcd".into(),
        revision,
        taken_at_ms: 1_700_000_000_000,
        writer_version: "test".into(),
        node_id: 2,
    }
}

async fn write(n: usize) -> Vec<u8> {
    let mut w = BackupWriter::new(Vec::new(), header(99))
        .await
        .expect("new");
    for i in 0..n {
        w.kv(&kv(&format!("k{i:04}"), i as u64 + 1))
            .await
            .expect("kv");
    }
    w.finish().await.expect("finish").0
}

async fn read_all(bytes: &[u8]) -> Result<(BackupHeader, Vec<StoredKv>), BackupError> {
    let mut r = BackupReader::open(bytes).await?;
    let mut keys = Vec::new();
    while let Some(k) = r.next_kv().await? {
        keys.push(k);
    }
    Ok((r.header().clone(), keys))
}

#[tokio::test]
async fn roundtrip_keeps_header_keys_and_checksum() {
    let bytes = write(50).await;
    let (h, keys) = read_all(&bytes).await.expect("read");
    assert_eq!(h, header(99));
    assert_eq!(keys.len(), 50);
    assert_eq!(keys[7], kv("k0007", 8));
    let s = BackupReader::open(&bytes[..])
        .await
        .expect("open")
        .verify()
        .await
        .expect("verify");
    assert_eq!((s.keys, s.bytes), (50, bytes.len() as u64));
    assert_eq!(s.sha256.len(), 64);
}

#[tokio::test]
async fn newer_formats_and_other_files_are_refused_by_name() {
    let mut bytes = write(3).await;
    bytes[8..12].copy_from_slice(&3u32.to_be_bytes());
    let e = read_all(&bytes).await.expect_err("newer format");
    assert!(
        e.to_string().contains("format 3") && e.to_string().contains("reads up to 2"),
        "{e}"
    );
    let e = read_all(b"SQLite format 3\0....")
        .await
        .expect_err("not a backup");
    assert!(e.to_string().contains("not a backup"), "{e}");
}

#[tokio::test]
async fn keys_out_of_order_are_refused_by_the_writer() {
    let mut w = BackupWriter::new(Vec::new(), header(1)).await.expect("new");
    w.kv(&kv("b", 1)).await.expect("kv");
    assert!(w.kv(&kv("a", 1)).await.is_err());
    assert!(w.kv(&kv("b", 1)).await.is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Every strict prefix and every extension of a backup is refused, and so is
    /// any single flipped byte: the checksum covers everything.
    #[test]
    fn truncated_extended_or_flipped_backups_are_refused(
        n in 0usize..30,
        cut_at in proptest::prelude::any::<proptest::sample::Index>(),
        flip_at in proptest::prelude::any::<proptest::sample::Index>(),
        flip in 1u8..=255,
        extra in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let bytes = rt.block_on(write(n));
        let cut = cut_at.index(bytes.len());
        let e = rt.block_on(read_all(&bytes[..cut])).expect_err("prefix accepted");
        proptest::prop_assert!(e.to_string().contains("damaged") || e.to_string().contains("not a backup"), "{}", e);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        proptest::prop_assert!(rt.block_on(read_all(&longer)).is_err());
        let mut damaged = bytes.clone();
        damaged[flip_at.index(bytes.len())] ^= flip;
        proptest::prop_assert!(rt.block_on(read_all(&damaged)).is_err(), "flipped byte accepted");
    }

    /// The same for segments.
    #[test]
    fn truncated_or_flipped_segments_are_refused(
        n in 1u64..20,
        cut_at in proptest::prelude::any::<proptest::sample::Index>(),
        flip_at in proptest::prelude::any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let bytes = rt.block_on(segment(10, n).encode()).expect("encode");
        let cut = cut_at.index(bytes.len());
        proptest::prop_assert!(rt.block_on(Segment::decode(&bytes[..cut])).is_err());
        let mut damaged = bytes.clone();
        damaged[flip_at.index(bytes.len())] ^= flip;
        proptest::prop_assert!(rt.block_on(Segment::decode(&damaged)).is_err());
        proptest::prop_assert_eq!(rt.block_on(Segment::decode(&bytes)).expect("decode"), segment(10, n));
    }
}

fn segment(after: u64, n: u64) -> Segment {
    Segment {
        header: SegmentHeader {
            cluster_id: "c".into(),
            after,
            upto: after + n,
            writer_version: "test".into(),
        },
        revisions: (after + 1..=after + n)
            .map(|r| Revision {
                revision: r,
                at_ms: Some(1000 + r),
                changes: vec![(
                    format!("k{r}"),
                    (r % 3 != 0).then(|| kv(&format!("k{r}"), r)),
                )],
            })
            .collect(),
    }
}

#[tokio::test]
async fn segments_with_holes_or_repeats_are_refused() {
    let mut s = segment(5, 4);
    s.revisions.remove(2);
    let e = s.encode().await.expect_err("hole");
    assert!(e.to_string().contains("holds 3"), "{e}");
    let mut s = segment(5, 4);
    s.revisions[3].revision = 8;
    assert!(s.encode().await.is_err());
    let mut s = segment(5, 2);
    s.revisions[1].changes.clear();
    assert!(s.encode().await.is_err(), "a revision that changes nothing");
}

async fn write_partitioned(count: u32, sections: &[(u32, u64, &[&str])]) -> Vec<u8> {
    let mut w = BackupWriter::partitioned(Vec::new(), header(40), count)
        .await
        .expect("new");
    for (p, rev, keys) in sections {
        w.partition(*p, *rev).await.expect("section");
        for k in keys.iter() {
            w.kv(&kv(k, *rev)).await.expect("kv");
        }
    }
    w.finish().await.expect("finish").0
}

#[tokio::test]
async fn a_partitioned_backup_names_each_keys_partition_and_revision() {
    let bytes = write_partitioned(
        3,
        &[(0, 12, &["b", "d"]), (1, 40, &[]), (2, 7, &["a", "c"])],
    )
    .await;
    let mut r = BackupReader::open(&bytes[..]).await.expect("open");
    assert_eq!(r.partition_count(), Some(3));
    let mut got = Vec::new();
    while let Some(k) = r.next_kv().await.expect("kv") {
        got.push((r.partition(), k.key));
    }
    assert_eq!(
        got,
        vec![
            (Some((0, 12)), "b".to_string()),
            (Some((0, 12)), "d".into()),
            (Some((2, 7)), "a".into()),
            (Some((2, 7)), "c".into()),
        ]
    );
    let s = r.summary().expect("summary");
    assert_eq!(s.keys, 4);
    assert_eq!(
        s.partitions,
        Some(std::collections::BTreeMap::from([(0, 12), (1, 40), (2, 7)]))
    );
    // A backup of one partition reads as before: no partitions.
    let plain = BackupReader::open(&write(3).await[..])
        .await
        .expect("open")
        .verify()
        .await
        .expect("verify");
    assert_eq!(plain.partitions, None);
}

#[tokio::test]
async fn a_partitioned_backup_missing_a_partition_is_refused() {
    let bytes = write_partitioned(3, &[(0, 1, &["a"]), (2, 1, &["b"])]).await;
    let e = BackupReader::open(&bytes[..])
        .await
        .expect("open")
        .verify()
        .await
        .expect_err("a partition is missing");
    assert!(e.to_string().contains("holds 2 of its 3 partitions"), "{e}");
    // The writer refuses sections out of order and keys before any section.
    let mut w = BackupWriter::partitioned(Vec::new(), header(1), 2)
        .await
        .expect("new");
    assert!(w.kv(&kv("a", 1)).await.is_err());
    w.partition(1, 1).await.expect("section");
    assert!(w.partition(0, 1).await.is_err());
    assert!(w.partition(2, 1).await.is_err());
}
