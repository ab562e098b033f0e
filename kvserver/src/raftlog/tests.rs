//! The log engine against its own files: restarts replay exactly what was
//! acknowledged, across rotation, segment deletion and several groups; torn
//! tails recover, corruption before the tail refuses; one sync serves many
//! groups' appends; identity and the directory lock hold.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::*;

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        cache_bytes_per_group: 1024,
        identity: LogOptions::identity_of("test", 1),
        metrics: None,
    }
}

fn value(group: u64, index: u64) -> Bytes {
    Bytes::from(format!(
        "g{group}-i{index}-{}",
        "x".repeat((index % 50) as usize)
    ))
}

/// Appends `range` to `group` and waits until durable.
async fn append(e: &Engine, group: u64, range: std::ops::RangeInclusive<u64>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let rows = range.map(|i| (i, value(group, i))).collect();
    e.append(
        group,
        rows,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    )
    .expect("append");
    rx.await.expect("callback").expect("durable");
}

fn read_all(e: &Engine, group: u64) -> Vec<Bytes> {
    e.read(group, 0, u64::MAX).expect("read")
}

fn expect(group: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Bytes> {
    range.map(|i| value(group, i)).collect()
}

#[tokio::test]
async fn restarts_replay_exactly_the_log_across_rotation_and_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), opts(8 * 1024)).expect("open");
    for chunk in 0..20u64 {
        let from = chunk * 25 + 1;
        append(&e, 1, from..=from + 24).await;
        append(&e, 2, from..=from + 24).await;
    }
    e.save_vote(1, Bytes::from_static(b"vote-1"))
        .await
        .expect("vote");
    e.truncate(2, 480).await.expect("truncate");
    append(&e, 2, 480..=485).await;
    let many = e.segments().len();
    assert!(many > 5, "rotated: {many} segments");
    // Purging most of both groups lets the oldest segments go.
    e.purge(1, 400, Bytes::from_static(b"p400"))
        .await
        .expect("purge");
    e.purge(2, 400, Bytes::from_static(b"p400"))
        .await
        .expect("purge");
    append(&e, 1, 501..=502).await;
    let after = e.segments();
    assert!(after.len() < many, "deleted dead segments: {after:?}");
    e.close();

    let e = Engine::open(dir.path(), opts(8 * 1024)).expect("reopen");
    assert_eq!(read_all(&e, 1), expect(1, 401..=502));
    assert_eq!(read_all(&e, 2), expect(2, 401..=485));
    assert_eq!(e.vote(1), Some(Bytes::from_static(b"vote-1")));
    assert_eq!(e.vote(2), None);
    let s = e.state(2);
    assert_eq!((s.last, s.purged.map(|p| p.0)), (Some(485), Some(400)));
    assert_eq!(e.read(1, 450, 452).expect("range"), expect(1, 450..=451));
    e.close();
}

#[tokio::test]
async fn a_purge_past_the_end_and_a_full_truncation_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), opts(64 * 1024)).expect("open");
    append(&e, 0, 1..=10).await;
    // A snapshot install: the marker moves past every entry.
    e.purge(0, 20, Bytes::from_static(b"p20"))
        .await
        .expect("purge");
    append(&e, 0, 21..=22).await;
    e.truncate(0, 0).await.expect("truncate all");
    e.save_committed(0, Bytes::from_static(b"c"))
        .await
        .expect("committed");
    e.flush().await.expect("flush");
    e.close();
    let e = Engine::open(dir.path(), opts(64 * 1024)).expect("reopen");
    assert!(read_all(&e, 0).is_empty());
    let s = e.state(0);
    assert_eq!((s.last, s.purged.map(|p| p.0)), (None, Some(20)));
    assert_eq!(e.committed(0), Some(Bytes::from_static(b"c")));
}

#[tokio::test]
async fn a_segment_emptied_by_a_purge_recorded_after_the_next_header_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), opts(4 * 1024)).expect("open");
    append(&e, 0, 1..=5).await;
    // An older marker, which segment 2's header will carry.
    e.purge(0, 2, Bytes::from_static(b"p2"))
        .await
        .expect("purge");
    let mut last = 5;
    while e.segments().len() < 2 {
        append(&e, 0, last + 1..=last + 5).await;
        last += 5;
    }
    // Segment 1 holds 1..=last-5; the purge of exactly those goes after segment
    // 2's header, whose marker is older; the next batch deletes segment 1.
    e.purge(0, last - 5, Bytes::from_static(b"p"))
        .await
        .expect("purge");
    append(&e, 0, last + 1..=last + 1).await;
    assert_eq!(e.segments(), vec![2], "segment 1 deleted");
    e.close();
    let e = Engine::open(dir.path(), opts(4 * 1024)).expect("reopen");
    assert_eq!(read_all(&e, 0), expect(0, last - 4..=last + 1));
    assert_eq!(e.state(0).purged.map(|p| p.0), Some(last - 5));
}

/// The last segment's file and the offset where its last frame starts.
fn last_frame(dir: &Path) -> (std::path::PathBuf, u64, u64) {
    let n = *segment::list(dir).expect("list").last().expect("a segment");
    let path = segment::path(dir, n);
    let s = segment::scan(&path, None, true).expect("scan");
    let f = s.frames.last().expect("a frame");
    (path, f.payload_at - frame::FRAME_HEADER as u64, s.end)
}

#[tokio::test]
async fn a_torn_or_flipped_tail_recovers_what_is_valid() {
    for damage in ["truncate", "flip"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Engine::open(dir.path(), opts(1 << 20)).expect("open");
        append(&e, 0, 1..=10).await;
        append(&e, 0, 11..=20).await;
        e.close();
        let (path, at, end) = last_frame(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        match damage {
            // A crash mid-write: the frame's second half never reached the disk.
            "truncate" => bytes[((at + end) / 2) as usize..end as usize].fill(0),
            _ => bytes[(end - 3) as usize] ^= 0x5a,
        }
        std::fs::write(&path, &bytes).expect("write");
        let e = Engine::open(dir.path(), opts(1 << 20)).expect("recovers");
        assert_eq!(read_all(&e, 0), expect(0, 1..=10), "{damage}");
        // The log goes on from there, and the next start sees it whole.
        append(&e, 0, 11..=12).await;
        e.close();
        let e = Engine::open(dir.path(), opts(1 << 20)).expect("reopen");
        assert_eq!(read_all(&e, 0), expect(0, 1..=12), "{damage}");
    }
}

#[tokio::test]
async fn corruption_before_the_tail_refuses_to_start_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), opts(1 << 20)).expect("open");
    append(&e, 0, 1..=10).await;
    append(&e, 0, 11..=20).await;
    append(&e, 0, 21..=30).await;
    e.close();
    let n = *segment::list(dir.path())
        .expect("list")
        .last()
        .expect("segment");
    let path = segment::path(dir.path(), n);
    let s = segment::scan(&path, None, true).expect("scan");
    // The frame holding 11..=20 (after the header and 1..=10).
    let victim = &s.frames[2];
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[(victim.payload_at + 40) as usize] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    match Engine::open(dir.path(), opts(1 << 20)) {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, path);
            assert_eq!(offset, victim.payload_at - frame::FRAME_HEADER as u64);
            let msg = LogError::Corrupt {
                file,
                offset,
                detail: String::new(),
            }
            .to_string();
            assert!(msg.contains(&path.display().to_string()) && msg.contains(&offset.to_string()));
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
}

#[tokio::test]
async fn one_sync_covers_many_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), opts(64 << 20)).expect("open");
    let before = e.stats().syncs;
    let done = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // 16 groups x 50 appends queued back to back, as partitions' leaders would.
    for round in 1..=50u64 {
        for g in 0..16u64 {
            let (done, tx) = (done.clone(), tx.clone());
            e.append(
                g,
                vec![(round, value(g, round))],
                Box::new(move |r| {
                    r.expect("durable");
                    if done.fetch_add(1, Ordering::SeqCst) + 1 == 800 {
                        let _ = tx.send(());
                    }
                }),
            )
            .expect("append");
        }
    }
    rx.recv().await.expect("all durable");
    let syncs = e.stats().syncs - before;
    assert!(
        syncs < 800 / 4,
        "{syncs} syncs for 800 appends of 16 groups"
    );
    for g in 0..16 {
        assert_eq!(read_all(&e, g), expect(g, 1..=50));
    }
}

#[tokio::test]
async fn a_dropped_group_is_gone_after_restart_and_frees_its_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), opts(8 * 1024)).expect("open");
    for chunk in 0..10u64 {
        let from = chunk * 25 + 1;
        append(&e, 1, from..=from + 24).await;
        append(&e, 2, from..=from + 24).await;
    }
    e.save_vote(2, Bytes::from_static(b"vote-2"))
        .await
        .expect("vote");
    e.purge(2, 10, Bytes::from_static(b"p10"))
        .await
        .expect("purge");
    e.purge(1, 240, Bytes::from_static(b"p240"))
        .await
        .expect("purge");
    let many = e.segments().len();
    e.drop_group(2).await.expect("drop");
    assert!(read_all(&e, 2).is_empty());
    assert_eq!(e.vote(2), None);
    assert!(!e.groups().contains(&2), "{:?}", e.groups());
    // Rotate past the old segments: they held only dead entries now.
    append(&e, 1, 251..=400).await;
    let after = e.segments().len();
    assert!(after < many + 3, "freed segments: {many} -> {after}");
    // The group comes back as a new log.
    append(&e, 2, 1..=3).await;
    e.close();

    let e = Engine::open(dir.path(), opts(8 * 1024)).expect("reopen");
    assert_eq!(read_all(&e, 1), expect(1, 241..=400));
    assert_eq!(read_all(&e, 2), expect(2, 1..=3));
    let s = e.state(2);
    assert_eq!((s.last, s.purged), (Some(3), None));
    assert_eq!(e.vote(2), None);
    e.drop_group(2).await.expect("drop again");
    e.close();
    let e = Engine::open(dir.path(), opts(8 * 1024)).expect("reopen");
    assert!(!e.groups().contains(&2));
    assert_eq!(read_all(&e, 1), expect(1, 241..=400));
}

#[tokio::test]
async fn identity_and_lock_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), opts(64 * 1024)).expect("open");
    assert!(matches!(
        Engine::open(dir.path(), opts(64 * 1024)),
        Err(LogError::Locked(_))
    ));
    append(&e, 0, 1..=3).await;
    e.close();
    drop(e);
    let other = LogOptions {
        identity: LogOptions::identity_of("other", 1),
        ..opts(64 * 1024)
    };
    assert!(matches!(
        Engine::open(dir.path(), other),
        Err(LogError::Identity { .. })
    ));
    assert_eq!(
        stored_identity(dir.path()).expect("identity"),
        Some(LogOptions::identity_of("test", 1))
    );
}

mod model {
    //! Random appends, truncations, purges (including past the end) and votes on
    //! four groups sharing a log of tiny segments, reopened at random points: every
    //! reopen replays exactly the state a plain in-memory model holds.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        Append { group: u64, n: u64 },
        Truncate { group: u64, back: u64 },
        Purge { group: u64, upto: u64 },
        Vote { group: u64 },
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0..4u64, 1..12u64).prop_map(|(group, n)| Step::Append { group, n }),
            1 => (0..4u64, 1..6u64).prop_map(|(group, back)| Step::Truncate { group, back }),
            2 => (0..4u64, 0..40u64).prop_map(|(group, upto)| Step::Purge { group, upto }),
            1 => (0..4u64).prop_map(|group| Step::Vote { group }),
            1 => Just(Step::Reopen),
        ]
    }

    #[derive(Default, Debug, Clone, PartialEq)]
    struct Model {
        /// index -> value
        entries: BTreeMap<u64, Bytes>,
        purged: Option<u64>,
        vote: Option<Bytes>,
    }

    fn check(e: &Engine, models: &BTreeMap<u64, Model>) -> Result<(), TestCaseError> {
        for (g, m) in models {
            let want: Vec<Bytes> = m.entries.values().cloned().collect();
            prop_assert_eq!(read_all(e, *g), want, "group {}", g);
            let s = e.state(*g);
            prop_assert_eq!(s.purged.map(|p| p.0), m.purged, "group {} purged", g);
            prop_assert_eq!(e.vote(*g), m.vote.clone(), "group {} vote", g);
        }
        Ok(())
    }

    async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = || LogOptions {
            cache_bytes_per_group: 64,
            ..opts(1024)
        };
        let mut e = Engine::open(dir.path(), o()).expect("open");
        let mut models: BTreeMap<u64, Model> = BTreeMap::new();
        let mut votes = 0u64;
        for s in steps {
            match s {
                Step::Append { group, n } => {
                    let m = models.entry(group).or_default();
                    let from = m
                        .entries
                        .keys()
                        .next_back()
                        .copied()
                        .or(m.purged)
                        .map_or(1, |l| l + 1);
                    for i in from..from + n {
                        m.entries.insert(i, value(group, i));
                    }
                    append(&e, group, from..=from + n - 1).await;
                }
                Step::Truncate { group, back } => {
                    let m = models.entry(group).or_default();
                    let Some(last) = m.entries.keys().next_back().copied() else {
                        continue;
                    };
                    let from = last
                        .saturating_sub(back - 1)
                        .max(m.purged.map_or(0, |p| p + 1));
                    m.entries.retain(|i, _| *i < from);
                    e.truncate(group, from).await.expect("truncate");
                }
                Step::Purge { group, upto } => {
                    let m = models.entry(group).or_default();
                    if m.purged.is_some_and(|p| p >= upto) {
                        continue;
                    }
                    m.purged = Some(upto);
                    m.entries.retain(|i, _| *i > upto);
                    e.purge(group, upto, Bytes::from(format!("p{upto}")))
                        .await
                        .expect("purge");
                }
                Step::Vote { group } => {
                    votes += 1;
                    let v = Bytes::from(format!("vote{votes}"));
                    models.entry(group).or_default().vote = Some(v.clone());
                    e.save_vote(group, v).await.expect("vote");
                }
                Step::Reopen => {
                    e.flush().await.expect("flush");
                    e.close();
                    e = Engine::open(dir.path(), o()).expect("reopen");
                    check(&e, &models)?;
                }
            }
        }
        e.flush().await.expect("flush");
        e.close();
        let e = Engine::open(dir.path(), o()).expect("final reopen");
        check(&e, &models)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn every_reopen_replays_the_model(steps in proptest::collection::vec(step(), 1..120)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(run(steps))?;
        }
    }
}
