//! Roaring bitmaps of each segment's docs per value of level, service and
//! host, and the field-filter queries they answer without visiting a doc.
//!
//! A segment's bitmaps are built from its postings of those fields when a
//! reader first warms it (with its columns, [`crate::columns`]) and kept
//! while the segment lives.
//!
//! A count or a top-values tally of a query made only of those field
//! filters (`level:error`, `level:>=warn`, `service:api OR host:web-1`,
//! `NOT level:info`, `*`), with no time range, is then bitmap algebra and
//! cardinalities, per segment. Anything else (words, prefixes, attributes,
//! a time range, a segment with deleted docs) goes through tantivy.

use std::collections::HashMap;

use lode_query::{Field as QField, Query, levels_selected};
use roaring::RoaringBitmap;
use tantivy::schema::IndexRecordOption;
use tantivy::{DocSet, SegmentReader, TERMINATED};

use crate::FacetField;

/// The docs of one segment holding each value of one field.
pub(crate) type ValueBitmaps = HashMap<String, RoaringBitmap>;

/// A segment's bitmaps; see the module documentation.
#[derive(Debug)]
pub(crate) struct FieldBitmaps {
    level: ValueBitmaps,
    service: ValueBitmaps,
    host: ValueBitmaps,
    /// Docs in the segment, deleted ones included.
    max_doc: u32,
}

impl FieldBitmaps {
    pub(crate) fn build(reader: &SegmentReader) -> tantivy::Result<FieldBitmaps> {
        Ok(FieldBitmaps {
            level: value_bitmaps(reader, FacetField::Level)?,
            service: value_bitmaps(reader, FacetField::Service)?,
            host: value_bitmaps(reader, FacetField::Host)?,
            max_doc: reader.max_doc(),
        })
    }

    pub(crate) fn of(&self, field: FacetField) -> &ValueBitmaps {
        match field {
            FacetField::Level => &self.level,
            FacetField::Service => &self.service,
            FacetField::Host => &self.host,
        }
    }

    fn value(&self, field: FacetField, value: &str) -> RoaringBitmap {
        self.of(field).get(value).cloned().unwrap_or_default()
    }

    /// Every doc of the segment.
    fn all(&self) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..self.max_doc);
        all
    }

    /// Bytes the bitmaps take serialized; in memory they take at least
    /// this.
    pub(crate) fn bytes(&self) -> u64 {
        let fields = [&self.level, &self.service, &self.host];
        let values = fields.iter().flat_map(|f| f.values());
        values.map(|b| b.serialized_size() as u64).sum()
    }

    /// The docs `query` matches, deleted ones included, if it is made only
    /// of what the bitmaps answer; `None` otherwise.
    pub(crate) fn matches(&self, query: &Query) -> Option<RoaringBitmap> {
        Some(match query {
            Query::All => self.all(),
            Query::FieldIs(field, value) => self.value(facet(field)?, value),
            Query::LevelCmp(cmp, bound) => levels_selected(*cmp, bound)
                .into_iter()
                .map(|level| self.value(FacetField::Level, level))
                .fold(RoaringBitmap::new(), |union, b| union | b),
            Query::And(parts) => {
                let mut parts = parts.iter().map(|q| self.matches(q));
                let first = parts.next().flatten()?;
                parts.try_fold(first, |both, b| Some(both & b?))?
            }
            Query::Or(parts) => parts.iter().try_fold(RoaringBitmap::new(), |either, q| {
                Some(either | self.matches(q)?)
            })?,
            Query::Not(inner) => self.all() - self.matches(inner)?,
            Query::Word(_) | Query::WordPrefix(_) | Query::Phrase(_) | Query::FieldPrefix(..) => {
                return None;
            }
        })
    }
}

fn facet(field: &QField) -> Option<FacetField> {
    match field {
        QField::Level => Some(FacetField::Level),
        QField::Service => Some(FacetField::Service),
        QField::Host => Some(FacetField::Host),
        QField::Attr(_) => None,
    }
}

/// A bitmap per term of `field` in the segment, from its postings.
fn value_bitmaps(reader: &SegmentReader, field: FacetField) -> tantivy::Result<ValueBitmaps> {
    let field = reader.schema().get_field(field.name())?;
    let inverted = reader.inverted_index(field)?;
    let mut out = ValueBitmaps::new();
    let mut terms = inverted.terms().stream()?;
    while terms.advance() {
        let value = String::from_utf8_lossy(terms.key()).into_owned();
        let mut postings =
            inverted.read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
        let mut docs = RoaringBitmap::new();
        let mut doc = postings.doc();
        while doc != TERMINATED {
            // Postings are in doc order: each doc goes at the end.
            docs.push(doc);
            doc = postings.advance();
        }
        out.insert(value, docs);
    }
    Ok(out)
}
