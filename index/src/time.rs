//! Time in the index: each document keeps its record's time to the
//! millisecond (the `ts_ms` column), and the engine keeps it to the
//! nanosecond.
//!
//! Nanoseconds in the column cost about 3.5 bytes a record more than
//! milliseconds (records a few ms apart with ns jitter leave ~24 random bits
//! each to bitpack). A millisecond lies wholly inside or outside a time
//! bound or a histogram bucket, except the one a boundary cuts through: only
//! the matches in such a cut millisecond are settled by reading their exact
//! time from the engine ([`Recheck`]). Bounds and bucket edges on whole
//! milliseconds (every nice histogram width) cut none.

use std::ops::Bound;
use std::sync::Arc;

use lode_engine::ArchivedLogRecord;
use tantivy::query::{EnableScoring, Explanation, Query, RangeQuery, Scorer, Weight};
use tantivy::{DocId, Score, SegmentReader, Term};

use crate::recheck::{Filtered, Recheck, explain, seqs_of};
use crate::schema::TS_FIELD;

/// Nanoseconds per unit of the index's time column.
pub(crate) const GRAIN_NS: i64 = 1_000_000;

/// The grain (millisecond) holding `ts` (ns).
pub(crate) fn grain(ts: i64) -> i64 {
    ts.div_euclid(GRAIN_NS)
}

/// The first and last nanosecond of grain `ms`.
pub(crate) fn span(ms: i64) -> (i64, i64) {
    let low = ms.saturating_mul(GRAIN_NS);
    (low, low.saturating_add(GRAIN_NS - 1))
}

/// Records with `since <= ts < until` (ns, `None` unbounded): a range over
/// the grain column, with the matches of a cut grain settled exactly.
#[derive(Debug, Clone)]
pub(crate) struct TimeRange {
    pub(crate) since: Option<i64>,
    pub(crate) until: Option<i64>,
    pub(crate) recheck: Arc<Recheck>,
}

impl TimeRange {
    /// The grains a bound cuts through: their records may lie on either
    /// side of it.
    fn cut_grains(&self) -> Vec<i64> {
        let mut cut: Vec<i64> = [self.since, self.until]
            .into_iter()
            .flatten()
            .filter(|bound| bound.rem_euclid(GRAIN_NS) != 0)
            .map(grain)
            .collect();
        cut.dedup();
        cut
    }

    /// Whether exact time `ts` lies in the range.
    fn holds(&self, ts: i64) -> bool {
        self.since.is_none_or(|since| since <= ts) && self.until.is_none_or(|until| ts < until)
    }
}

impl Query for TimeRange {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let field = scoring.schema().get_field(TS_FIELD)?;
        let term = |ms| Term::from_field_i64(field, ms);
        let lower = self.since.map_or(Bound::Unbounded, |since| {
            Bound::Included(term(grain(since)))
        });
        let upper = self
            .until
            .map_or(Bound::Unbounded, |until| match until.checked_sub(1) {
                Some(last) => Bound::Included(term(grain(last))),
                None => Bound::Excluded(term(i64::MIN)),
            });
        let grains = RangeQuery::new(lower, upper);
        Ok(Box::new(TimeRangeWeight {
            grains: grains.weight(scoring)?,
            cut: self.cut_grains(),
            range: self.clone(),
        }))
    }
}

struct TimeRangeWeight {
    grains: Box<dyn Weight>,
    /// The grains the bounds cut through, worked out once per query.
    cut: Vec<i64>,
    range: TimeRange,
}

impl Weight for TimeRangeWeight {
    /// The docs of the grains in range (tantivy's column range), less those
    /// of a cut grain whose exact time is outside; in a segment whose time
    /// span holds no cut grain, the column range alone.
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let grains = self.grains.scorer(reader, boost)?;
        if self.cut.is_empty() {
            return Ok(grains);
        }
        let columns = self.range.recheck.columns(reader)?;
        let within = self.range.recheck.bound_for(grains.as_ref());
        let cut: Vec<i64> = self
            .cut
            .iter()
            .copied()
            .filter(|&g| columns.ms.min_value() <= g && g <= columns.ms.max_value())
            .collect();
        if cut.is_empty() {
            return Ok(grains);
        }
        let range = self.range.clone();
        // Each candidate's grain is read: only in the segments whose time
        // span holds a cut grain.
        let keeps = move |docs: &[DocId]| {
            // Only the candidates of a cut grain are read, a batch's at once.
            let is_cut: Vec<bool> = docs
                .iter()
                .map(|&doc| columns.ms.first(doc).is_some_and(|ms| cut.contains(&ms)))
                .collect();
            let of_cut = docs
                .iter()
                .zip(&is_cut)
                .filter(|(_, c)| **c)
                .map(|(d, _)| *d);
            let mut exact = range
                .recheck
                .read_many(
                    &seqs_of(&columns.seqs, of_cut),
                    ArchivedLogRecord::timestamp,
                )
                .into_iter();
            // A record that is gone (`None`) lies in no range.
            is_cut
                .iter()
                .map(|&c| !c || exact.next().flatten().is_some_and(|ts| range.holds(ts)))
                .collect()
        };
        // A candidate costs a grain lookup; few are read from the engine.
        Ok(Box::new(Filtered::new(grains, keeps, 1, within)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        explain(self, reader, doc, "TimeRange")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grains_and_spans() {
        assert_eq!(grain(0), 0);
        assert_eq!(grain(999_999), 0);
        assert_eq!(grain(1_000_000), 1);
        assert_eq!(grain(-1), -1);
        assert_eq!(span(-1), (-1_000_000, -1));
        assert_eq!(span(2), (2_000_000, 2_999_999));
        assert_eq!(grain(i64::MIN), i64::MIN / GRAIN_NS - 1);
        let (low, high) = span(grain(i64::MAX));
        assert!(low < high && high == i64::MAX);
    }
}
