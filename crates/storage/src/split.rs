//! Cutting a batch of rows into statements bounded in rows and in bytes, for
//! the SQL stores: a database refuses a statement over its size limit however
//! many rows it has, so counting rows alone is not enough.

use std::ops::Range;

/// Consecutive ranges of `sizes` (one size per row, in bytes) with at most
/// `max_rows` rows and at most `max_bytes` bytes each; a row bigger than
/// `max_bytes` on its own gets a range of its own (the caller decides what to
/// do with it). Every row is in exactly one range, in order.
pub(crate) fn by_size(
    sizes: impl IntoIterator<Item = usize>,
    max_rows: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes, mut end) = (0, 0, 0);
    for size in sizes {
        if end > start && (end - start >= max_rows || bytes + size > max_bytes) {
            ranges.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes += size;
        end += 1;
    }
    if end > start {
        ranges.push(start..end);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::by_size;

    #[test]
    fn ranges_respect_both_bounds_and_cover_every_row_once() {
        assert!(by_size([], 10, 100).is_empty());
        assert_eq!(by_size([10, 10, 10], 10, 100), vec![0..3]);
        assert_eq!(by_size([10, 10, 10], 2, 100), vec![0..2, 2..3]);
        assert_eq!(by_size([60, 30, 20, 100], 10, 100), vec![0..2, 2..3, 3..4]);
        // A row over the byte bound stands alone rather than being dropped.
        assert_eq!(by_size([10, 500, 10], 10, 100), vec![0..1, 1..2, 2..3]);
        let sizes: Vec<usize> = (0..1000).map(|i| (i * 37) % 90 + 1).collect();
        let ranges = by_size(sizes.iter().copied(), 7, 200);
        let mut next = 0;
        for range in ranges {
            assert_eq!(range.start, next);
            assert!(range.len() <= 7);
            assert!(sizes[range.clone()].iter().sum::<usize>() <= 200);
            next = range.end;
        }
        assert_eq!(next, sizes.len());
    }
}
