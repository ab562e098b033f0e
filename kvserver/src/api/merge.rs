//! Merging the partitions' answers of a request that spans them (`super::range`):
//! listing pages in key order without skipping a key, batch gets in the order
//! asked, and the revisions each partition was read at. Pure functions.

use std::collections::BTreeMap;
use std::collections::HashMap;

use crate::model::BatchGetResponse;
use crate::model::KeyValue;
use crate::model::ListResponse;
use crate::placement::PartitionId;

/// `revision` and `revisions` of an answer made of `parts`.
pub fn revisions<T>(
    parts: &[(PartitionId, T)],
    rev: impl Fn(&T) -> u64,
) -> (u64, BTreeMap<u32, u64>) {
    let all: BTreeMap<u32, u64> = parts.iter().map(|(p, t)| (*p, rev(t))).collect();
    (all.values().copied().max().unwrap_or(0), all)
}

/// The page of a listing across partitions: the first `limit` keys of all the
/// partitions' pages in key order, within `max_bytes` of keys and values. There
/// are more when any partition had more or some were left out; the page's last
/// key is where the next one starts (every partition lists after it).
pub fn merge_pages(
    pages: Vec<(PartitionId, ListResponse)>,
    limit: usize,
    max_bytes: usize,
) -> ListResponse {
    let (revision, revs) = revisions(&pages, |p| p.revision);
    // A partition that had more than it sent holds keys after its last one: the
    // page may not pass the smallest such key, or a key would be skipped.
    let bound: Option<String> = pages
        .iter()
        .filter(|(_, p)| p.more)
        .filter_map(|(_, p)| p.kvs.last().map(|k| k.key.clone()))
        .min();
    let any_more = pages.iter().any(|(_, p)| p.more);
    let mut all: Vec<KeyValue> = pages.into_iter().flat_map(|(_, p)| p.kvs).collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let total = all.len();
    let mut kvs = Vec::new();
    let mut bytes = 0usize;
    for kv in all {
        if kvs.len() == limit || bound.as_ref().is_some_and(|b| kv.key > *b) {
            break;
        }
        let size = kv.key.len() + kv.value.as_ref().map_or(0, String::len);
        if !kvs.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        kvs.push(kv);
    }
    let more = any_more || kvs.len() < total;
    ListResponse {
        revision,
        node_id: 0,
        count: kvs.len(),
        next_start_after: if more {
            kvs.last().map(|k| k.key.clone())
        } else {
            None
        },
        kvs,
        more,
        revisions: Some(revs),
    }
}

/// The answer to a batch get of `asked` made of the partitions' answers, in the
/// order asked (each key once); `None` when the keys found hold more than
/// `max_bytes`.
pub fn merge_batches(
    asked: &[String],
    parts: Vec<(PartitionId, BatchGetResponse)>,
    max_bytes: usize,
) -> Option<BatchGetResponse> {
    let (revision, revs) = revisions(&parts, |b| b.revision);
    let mut found: HashMap<String, KeyValue> = HashMap::new();
    let mut missing: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (_, b) in parts {
        missing.extend(b.missing);
        for kv in b.kvs {
            found.insert(kv.key.clone(), kv);
        }
    }
    let size: usize = found
        .values()
        .map(|kv| kv.key.len() + kv.value.as_ref().map_or(0, String::len))
        .sum();
    if size > max_bytes {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let mut kvs = Vec::new();
    let mut gone = Vec::new();
    for k in asked {
        if !seen.insert(k.as_str()) {
            continue;
        }
        if let Some(kv) = found.remove(k) {
            kvs.push(kv);
        } else if missing.contains(k) {
            gone.push(k.clone());
        }
    }
    Some(BatchGetResponse {
        revision,
        node_id: 0,
        kvs,
        missing: gone,
        revisions: Some(revs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some("v".into()),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            expires_at_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn page(keys: &[&str], more: bool, revision: u64) -> ListResponse {
        ListResponse {
            revision,
            node_id: 1,
            count: keys.len(),
            kvs: keys.iter().map(|k| kv(k)).collect(),
            more,
            next_start_after: more.then(|| keys.last().map(|k| k.to_string())).flatten(),
            revisions: None,
        }
    }

    fn keys(r: &ListResponse) -> Vec<&str> {
        r.kvs.iter().map(|k| k.key.as_str()).collect()
    }

    #[test]
    fn pages_merge_in_key_order_and_never_skip_a_key() {
        // Partition 1 had more after "c": nothing past "c" may be on this page,
        // or its keys between "c" and them would be skipped.
        let merged = merge_pages(
            vec![
                (0, page(&["a", "d", "e"], false, 5)),
                (1, page(&["b", "c"], true, 9)),
            ],
            10,
            usize::MAX,
        );
        assert_eq!(keys(&merged), vec!["a", "b", "c"]);
        assert!(merged.more);
        assert_eq!(merged.next_start_after.as_deref(), Some("c"));
        assert_eq!(merged.revision, 9);
        assert_eq!(merged.revisions, Some(BTreeMap::from([(0, 5), (1, 9)])));
        // The limit cuts the merged page, and the page says so.
        let cut = merge_pages(
            vec![
                (0, page(&["a", "c"], false, 1)),
                (1, page(&["b", "d"], false, 1)),
            ],
            3,
            usize::MAX,
        );
        assert_eq!((keys(&cut), cut.more), (vec!["a", "b", "c"], true));
        assert_eq!(cut.next_start_after.as_deref(), Some("c"));
        // Everything fits: no continuation.
        let all = merge_pages(
            vec![(0, page(&["a"], false, 1)), (1, page(&[], false, 1))],
            3,
            usize::MAX,
        );
        assert_eq!((keys(&all), all.more), (vec!["a"], false));
        assert_eq!(all.next_start_after, None);
        // The byte budget cuts too (always at least one key).
        let small = merge_pages(vec![(0, page(&["a", "b"], false, 1))], 10, 1);
        assert_eq!((keys(&small), small.more), (vec!["a"], true));
    }

    #[test]
    fn batches_merge_in_the_order_asked() {
        let asked: Vec<String> = ["z", "a", "gone", "z", "m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let part = |kvs: &[&str], missing: &[&str], revision| BatchGetResponse {
            revision,
            node_id: 1,
            kvs: kvs.iter().map(|k| kv(k)).collect(),
            missing: missing.iter().map(|s| s.to_string()).collect(),
            revisions: None,
        };
        let merged = merge_batches(
            &asked,
            vec![
                (0, part(&["a", "m"], &[], 3)),
                (2, part(&["z"], &["gone"], 7)),
            ],
            usize::MAX,
        )
        .expect("fits");
        assert_eq!(
            merged
                .kvs
                .iter()
                .map(|k| k.key.as_str())
                .collect::<Vec<_>>(),
            vec!["z", "a", "m"]
        );
        assert_eq!(merged.missing, vec!["gone".to_string()]);
        assert_eq!(merged.revision, 7);
        assert!(merge_batches(&asked, vec![(0, part(&["a", "m"], &[], 3))], 3).is_none());
    }
}
