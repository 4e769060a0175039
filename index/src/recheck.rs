//! What the index does not keep, read back from the engine: a record's
//! exact time (the index keeps its millisecond, [`crate::time`]) and the
//! order of its message's words (the index keeps which words a message
//! holds, not where) and its long numbers (the index keeps their buckets):
//! [`crate::reading`].
//!
//! Both work the same way: the index finds the candidates, and a
//! [`Filtered`] scorer keeps those whose record, read in place from the
//! engine, passes the check.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use lode_engine::{ArchivedLogRecord, Engine};
use tantivy::columnar::Column;
use tantivy::query::{Explanation, Scorer, Weight};
use tantivy::{DocId, DocSet, Score, SegmentReader, TERMINATED};

use crate::columns::{Columns, SegmentColumns};

/// Reads records from the engine during a search. Collectors and scorers
/// cannot fail, so the first read error is kept and returned by
/// [`Recheck::finish`] once the search is over. Also hands the scorers and
/// collectors of the search each segment's columns (the index's cache),
/// which map their docs to seqs and times.
#[derive(Debug)]
pub(crate) struct Recheck {
    engine: Arc<Engine>,
    columns: Arc<Columns>,
    failure: Mutex<Option<lode_engine::Error>>,
    /// The docs the filtered scorers made now check (see
    /// [`Recheck::scorer_within`]; all of them otherwise), and whether one
    /// with candidates was made.
    scorer_bound: Mutex<(Range<DocId>, bool)>,
}

impl Recheck {
    pub(crate) fn new(engine: Arc<Engine>, columns: Arc<Columns>) -> Arc<Recheck> {
        Arc::new(Recheck {
            engine,
            columns,
            failure: Mutex::new(None),
            scorer_bound: Mutex::new((ALL_DOCS, false)),
        })
    }

    /// A scorer of `weight` over `reader` for a search that wants only the
    /// docs of `docs` (a newest-first page's window): its filtered parts
    /// check only the candidates there, rather than from the segment's
    /// first doc (which a window back from the end throws away) to the
    /// first kept one, however far. Also whether any filtered part with
    /// candidates was so bound: if none, the scorer sees every match of
    /// the segment. Not for searches that run on several threads at once.
    pub(crate) fn scorer_within(
        &self,
        weight: &dyn Weight,
        reader: &SegmentReader,
        docs: Range<DocId>,
    ) -> tantivy::Result<(Box<dyn Scorer>, bool)> {
        *self.lock_bound() = (docs, false);
        let scorer = weight.scorer(reader, 1.0);
        let (_, bound) = std::mem::replace(&mut *self.lock_bound(), (ALL_DOCS, false));
        Ok((scorer?, bound))
    }

    /// The docs a filtered scorer made now over `candidates` checks (see
    /// [`Recheck::scorer_within`]).
    pub(crate) fn bound_for(&self, candidates: &dyn DocSet) -> Range<DocId> {
        let mut bound = self.lock_bound();
        if bound.0 != ALL_DOCS && candidates.doc() != TERMINATED {
            bound.1 = true;
        }
        bound.0.clone()
    }

    fn lock_bound(&self) -> std::sync::MutexGuard<'_, (Range<DocId>, bool)> {
        self.scorer_bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The seq and time columns of `reader`'s segment.
    pub(crate) fn columns(&self, reader: &SegmentReader) -> tantivy::Result<Arc<SegmentColumns>> {
        self.columns.of(reader)
    }

    /// `look` applied to each record of `seqs` read in place, in the order
    /// of `seqs`; `None` for a record retention dropped (it matches nothing
    /// any more) or when reading failed. One pass over the engine reads
    /// them all.
    pub(crate) fn read_many<T: Copy>(
        &self,
        seqs: &[u64],
        mut look: impl FnMut(&ArchivedLogRecord) -> T,
    ) -> Vec<Option<T>> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut found: Vec<(u64, T)> = Vec::with_capacity(sorted.len());
        if let Err(e) = self.engine.visit_seqs(&sorted, |seq, record| {
            found.push((seq, look(record.record)))
        }) {
            let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            failure.get_or_insert(e);
        }
        seqs.iter()
            .map(|seq| {
                let at = found.binary_search_by_key(seq, |(s, _)| *s).ok()?;
                found.get(at).map(|(_, value)| *value)
            })
            .collect()
    }

    /// The exact time (ns) of record `seq`, as [`Recheck::read_many`].
    pub(crate) fn ts(&self, seq: u64) -> Option<i64> {
        self.read_many(&[seq], ArchivedLogRecord::timestamp)
            .pop()
            .flatten()
    }

    /// The first read error met during the search, if any.
    pub(crate) fn finish(&self) -> crate::Result<()> {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        failure.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// The seqs of `docs`, to read through [`Recheck::read_many`]. Every
/// document has a seq; one without would read no record (no record has seq
/// u64::MAX) and so match nothing.
pub(crate) fn seqs_of(seqs: &Column<u64>, docs: impl Iterator<Item = DocId>) -> Vec<u64> {
    docs.map(|doc| seqs.first(doc).unwrap_or(u64::MAX))
        .collect()
}

/// Every doc id.
const ALL_DOCS: Range<DocId> = 0..TERMINATED;

/// Most candidates checked at once.
const MAX_BATCH: usize = 64;

/// The docs of `inner` that `keeps` keeps. `keeps` gets candidates in
/// batches and says which to keep, so that a check reading records reads a
/// batch in one pass over the engine. A batch starts at one candidate after
/// a seek and doubles as the scorer advances, so that a search reading a
/// few docs from a seek (a newest-first page) checks few beyond them.
pub(crate) struct Filtered<F> {
    inner: Box<dyn Scorer>,
    keeps: F,
    /// Kept docs not yet reached, ascending; all before `inner.doc()`,
    /// which is the first candidate not yet checked.
    kept: VecDeque<DocId>,
    batch: usize,
    candidates: Vec<DocId>,
    /// Cost of checking a candidate, in tantivy's units of `cost`.
    check_cost: u64,
    /// Candidates from here on are not checked (`TERMINATED`: none).
    end: DocId,
}

impl<F: FnMut(&[DocId]) -> Vec<bool> + Send + 'static> Filtered<F> {
    /// Filters `inner`'s docs within `docs` (see
    /// [`Recheck::scorer_within`]; [`ALL_DOCS`] for all of them): those
    /// past its end are left unchecked, as if `inner` ended there.
    pub(crate) fn new(
        mut inner: Box<dyn Scorer>,
        keeps: F,
        check_cost: u64,
        docs: Range<DocId>,
    ) -> Filtered<F> {
        if inner.doc() < docs.start {
            inner.seek(docs.start);
        }
        let mut filtered = Filtered {
            inner,
            keeps,
            kept: VecDeque::new(),
            batch: 1,
            candidates: Vec::new(),
            check_cost,
            end: docs.end,
        };
        filtered.check_until_kept();
        filtered
    }

    /// Checks batches of candidates until one is kept or none is left.
    fn check_until_kept(&mut self) -> DocId {
        while self.kept.is_empty() && self.inner.doc() < self.end {
            self.candidates.clear();
            let mut doc = self.inner.doc();
            while doc < self.end && self.candidates.len() < self.batch {
                self.candidates.push(doc);
                doc = self.inner.advance();
            }
            let keep = (self.keeps)(&self.candidates);
            self.kept.extend(
                self.candidates
                    .iter()
                    .zip(keep)
                    .filter_map(|(&doc, keep)| keep.then_some(doc)),
            );
            self.batch = (self.batch * 2).min(MAX_BATCH);
        }
        self.doc()
    }
}

impl<F: FnMut(&[DocId]) -> Vec<bool> + Send + 'static> DocSet for Filtered<F> {
    fn advance(&mut self) -> DocId {
        self.kept.pop_front();
        self.check_until_kept()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        while self.kept.front().is_some_and(|&doc| doc < target) {
            self.kept.pop_front();
        }
        if self.kept.is_empty() && self.inner.doc() < target {
            self.inner.seek(target);
            self.batch = 1;
        }
        self.check_until_kept()
    }

    fn doc(&self) -> DocId {
        self.kept.front().copied().unwrap_or(TERMINATED)
    }

    fn size_hint(&self) -> u32 {
        self.inner.size_hint()
    }

    fn cost(&self) -> u64 {
        self.inner.cost().saturating_mul(self.check_cost)
    }
}

impl<F: FnMut(&[DocId]) -> Vec<bool> + Send + 'static> Scorer for Filtered<F> {
    fn score(&mut self) -> Score {
        1.0
    }
}

/// `Weight::explain` of a weight without scores: whether its scorer
/// reaches `doc`.
pub(crate) fn explain(
    weight: &dyn Weight,
    reader: &SegmentReader,
    doc: DocId,
    name: &'static str,
) -> tantivy::Result<Explanation> {
    let mut scorer = weight.scorer(reader, 1.0)?;
    if scorer.seek(doc) == doc {
        Ok(Explanation::new(name, 1.0))
    } else {
        Err(tantivy::TantivyError::InvalidArgument(format!(
            "document {doc} does not match {name}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Candidates from a sorted list.
    struct Docs {
        docs: Vec<DocId>,
        at: usize,
    }

    impl DocSet for Docs {
        fn advance(&mut self) -> DocId {
            self.at += 1;
            self.doc()
        }

        fn doc(&self) -> DocId {
            self.docs.get(self.at).copied().unwrap_or(TERMINATED)
        }

        fn size_hint(&self) -> u32 {
            self.docs.len() as u32
        }
    }

    impl Scorer for Docs {
        fn score(&mut self) -> Score {
            1.0
        }
    }

    /// A step of a search through a scorer.
    #[derive(Debug, Clone)]
    enum Step {
        Advance,
        /// Seek this far past the current doc.
        Seek(DocId),
    }

    proptest! {
        /// Checked in batches, a filtered scorer visits exactly the kept
        /// candidates within its docs, under any mix of advances and
        /// seeks, and checks no candidate twice or outside its docs.
        #[test]
        fn filtered_is_the_kept_candidates(
            mut docs in proptest::collection::vec(0u32..500, 0..200),
            kept_mod in 1u32..5,
            start in prop_oneof![Just(0u32), 0u32..600],
            len in prop_oneof![Just(TERMINATED), 0u32..600],
            steps in proptest::collection::vec(
                prop_oneof![Just(Step::Advance), (0u32..60).prop_map(Step::Seek)],
                0..100,
            ),
        ) {
            docs.sort_unstable();
            docs.dedup();
            let keeps = move |doc: DocId| doc.is_multiple_of(kept_mod);
            let end = start.saturating_add(len).min(TERMINATED);
            let expected: Vec<DocId> = docs
                .iter()
                .copied()
                .filter(|&d| keeps(d) && (start..end).contains(&d))
                .collect();
            let checked = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&checked);
            let inner = Box::new(Docs { docs: docs.clone(), at: 0 });
            let mut filtered = Filtered::new(
                inner,
                move |batch: &[DocId]| {
                    log.lock().unwrap().extend_from_slice(batch);
                    batch.iter().map(|&d| keeps(d)).collect()
                },
                1,
                start..end,
            );
            let first_kept = |from: DocId| {
                expected.iter().copied().find(|&d| d >= from).unwrap_or(TERMINATED)
            };
            prop_assert_eq!(filtered.doc(), first_kept(start));
            for step in steps {
                let doc = filtered.doc();
                if doc == TERMINATED {
                    break;
                }
                let (got, want) = match step {
                    Step::Advance => (filtered.advance(), first_kept(doc + 1)),
                    Step::Seek(by) => (filtered.seek(doc + by), first_kept(doc + by)),
                };
                prop_assert_eq!(got, want);
                prop_assert_eq!(filtered.doc(), want);
            }
            let checked = checked.lock().unwrap();
            prop_assert!(checked.windows(2).all(|w| w[0] < w[1]), "checked twice or out of order: {:?}", checked);
            prop_assert!(checked.iter().all(|d| (start..end).contains(d)), "checked outside {}..{}: {:?}", start, end, checked);
        }
    }
}
