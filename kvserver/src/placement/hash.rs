//! Which partition a key belongs to: XXH3-64 of the key's bytes, the 64-bit
//! hash space cut into `partitions` equal, contiguous ranges.
//!
//! Why ranges of a hash and not a consistent-hashing ring: a cluster's partition
//! count is fixed for its life (pods join and leave by moving whole partitions'
//! replicas, never keys between partitions), so a ring's one virtue, that few
//! keys change partition when the count changes, buys nothing here, while equal
//! ranges make partitions exactly even in expectation and give each partition a
//! range `/v1/partitions` can show. XXH3 because the mapping is part of the
//! stored data: it must be a specified, seedless, platform-independent function
//! (not `std`'s randomly keyed `DefaultHasher`), and the golden values below fail
//! if it ever changes.

use super::PartitionId;

/// The 64-bit hash placement uses for `key`.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The partition of `key` among `partitions` (at least 1).
pub fn partition_of(key: &[u8], partitions: u32) -> PartitionId {
    partition_of_hash(key_hash(key), partitions)
}

/// The partition a hash falls in: `hash * partitions / 2^64`.
pub fn partition_of_hash(hash: u64, partitions: u32) -> PartitionId {
    ((u128::from(hash) * u128::from(partitions.max(1))) >> 64) as PartitionId
}

/// The hashes of partition `p` among `partitions`: `(first, last)`, inclusive.
pub fn hash_range(p: PartitionId, partitions: u32) -> (u64, u64) {
    let n = u128::from(partitions.max(1));
    // The smallest hash h with h * n >= p * 2^64.
    let start = |p: u128| ((p << 64).div_ceil(n)) as u64;
    let first = start(u128::from(p));
    let last = if u128::from(p) + 1 >= n {
        u64::MAX
    } else {
        start(u128::from(p) + 1) - 1
    };
    (first, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mapping is stored data: these values must never change.
    #[test]
    fn the_mapping_is_fixed() {
        // XXH3-64 of the empty input, from the algorithm's specification.
        assert_eq!(key_hash(b""), 0x2D06_8005_38D3_94C2);
        let got: Vec<PartitionId> = ["", "a", "user/1", "user/2", "orders/2026-12-04/000017"]
            .iter()
            .map(|k| partition_of(k.as_bytes(), 16))
            .collect();
        assert_eq!(got, GOLDEN_16);
        assert!(
            ["", "a", "user/1"]
                .iter()
                .all(|k| partition_of(k.as_bytes(), 1) == 0)
        );
    }

    const GOLDEN_16: [PartitionId; 5] = [2, 14, 10, 0, 3];

    #[test]
    fn ranges_cover_the_hash_space_and_agree_with_the_mapping() {
        for n in [1u32, 2, 3, 7, 16, 100, 1024, u32::MAX] {
            let mut next = 0u64;
            for p in (0..n).take(2000) {
                let (a, b) = hash_range(p, n);
                assert_eq!(
                    a,
                    next,
                    "partition {p} of {n} starts where {} ended",
                    p.max(1) - 1
                );
                assert!(a <= b);
                assert_eq!(partition_of_hash(a, n), p);
                assert_eq!(partition_of_hash(b, n), p);
                if b < u64::MAX {
                    assert_eq!(partition_of_hash(b + 1, n), p + 1);
                }
                next = b.wrapping_add(1);
                if p == n - 1 {
                    assert_eq!(b, u64::MAX);
                }
            }
        }
    }

    #[test]
    fn sequential_keys_spread_evenly() {
        let mut count = [0u32; 16];
        for i in 0..160_000 {
            count[partition_of(format!("key-{i:06}").as_bytes(), 16) as usize] += 1;
        }
        // 10,000 expected each; a fair hash stays within a few percent.
        assert!(
            count.iter().all(|c| (9_600..=10_400).contains(c)),
            "{count:?}"
        );
    }
}
