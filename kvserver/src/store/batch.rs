//! Multi-row statements for the write paths (log appends, applies, snapshot
//! installs).
//!
//! Every statement costs a round trip to the database: for SQLite a hand-off to
//! sqlx's worker thread and back, two context switches that profiles showed to
//! be most of a write's CPU time. So the rows of a batch go out as a few
//! multi-row statements instead of one per row. Statement shapes are limited to
//! power-of-two row counts up to [`MAX_ROWS`], so each kind has at most seven
//! shapes and the drivers' prepared-statement caches keep all of them; `IN`
//! lists are padded to the next shape by repeating their last element (which
//! changes nothing), inserts are split into power-of-two chunks instead (a row
//! must not appear twice in one upsert on PostgreSQL).

use std::sync::OnceLock;

/// Most rows one statement carries (8 columns × 64 rows stays far below both
/// databases' parameter limits).
pub(crate) const MAX_ROWS: usize = 64;

/// Number of shapes: 1, 2, 4, …, `MAX_ROWS` rows.
const SHAPES: usize = MAX_ROWS.trailing_zeros() as usize + 1;

/// The SQL text of one statement kind for every power-of-two row count, built on
/// first use and kept for the life of the process (so it can be `&'static str`).
pub(crate) struct Shapes {
    build: fn(usize) -> String,
    cache: OnceLock<Vec<String>>,
}

impl Shapes {
    pub(crate) const fn new(build: fn(usize) -> String) -> Self {
        Self {
            build,
            cache: OnceLock::new(),
        }
    }

    /// The statement for `rows` rows; `rows` must be a power of two ≤ [`MAX_ROWS`].
    pub(crate) fn get(&'static self, rows: usize) -> &'static str {
        debug_assert!(rows.is_power_of_two() && rows <= MAX_ROWS);
        let all = self
            .cache
            .get_or_init(|| (0..SHAPES).map(|i| (self.build)(1 << i)).collect());
        &all[rows.trailing_zeros() as usize]
    }
}

/// Chunk sizes for `n` rows inserted without padding: `MAX_ROWS` as often as it
/// fits, then the binary digits of the rest, largest first (37 → 32, 4, 1).
pub(crate) fn insert_chunks(n: usize) -> impl Iterator<Item = usize> {
    let full = n / MAX_ROWS;
    let rest = n % MAX_ROWS;
    std::iter::repeat_n(MAX_ROWS, full).chain(
        (0..SHAPES)
            .rev()
            .map(|i| 1usize << i)
            .filter(move |bit| rest & bit != 0),
    )
}

/// The shape an `IN` list of `n` (1 ≤ n ≤ `MAX_ROWS`) elements is padded to.
pub(crate) fn padded(n: usize) -> usize {
    n.next_power_of_two().min(MAX_ROWS)
}

/// `($1, $2), ($3, $4), …` for `rows` rows of `cols` parameters, numbered from 1.
pub(crate) fn values(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * cols + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// `$1, $2, …, $n`.
pub(crate) fn params(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_with_known_shapes() {
        for n in 0..300 {
            let chunks: Vec<usize> = insert_chunks(n).collect();
            assert_eq!(chunks.iter().sum::<usize>(), n, "n = {n}");
            assert!(chunks.iter().all(|c| c.is_power_of_two() && *c <= MAX_ROWS));
            assert!(chunks.windows(2).all(|w| w[0] >= w[1]), "largest first");
        }
        assert_eq!(insert_chunks(37).collect::<Vec<_>>(), vec![32, 4, 1]);
        assert_eq!(padded(1), 1);
        assert_eq!(padded(5), 8);
        assert_eq!(padded(64), 64);
    }

    #[test]
    fn placeholders_are_numbered_row_major() {
        assert_eq!(values(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(values(1, 3), "($1, $2, $3)");
        assert_eq!(params(3), "$1, $2, $3");
        static S: Shapes = Shapes::new(|n| format!("IN ({})", params(n)));
        assert_eq!(S.get(4), "IN ($1, $2, $3, $4)");
        assert_eq!(S.get(1), "IN ($1)");
    }
}
