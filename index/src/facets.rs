//! Aggregations over the matches of a query: a histogram over time and the
//! top values of a field: the times from tantivy's fast fields, the values
//! from bitmaps.

use std::collections::HashMap;
use std::sync::Arc;

use roaring::RoaringBitmap;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

use crate::FacetField;
use crate::bitmaps::{AscendingDocs, ValueBitmaps, value_bitmaps};
use crate::columns::{Columns, SegmentColumns};
use crate::ordinals::Ordinals;
use crate::recheck::Recheck;
use crate::time::{GRAIN_NS, span};

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
    let buckets = |w: i64| {
        since
            .div_euclid(w)
            .checked_mul(w)
            .and_then(|start| until.checked_sub(start))
            .map_or(i64::MAX, |span| ceil_div(span.max(1), w))
    };
    NICE_WIDTHS
        .iter()
        .map(|s| s * 1_000_000_000)
        .find(|&w| buckets(w) <= target)
        .unwrap_or_else(|| ceil_div(until.saturating_sub(since).max(1), target.max(2) - 1))
}

/// Counts matches with `since <= ts < until` per bucket of `width` ns from
/// `origin`; matches outside `[origin, origin + width * buckets)` are not
/// counted. The time range is applied here rather than in the query: the
/// grains (milliseconds) are read for the buckets anyway.
pub(crate) struct HistogramCollector {
    pub(crate) origin: i64,
    pub(crate) width: i64,
    pub(crate) buckets: usize,
    pub(crate) since: i64,
    pub(crate) until: i64,
    /// Exact times, for matches in a grain that a bucket edge or a bound
    /// cuts.
    pub(crate) recheck: Arc<Recheck>,
}

pub(crate) struct HistogramSegment {
    /// The segment's time and seq columns.
    columns: Arc<SegmentColumns>,
    recheck: Arc<Recheck>,
    buckets: Buckets,
    /// Grains of one block of matches.
    block: Vec<Option<i64>>,
}

/// Where a time falls among the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Before,
    In(usize),
    After,
}

/// Counts per bucket of `width` from `origin` of the timestamps in
/// `[since, until)`; others are not counted.
#[derive(Debug, Clone)]
struct Buckets {
    origin: i64,
    width: i64,
    since: i64,
    until: i64,
    counts: Vec<u64>,
    /// The grains wholly inside the last match's bucket and the range
    /// (first, last inclusive) and that bucket: matches come in doc order,
    /// which is nearly time order, so most land in the same bucket as the
    /// one before and need one comparison.
    last: Option<(i64, i64, usize)>,
}

impl Buckets {
    fn new(origin: i64, width: i64, buckets: usize, (since, until): (i64, i64)) -> Buckets {
        Buckets {
            origin,
            width,
            since,
            until,
            counts: vec![0; buckets],
            last: None,
        }
    }

    fn place(&self, ts: i64) -> Place {
        let offset = i128::from(ts) - i128::from(self.origin);
        if offset < 0 {
            return Place::Before;
        }
        match usize::try_from(offset / i128::from(self.width)) {
            Ok(bucket) if bucket < self.counts.len() => Place::In(bucket),
            _ => Place::After,
        }
    }

    fn add(&mut self, bucket: usize) {
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
    }

    /// Counts a match at exact time `ts`.
    fn count(&mut self, ts: i64) {
        if self.since <= ts
            && ts < self.until
            && let Place::In(bucket) = self.place(ts)
        {
            self.add(bucket);
        }
    }

    /// The grains wholly inside `bucket` and the range, if any.
    fn grains_of(&self, bucket: usize) -> Option<(i64, i64, usize)> {
        let start = i128::from(self.origin) + bucket as i128 * i128::from(self.width);
        let low = start.max(self.since.into());
        let high = (start + i128::from(self.width)).min(self.until.into());
        let grain = i128::from(GRAIN_NS);
        let first = -(-low).div_euclid(grain);
        let last = high.div_euclid(grain) - 1;
        let first = i64::try_from(first).ok()?;
        let last = i64::try_from(last).ok()?;
        (first <= last).then_some((first, last, bucket))
    }

    /// Counts a match of grain `ms`: in the bucket holding the whole grain,
    /// or, when a bucket edge or the time range cuts the grain, by its exact
    /// time (`exact`; not counted when `None`).
    fn count_grain(&mut self, ms: i64, exact: impl FnOnce() -> Option<i64>) {
        if let Some((first, last, bucket)) = self.last
            && first <= ms
            && ms <= last
        {
            self.add(bucket);
            return;
        }
        let (low, high) = span(ms);
        if high < self.since || low >= self.until {
            return;
        }
        let inside = self.since <= low && high < self.until;
        match (self.place(low), self.place(high)) {
            (Place::In(a), Place::In(b)) if inside && a == b => {
                self.add(a);
                self.last = self.grains_of(a);
            }
            (a, b) if inside && a == b => {}
            _ => {
                if let Some(ts) = exact() {
                    self.count(ts);
                }
            }
        }
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
            columns: self.recheck.columns(segment)?,
            recheck: Arc::clone(&self.recheck),
            buckets: Buckets::new(
                self.origin,
                self.width,
                self.buckets,
                (self.since, self.until),
            ),
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

impl HistogramSegment {
    fn count(&mut self, doc: DocId, ms: i64) {
        let (seqs, recheck) = (&self.columns.seqs, &self.recheck);
        self.buckets
            .count_grain(ms, || seqs.first(doc).and_then(|seq| recheck.ts(seq)));
    }
}

impl SegmentCollector for HistogramSegment {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(ms) = self.columns.ms.first(doc) {
            self.count(doc, ms);
        }
    }

    /// A block of matches at once: their grains are read together.
    fn collect_block(&mut self, docs: &[DocId]) {
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        block.resize(docs.len(), None);
        self.columns.ms.first_vals(docs, &mut block);
        for (&doc, ms) in docs.iter().zip(&block) {
            if let Some(ms) = *ms {
                self.count(doc, ms);
            }
        }
        self.block = block;
    }

    fn harvest(self) -> Vec<u64> {
        self.buckets.counts
    }
}

/// Counts matches per value of a field: by each doc's value
/// ([`crate::ordinals`]), or, for a field of too many values in a segment
/// or a segment without bitmaps, by gathering the matches into a bitmap
/// tallied against each value's. The values have no tantivy column: a text
/// column cost tantivy's indexing thread about a tenth of its
/// instructions, and the bitmaps are built anyway.
pub(crate) struct TopValuesCollector {
    pub(crate) field: FacetField,
    pub(crate) columns: Arc<Columns>,
}

pub(crate) enum TopValuesSegment {
    ByOrdinal {
        ordinals: Arc<Ordinals>,
        counts: Vec<u64>,
    },
    ByBitmap {
        field: FacetField,
        columns: Arc<SegmentColumns>,
        /// The field's bitmaps, built for this query when the segment
        /// keeps none ([`crate::IndexOptions::field_bitmaps`] off).
        built: Option<ValueBitmaps>,
        matches: AscendingDocs,
    },
}

impl Collector for TopValuesCollector {
    type Fruit = HashMap<String, u64>;
    type Child = TopValuesSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TopValuesSegment> {
        let columns = self.columns.of(segment)?;
        let ordinals = columns
            .bitmaps
            .as_ref()
            .and_then(|b| b.ordinals(self.field));
        if let Some(ordinals) = ordinals {
            let counts = vec![0; ordinals.len()];
            return Ok(TopValuesSegment::ByOrdinal { ordinals, counts });
        }
        let built = match columns.bitmaps {
            Some(_) => None,
            None => Some(value_bitmaps(segment, self.field)?),
        };
        Ok(TopValuesSegment::ByBitmap {
            field: self.field,
            columns,
            built,
            matches: AscendingDocs::default(),
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
        self.collect_block(&[doc]);
    }

    fn collect_block(&mut self, docs: &[DocId]) {
        match self {
            TopValuesSegment::ByOrdinal { ordinals, counts } => ordinals.count(docs, counts),
            TopValuesSegment::ByBitmap { matches, .. } => {
                for &doc in docs {
                    matches.push(doc);
                }
            }
        }
    }

    fn harvest(self) -> HashMap<String, u64> {
        match self {
            TopValuesSegment::ByOrdinal { ordinals, counts } => ordinals.tally(&counts),
            TopValuesSegment::ByBitmap {
                field,
                columns,
                built,
                matches,
            } => {
                let matches = matches.finish();
                let values = match (&built, &columns.bitmaps) {
                    _ if matches.is_empty() => return HashMap::new(),
                    (Some(built), _) => built,
                    (None, Some(bitmaps)) => bitmaps.of(field),
                    // Not reached: `for_segment` builds them when the
                    // segment keeps none.
                    (None, None) => return HashMap::new(),
                };
                tally_values(values, &matches)
            }
        }
    }
}

/// How many of `matches` hold each of `values`.
pub(crate) fn tally_values(values: &ValueBitmaps, matches: &RoaringBitmap) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for (value, holding) in values {
        let n = matches.intersection_len(holding);
        if n > 0 {
            counts.insert(value.clone(), n);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::time::grain;

    proptest! {
        /// Counting exact times gives what a division per timestamp gives,
        /// for any order and any values (out of range, extreme).
        #[test]
        fn bucket_counts_equal_one_division_each(
            origin in -1_000i64..1_000,
            width in 1i64..50,
            buckets in 1usize..30,
            stamps in proptest::collection::vec(
                prop_oneof![-2_000i64..2_000, any::<i64>()], 0..300),
        ) {
            let mut counted = Buckets::new(origin, width, buckets, (i64::MIN, i64::MAX));
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

        /// Counting by grain gives the counts of exact times, within a time
        /// range too, and reads an exact time only for a grain that a bucket
        /// edge or a bound cuts.
        #[test]
        fn grain_counts_equal_exact_counts(
            origin in -5_000_000i64..5_000_000,
            width in prop_oneof![1i64..3_000_000, (1i64..5).prop_map(|k| k * GRAIN_NS)],
            buckets in 1usize..30,
            range in prop_oneof![
                Just((i64::MIN, i64::MAX)),
                (-40_000_000i64..40_000_000, 0i64..40_000_000).prop_map(|(a, n)| (a, a + n)),
            ],
            stamps in proptest::collection::vec(
                prop_oneof![-60_000_000i64..60_000_000, any::<i64>()], 0..300),
        ) {
            let mut by_grain = Buckets::new(origin, width, buckets, range);
            let mut exact = Buckets::new(origin, width, buckets, range);
            for &ts in &stamps {
                let mut read = false;
                by_grain.count_grain(grain(ts), || { read = true; Some(ts) });
                exact.count(ts);
                let (low, high) = span(grain(ts));
                let cut_by_range = (low < range.0 && range.0 <= high) || (low < range.1 && range.1 <= high);
                if read {
                    prop_assert!(cut_by_range || by_grain.place(low) != by_grain.place(high));
                }
            }
            prop_assert_eq!(by_grain.counts, exact.counts);
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
