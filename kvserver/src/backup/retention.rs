//! Retention: which full backups and segments to delete, by count and age.
//!
//! Pure: the destination's listing and the time go in, names to delete come
//! out. Rules: the newest full backup is always kept; otherwise a full backup
//! goes when it is beyond the newest `keep` or older than `max_age`. Labelled
//! backups (taken on demand, e.g. by a `KVClusterBackup`) are left to whoever
//! made them. Segments go once they end at or before the oldest full backup
//! kept: nothing can be restored from them (a restore needs a base before the
//! point), and every point after that base stays restorable.

use super::dest::FullEntry;
use super::dest::SegmentEntry;

/// How many full backups to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many (newest first); 0 = no count limit.
    pub keep: u32,
    /// Delete those older than this; `None` = no age limit.
    pub max_age_ms: Option<u64>,
}

/// What to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruning {
    pub full: Vec<String>,
    pub segments: Vec<String>,
}

/// Plans the deletions for `fulls` and `segments` at `now_ms`.
pub fn plan(fulls: &[FullEntry], segments: &[SegmentEntry], r: Retention, now_ms: u64) -> Pruning {
    let mut scheduled: Vec<&FullEntry> = fulls.iter().filter(|f| f.label.is_none()).collect();
    scheduled.sort_by_key(|f| std::cmp::Reverse((f.revision, f.taken_at_ms)));
    let mut out = Pruning::default();
    let mut oldest_kept: Option<u64> = None;
    for (i, f) in scheduled.iter().enumerate() {
        let too_many = r.keep > 0 && i >= r.keep as usize;
        let too_old = r
            .max_age_ms
            .is_some_and(|age| now_ms.saturating_sub(f.taken_at_ms) > age);
        if i > 0 && (too_many || too_old) {
            out.full.push(f.name.clone());
        } else {
            oldest_kept = Some(oldest_kept.map_or(f.revision, |o: u64| o.min(f.revision)));
        }
    }
    if let Some(base) = oldest_kept {
        out.segments = segments
            .iter()
            .filter(|s| s.upto <= base)
            .map(|s| s.name.clone())
            .collect();
    }
    out
}

/// Parses an age like `90m`, `36h`, `30d` or `45s` into milliseconds.
pub fn parse_age(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d), e.g. 36h"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(ms)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full(rev: u64, at: u64, label: Option<&str>) -> FullEntry {
        FullEntry {
            name: format!(
                "c/full/{rev}-{at}{}",
                label.map(|l| format!("-{l}")).unwrap_or_default()
            ),
            revision: rev,
            taken_at_ms: at,
            size: 1,
            label: label.map(str::to_string),
        }
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("90m"), Ok(5_400_000));
        assert_eq!(parse_age("30d"), Ok(2_592_000_000));
        assert!(parse_age("3 weeks").is_err());
        assert!(parse_age("h").is_err());
        assert!(parse_age("0s").is_err());
    }

    #[test]
    fn keeps_the_newest_by_count_and_age() {
        let fulls: Vec<_> = (1..=5).map(|i| full(i * 10, i * 1000, None)).collect();
        let segs: Vec<_> = (0..6)
            .map(|i| SegmentEntry {
                name: format!("s{i}"),
                after: i * 10,
                upto: i * 10 + 10,
            })
            .collect();
        let p = plan(
            &fulls,
            &segs,
            Retention {
                keep: 2,
                max_age_ms: None,
            },
            6000,
        );
        assert_eq!(
            p.full,
            vec!["c/full/30-3000", "c/full/20-2000", "c/full/10-1000"]
        );
        // The oldest kept base is at revision 40: segments ending at or before it go.
        assert_eq!(p.segments, vec!["s0", "s1", "s2", "s3"]);
        let p = plan(
            &fulls,
            &segs,
            Retention {
                keep: 0,
                max_age_ms: Some(2500),
            },
            6000,
        );
        assert_eq!(
            p.full,
            vec!["c/full/30-3000", "c/full/20-2000", "c/full/10-1000"]
        );
        // Everything too old: the newest stays anyway.
        let p = plan(
            &fulls,
            &segs,
            Retention {
                keep: 1,
                max_age_ms: Some(1),
            },
            1_000_000,
        );
        assert_eq!(p.full.len(), 4);
        assert!(!p.full.contains(&"c/full/50-5000".to_string()));
    }

    proptest! {
        #[test]
        fn never_deletes_the_newest_or_labelled_or_what_a_kept_base_needs(
            raw in proptest::collection::vec((1u64..1000, 0u64..100_000, any::<bool>()), 0..30),
            keep in 0u32..6,
            max_age in proptest::option::of(1u64..100_000),
            now in 0u64..200_000,
        ) {
            let fulls: Vec<_> = raw.iter().enumerate()
                .map(|(i, (rev, at, labelled))| full(*rev, *at, labelled.then(|| format!("l{i}")).as_deref()))
                .collect();
            let segs: Vec<_> = (0..100).map(|i| SegmentEntry { name: format!("s{i}"), after: i * 10, upto: i * 10 + 10 }).collect();
            let p = plan(&fulls, &segs, Retention { keep, max_age_ms: max_age }, now);
            let deleted: std::collections::HashSet<_> = p.full.iter().collect();
            let kept: Vec<_> = fulls.iter().filter(|f| f.label.is_none() && !deleted.contains(&f.name)).collect();
            for f in fulls.iter().filter(|f| f.label.is_some()) {
                prop_assert!(!deleted.contains(&f.name));
            }
            if fulls.iter().any(|f| f.label.is_none()) {
                let newest = fulls.iter().filter(|f| f.label.is_none()).max_by_key(|f| (f.revision, f.taken_at_ms)).expect("one");
                prop_assert!(!deleted.contains(&newest.name));
                if keep > 0 {
                    prop_assert!(kept.len() <= keep as usize);
                }
                let base = kept.iter().map(|f| f.revision).min().expect("kept");
                for s in &segs {
                    prop_assert_eq!(p.segments.contains(&s.name), s.upto <= base);
                }
            } else {
                prop_assert!(p.segments.is_empty());
            }
        }
    }
}
