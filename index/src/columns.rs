//! Each segment's seq and millisecond columns, opened once per segment
//! rather than once per query.
//!
//! Opening a tantivy column reads its block index: 5 µs per 100,000 docs
//! for each column, measured on a 1M-record index (five segments, 53 µs a
//! query for the seq column alone), when a rare word's whole page took
//! 62 µs. Segments are immutable, so their columns are opened when the
//! reader warms a new searcher (on the indexer's thread, after a commit)
//! and dropped with the segment. The segment's field bitmaps
//! ([`crate::bitmaps`]) are built then too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::{Searcher, SearcherGeneration, SegmentReader, Warmer};

use crate::bitmaps::FieldBitmaps;
use crate::parts::Words;
use crate::schema::{SEQ_FIELD, TS_FIELD};

/// A segment's columns.
#[derive(Debug)]
pub(crate) struct SegmentColumns {
    /// Each doc's record seq.
    pub(crate) seqs: Column<u64>,
    /// Each doc's record time, to the millisecond.
    pub(crate) ms: Column<i64>,
    /// Whether the docs are in increasing seq order (what the
    /// single-threaded indexer writes; a merge may interleave).
    pub(crate) ordered: bool,
    /// Docs per value of level, service, host and tenant (and of attributes with
    /// few values, once asked for), unless turned off
    /// ([`crate::IndexOptions::field_bitmaps`]).
    pub(crate) bitmaps: Option<FieldBitmaps>,
    /// The message terms that hold a letter, listed when a query first
    /// asks for a part of a word ([`crate::parts`]), with their field.
    words: OnceLock<(tantivy::schema::Field, Arc<Words>)>,
}

impl SegmentColumns {
    fn open(reader: &SegmentReader, bitmaps: bool) -> tantivy::Result<SegmentColumns> {
        let seqs = reader.fast_fields().u64(SEQ_FIELD)?;
        let ms = reader.fast_fields().i64(TS_FIELD)?;
        let mut previous = None;
        let ordered = (0..reader.max_doc()).all(|doc| {
            let seq = seqs.first(doc);
            let rising = previous.is_none_or(|p| seq > Some(p));
            previous = seq;
            rising
        });
        Ok(SegmentColumns {
            seqs,
            ms,
            ordered,
            bitmaps: bitmaps.then(|| FieldBitmaps::build(reader)).transpose()?,
            words: OnceLock::new(),
        })
    }

    /// The segment's terms of `field` that hold a letter, listed once
    /// (for the first field asked: the message; another is listed anew).
    pub(crate) fn words(
        &self,
        reader: &SegmentReader,
        field: tantivy::schema::Field,
    ) -> tantivy::Result<Arc<Words>> {
        if let Some((kept, words)) = self.words.get() {
            if *kept == field {
                return Ok(Arc::clone(words));
            }
            return Ok(Arc::new(Words::build(reader, field)?));
        }
        let built = Arc::new(Words::build(reader, field)?);
        let (kept, words) = self.words.get_or_init(|| (field, Arc::clone(&built)));
        Ok(if *kept == field {
            Arc::clone(words)
        } else {
            built
        })
    }
}

/// The columns of the segments live searchers use; also a warmer of the
/// reader, which keeps it alive only through an `Arc`.
#[derive(Debug)]
pub(crate) struct Columns {
    open: Mutex<HashMap<SegmentId, Arc<SegmentColumns>>>,
    /// Whether segments get field bitmaps.
    bitmaps: bool,
}

impl Columns {
    pub(crate) fn new(bitmaps: bool) -> Columns {
        Columns {
            open: Mutex::default(),
            bitmaps,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SegmentId, Arc<SegmentColumns>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The columns of `reader`'s segment: from the cache, or opened and
    /// kept.
    pub(crate) fn of(&self, reader: &SegmentReader) -> tantivy::Result<Arc<SegmentColumns>> {
        let id = reader.segment_id();
        if let Some(columns) = self.lock().get(&id) {
            return Ok(Arc::clone(columns));
        }
        let columns = Arc::new(SegmentColumns::open(reader, self.bitmaps)?);
        self.lock().insert(id, Arc::clone(&columns));
        Ok(columns)
    }
}

impl Warmer for Columns {
    fn warm(&self, searcher: &Searcher) -> tantivy::Result<()> {
        for reader in searcher.segment_readers() {
            self.of(reader)?;
        }
        Ok(())
    }

    fn garbage_collect(&self, live: &[&SearcherGeneration]) {
        let live: HashSet<SegmentId> = live
            .iter()
            .flat_map(|generation| generation.segments().keys().copied())
            .collect();
        self.lock().retain(|id, _| live.contains(id));
    }
}
