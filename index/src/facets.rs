//! Aggregations over the matches of a query: a histogram over time and the
//! top values of a field, read from tantivy's fast fields.

use std::collections::HashMap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// Histogram bucket widths a person reads easily, in seconds.
const NICE_WIDTHS: [i64; 22] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
    172_800, 604_800, 1_209_600, 2_592_000,
];

/// `a / b` rounded up, for `a >= 0`, `b > 0`.
pub(crate) fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// The bucket width for `[since, until)` when none is given: the smallest
/// nice width that needs at most `target` buckets once the first bucket is
/// aligned to a multiple of the width.
pub(crate) fn choose_width(since: i64, until: i64, target: i64) -> i64 {
    let buckets = |w: i64| ceil_div(until.saturating_sub(since.div_euclid(w) * w).max(1), w);
    NICE_WIDTHS
        .iter()
        .map(|s| s * 1_000_000_000)
        .find(|&w| buckets(w) <= target)
        .unwrap_or_else(|| ceil_div(until.saturating_sub(since).max(1), target.max(2) - 1))
}

/// Counts matches per bucket of `width` ns from `origin`; matches outside
/// `[origin, origin + width * buckets)` are not counted.
pub(crate) struct HistogramCollector {
    pub(crate) origin: i64,
    pub(crate) width: i64,
    pub(crate) buckets: usize,
}

pub(crate) struct HistogramSegment {
    ts: Column<i64>,
    buckets: Buckets,
    /// Timestamps of one block of matches.
    block: Vec<Option<i64>>,
}

/// Counts per bucket of `width` from `origin`; timestamps outside are
/// not counted.
#[derive(Debug, Clone)]
struct Buckets {
    origin: i64,
    width: i64,
    counts: Vec<u64>,
    /// The bucket the last timestamp fell in, `[low, high)`: matches come
    /// in doc order, which is nearly time order, so most land in the same
    /// bucket as the one before and need no division.
    last: Option<(i64, i64, usize)>,
}

impl Buckets {
    fn new(origin: i64, width: i64, buckets: usize) -> Buckets {
        Buckets {
            origin,
            width,
            counts: vec![0; buckets],
            last: None,
        }
    }

    fn count(&mut self, ts: i64) {
        if let Some((low, high, bucket)) = self.last
            && low <= ts
            && ts < high
            && let Some(count) = self.counts.get_mut(bucket)
        {
            *count += 1;
            return;
        }
        let offset = ts.saturating_sub(self.origin);
        if offset < 0 {
            return;
        }
        let Some(bucket) = usize::try_from(offset / self.width).ok() else {
            return;
        };
        let Some(count) = self.counts.get_mut(bucket) else {
            return;
        };
        *count += 1;
        let low = self.origin + bucket as i64 * self.width;
        self.last = Some((low, low.saturating_add(self.width), bucket));
    }
}

impl Collector for HistogramCollector {
    type Fruit = Vec<u64>;
    type Child = HistogramSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<HistogramSegment> {
        Ok(HistogramSegment {
            ts: segment.fast_fields().i64("ts")?,
            buckets: Buckets::new(self.origin, self.width, self.buckets),
            block: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u64>>) -> tantivy::Result<Vec<u64>> {
        let mut total = vec![0; self.buckets];
        for fruit in fruits {
            for (sum, n) in total.iter_mut().zip(fruit) {
                *sum += n;
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for HistogramSegment {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(ts) = self.ts.first(doc) {
            self.buckets.count(ts);
        }
    }

    /// A block of matches at once: their timestamps are read together.
    fn collect_block(&mut self, docs: &[DocId]) {
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        block.resize(docs.len(), None);
        self.ts.first_vals(docs, &mut block);
        for ts in block.iter().flatten() {
            self.buckets.count(*ts);
        }
        self.block = block;
    }

    fn harvest(self) -> Vec<u64> {
        self.buckets.counts
    }
}

/// Counts matches per value of a string fast field.
pub(crate) struct TopValuesCollector {
    pub(crate) field: &'static str,
}

pub(crate) struct TopValuesSegment {
    column: Option<StrColumn>,
    counts: Vec<u64>,
}

impl Collector for TopValuesCollector {
    type Fruit = HashMap<String, u64>;
    type Child = TopValuesSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TopValuesSegment> {
        let column = segment.fast_fields().str(self.field)?;
        let terms = column.as_ref().map_or(0, |c| c.num_terms());
        Ok(TopValuesSegment {
            column,
            counts: vec![0; terms],
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<HashMap<String, u64>>,
    ) -> tantivy::Result<HashMap<String, u64>> {
        let mut total = HashMap::new();
        for fruit in fruits {
            for (value, n) in fruit {
                *total.entry(value).or_insert(0) += n;
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for TopValuesSegment {
    type Fruit = HashMap<String, u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        let Some(column) = &self.column else { return };
        for ord in column.term_ords(doc) {
            if let Some(count) = usize::try_from(ord)
                .ok()
                .and_then(|o| self.counts.get_mut(o))
            {
                *count += 1;
            }
        }
    }

    fn harvest(self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        let Some(column) = self.column else {
            return out;
        };
        let mut value = String::new();
        for (ord, &n) in self.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            value.clear();
            if column.ord_to_str(ord as u64, &mut value).unwrap_or(false) {
                out.insert(value.clone(), n);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The remembered last bucket gives the counts a division per
        /// timestamp gives, for any order and any values (out of range,
        /// extreme).
        #[test]
        fn bucket_counts_equal_one_division_each(
            origin in -1_000i64..1_000,
            width in 1i64..50,
            buckets in 1usize..30,
            stamps in proptest::collection::vec(
                prop_oneof![-2_000i64..2_000, any::<i64>()], 0..300),
        ) {
            let mut counted = Buckets::new(origin, width, buckets);
            let mut expected = vec![0u64; buckets];
            for &ts in &stamps {
                counted.count(ts);
                let offset = i128::from(ts) - i128::from(origin);
                if offset >= 0 && offset / i128::from(width) < buckets as i128 {
                    expected[(offset / i128::from(width)) as usize] += 1;
                }
            }
            prop_assert_eq!(counted.counts, expected);
        }
    }

    #[test]
    fn widths_are_nice_and_bounded() {
        let s = 1_000_000_000;
        assert_eq!(choose_width(0, 24 * 3600 * s, 24), 3600 * s);
        assert_eq!(choose_width(0, 25 * 3600 * s, 24), 7200 * s);
        // 00:30 .. 24:00 aligned to hours needs 24 one-hour buckets; 00:30
        // .. 24:30 would need 25, so two-hour buckets.
        assert_eq!(choose_width(1800 * s, 24 * 3600 * s, 24), 3600 * s);
        assert_eq!(
            choose_width(1800 * s, 24 * 3600 * s + 1800 * s, 24),
            7200 * s
        );
        assert_eq!(choose_width(0, 10 * s, 24), s);
        assert_eq!(choose_width(0, 0, 24), s);
        let (a, b) = (7 * s, 1000 * 2_592_000 * s);
        let w = choose_width(a, b, 24);
        assert!(ceil_div(b - a.div_euclid(w) * w, w) <= 24);
    }
}
