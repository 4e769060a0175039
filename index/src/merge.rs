//! Keeps tantivy's segments aligned with the engine's.
//!
//! The indexer adds documents in seq order and never lets one commit span
//! two engine segments, so each tantivy segment it writes holds a run of
//! consecutive seqs of one engine segment, in seq order. This merge policy
//! only ever merges such runs of one engine segment, in seq order:
//! - once the engine segment is closed and its runs cover it, into one
//!   tantivy segment, whose doc id is then the record's offset in the
//!   engine segment (`seq - first seq`);
//! - before that, like tantivy's log merge policy but only among
//!   neighbours, so an engine segment filling slowly (many small commits)
//!   does not pile up segments.
//!
//! Sealed engine segments are never merged with each other: retention,
//! which drops whole engine segments, drops whole tantivy segments, and
//! no merge rewrites data that is already in its final place.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use lode_engine::Engine;
use tantivy::index::{SegmentId, SegmentMeta};
use tantivy::merge_policy::{MergeCandidate, MergePolicy};
use tantivy::{DocId, SegmentReader};

use crate::schema::SEQ_FIELD;

/// Runs of one open engine segment merged at once, at the same size
/// level (as tantivy's log merge policy's default merge factor).
const MERGE_FACTOR: usize = 8;

/// A tantivy segment's seqs (`first..last + 1`) and meta.
type Run<'a> = (Range<u64>, &'a SegmentMeta);

/// See the module documentation.
pub(crate) struct AlignedMerges {
    index: tantivy::Index,
    engine: Arc<Engine>,
    /// The seqs each tantivy segment holds (first..last + 1), or `None`
    /// when its docs are not in seq order (an index an older lode merged).
    runs: Mutex<HashMap<SegmentId, Option<Range<u64>>>>,
}

impl std::fmt::Debug for AlignedMerges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedMerges").finish_non_exhaustive()
    }
}

impl AlignedMerges {
    pub(crate) fn new(index: tantivy::Index, engine: Arc<Engine>) -> AlignedMerges {
        AlignedMerges {
            index,
            engine,
            runs: Mutex::default(),
        }
    }

    /// The seqs of a segment, read once from its seq column.
    fn run(&self, meta: &SegmentMeta) -> Option<Range<u64>> {
        let id = meta.id();
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = runs.get(&id) {
            return run.clone();
        }
        let segment = self.index.segment(meta.clone());
        let run = match SegmentReader::open(&segment) {
            Ok(reader) => seq_run(&reader),
            // Not cached: asked again at the next merge decision.
            Err(e) => {
                tracing::warn!(error = %e, "could not open a segment to plan merges");
                return None;
            }
        };
        runs.insert(id, run.clone());
        run
    }
}

/// `first..last + 1` of a segment whose docs hold consecutive seqs in
/// order; `None` otherwise.
pub(crate) fn seq_run(reader: &SegmentReader) -> Option<Range<u64>> {
    let seqs = reader.fast_fields().u64(SEQ_FIELD).ok()?;
    let max_doc: DocId = reader.max_doc();
    let first = seqs.first(0)?;
    let mut expected = first;
    for doc in 0..max_doc {
        if seqs.first(doc) != Some(expected) {
            return None;
        }
        expected += 1;
    }
    Some(first..expected)
}

impl MergePolicy for AlignedMerges {
    fn compute_merge_candidates(&self, segments: &[SegmentMeta]) -> Vec<MergeCandidate> {
        let mut runs: Vec<Run> = segments
            .iter()
            .filter_map(|meta| Some((self.run(meta)?, meta)))
            .collect();
        // Forget segments that are gone (merged or dropped).
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| segments.iter().any(|m| m.id() == *id));
        runs.sort_by_key(|(run, _)| run.start);
        plan(&self.engine.closed_segments(), &runs)
    }
}

/// Which engine segment a run belongs to: `Some(i)` for the closed segment
/// `closed[i]`, `None` for the open one, and no place at all for a run
/// that spans two segments (left as it is).
fn place(closed: &[Range<u64>], run: &Range<u64>) -> Option<Option<usize>> {
    let i = closed.partition_point(|c| c.end <= run.start);
    match closed.get(i) {
        Some(c) if c.start <= run.start && run.end <= c.end => Some(Some(i)),
        Some(_) => None,
        None => Some(None),
    }
}

/// The merges for `runs` (sorted by first seq) given the engine's closed
/// segments (sorted, disjoint).
pub(crate) fn plan(closed: &[Range<u64>], runs: &[Run]) -> Vec<MergeCandidate> {
    let mut groups: Vec<(Option<usize>, Vec<&Run>)> = Vec::new();
    for entry in runs {
        let Some(owner) = place(closed, &entry.0) else {
            continue;
        };
        match groups.last_mut() {
            Some((last, members)) if *last == owner => members.push(entry),
            _ => groups.push((owner, vec![entry])),
        }
    }
    let mut merges = Vec::new();
    for (owner, members) in groups {
        let whole = owner
            .and_then(|i| closed.get(i))
            .is_some_and(|segment| covers(segment, &members));
        let chosen = if whole {
            members
        } else {
            same_level_tail(members)
        };
        if chosen.len() >= 2 {
            merges.push(MergeCandidate(
                chosen.iter().map(|(_, meta)| meta.id()).collect(),
            ));
        }
    }
    merges
}

/// Whether consecutive runs, one after the other, hold all of `segment`.
fn covers(segment: &Range<u64>, members: &[&Run]) -> bool {
    let mut next = segment.start;
    for (run, _) in members {
        if run.start != next {
            return false;
        }
        next = run.end;
    }
    next == segment.end
}

/// The newest runs to merge in an engine segment still filling: the
/// longest tail of runs whose size level (docs, in powers of the merge
/// factor) is at most some level, for the lowest level whose tail has
/// `MERGE_FACTOR` runs; none if no level has.
fn same_level_tail<'a, 'm>(members: Vec<&'a Run<'m>>) -> Vec<&'a Run<'m>> {
    let level = |(_, meta): &&Run| {
        let docs = u64::from(meta.max_doc()).max(1);
        docs.ilog(MERGE_FACTOR as u64)
    };
    let levels: Vec<u32> = members.iter().map(level).collect();
    let mut seen: Vec<u32> = levels.clone();
    seen.sort_unstable();
    seen.dedup();
    for cap in seen {
        let tail = levels.iter().rev().take_while(|&&l| l <= cap).count();
        if tail >= MERGE_FACTOR {
            let start = members.len() - tail;
            return members.into_iter().skip(start).collect();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metas of runs of the given sizes, one after the other from `first`.
    fn runs(first: u64, sizes: &[u32]) -> Vec<(Range<u64>, SegmentMeta)> {
        let index = tantivy::Index::create_in_ram(crate::schema::schema(false).0);
        let mut start = first;
        sizes
            .iter()
            .map(|&size| {
                let meta = index.new_segment_meta(SegmentId::generate_random(), size);
                let run = start..start + u64::from(size);
                start = run.end;
                (run, meta)
            })
            .collect()
    }

    /// The merges planned, each as the first seqs of its runs.
    fn planned(closed: &[Range<u64>], runs: &[(Range<u64>, SegmentMeta)]) -> Vec<Vec<u64>> {
        let borrowed: Vec<Run> = runs.iter().map(|(run, meta)| (run.clone(), meta)).collect();
        let start_of = |id: &SegmentId| {
            runs.iter()
                .find(|(_, meta)| meta.id() == *id)
                .map(|(run, _)| run.start)
        };
        plan(closed, &borrowed)
            .into_iter()
            .map(|merge| merge.0.iter().filter_map(start_of).collect())
            .collect()
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one closed segment
    fn a_closed_segment_is_merged_whole_once_covered() {
        let parts = runs(1, &[3, 500, 7]);
        assert_eq!(planned(&[1..511], &parts), vec![vec![1, 4, 504]]);
        // Not yet covered (the last run is not committed): left alone.
        assert!(planned(&[1..520], &parts).is_empty());
        // One run already is the whole segment.
        assert!(planned(&[1..4], &runs(1, &[3])).is_empty());
    }

    #[test]
    fn runs_of_two_segments_are_never_merged_together() {
        let parts = runs(1, &[10, 10, 10, 10]);
        // Two closed segments of two runs each, then one that spans both.
        assert_eq!(
            planned(&[1..21, 21..41], &parts),
            vec![vec![1, 11], vec![21, 31]]
        );
        assert!(planned(&[1..16, 16..41], &parts[..1]).is_empty());
        let spanning = runs(11, &[10]);
        assert!(planned(&[1..16, 16..41], &spanning).is_empty());
    }

    #[test]
    fn an_open_segment_merges_small_neighbours_by_level() {
        // Seven small runs: not yet.
        assert!(planned(&[], &runs(1, &[5; 7])).is_empty());
        // Eight: merged.
        assert_eq!(planned(&[], &runs(1, &[5; 8])).len(), 1);
        // A large run before eight small ones stays out of their merge.
        let parts = runs(1, &[600, 5, 6, 7, 5, 5, 5, 5, 5]);
        let merges = planned(&[], &parts);
        assert_eq!(merges.len(), 1);
        assert_eq!(merges[0].len(), 8);
        assert_eq!(merges[0].first(), Some(&601));
    }
}
