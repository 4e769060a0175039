//! Roaring bitmaps of each segment's docs per value of level, service,
//! host and tenant, and of the attributes whose keys have few values, and
//! the field-filter queries they answer without visiting a doc; top values
//! of other queries are counted by each doc's value, built from them
//! ([`crate::ordinals`]).
//!
//! A segment's bitmaps of level, service and host are built from its
//! postings when a reader first warms it (with its columns,
//! [`crate::columns`]); its bitmaps of attributes when a query first asks
//! for one (they cost as much memory again on the generated corpus, 1.8
//! bytes a record, for deployments that filter on attributes). Both are
//! kept while the segment lives.
//!
//! A count or a top-values tally of a query made only of those field
//! filters (`level:error`, `level:>=warn`, `service:api OR host:web-1`,
//! `NOT level:info`, `attrs.component:dfs`, `*`), with no time range, is
//! then bitmap algebra and cardinalities, per segment. Anything else
//! (words, prefixes, an attribute key with many values in some segment, a
//! time range, a segment with deleted docs) goes through tantivy.
//!
//! An attribute key has few values in a segment when it has at most
//! [`MAX_ATTR_VALUES`] there. Keys with more (ids, pids, durations) would
//! cost a roaring container per value per 65,536 docs and are rarely
//! combined with other filters; their terms are left to tantivy.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use lode_query::{Field as QField, Query, levels_selected};
use roaring::RoaringBitmap;
use tantivy::schema::IndexRecordOption;
use tantivy::{DocSet, SegmentReader, TERMINATED};

use crate::FacetField;
use crate::ordinals::Ordinals;
use crate::schema::{ATTR_SEP, attr_term};

/// Most values an attribute key may have in a segment for its values to
/// get bitmaps there.
pub(crate) const MAX_ATTR_VALUES: usize = 256;

/// The docs of one segment holding each value of one field.
pub(crate) type ValueBitmaps = HashMap<String, RoaringBitmap>;

/// A segment's bitmaps; see the module documentation.
#[derive(Debug)]
pub(crate) struct FieldBitmaps {
    level: ValueBitmaps,
    service: ValueBitmaps,
    host: ValueBitmaps,
    /// Every read of a server is scoped to its caller's tenants: an
    /// intersection with one of these.
    tenant: ValueBitmaps,
    /// Built when a query first asks for an attribute, so that a
    /// deployment that never filters on attributes does not pay their
    /// memory; `None` if reading the postings failed (tantivy then answers,
    /// and meets the same error).
    attrs: OnceLock<Option<AttrBitmaps>>,
    /// Each doc's value of level, service, host and tenant (by
    /// [`FacetField::index`]), built when top values of the field are
    /// first asked; `None` for a field of too many values.
    ordinals: [OnceLock<Option<Arc<Ordinals>>>; 4],
    /// Docs in the segment, deleted ones included.
    max_doc: u32,
}

/// A segment's bitmaps of attributes.
#[derive(Debug)]
struct AttrBitmaps {
    /// Per attribute term (key, separator, value) of the keys with few
    /// values.
    terms: ValueBitmaps,
    /// The keys with more than [`MAX_ATTR_VALUES`] values (up to a first
    /// separator: see [`key_group`]).
    many_valued: HashSet<String>,
}

impl FieldBitmaps {
    pub(crate) fn build(reader: &SegmentReader) -> tantivy::Result<FieldBitmaps> {
        Ok(FieldBitmaps {
            level: value_bitmaps(reader, FacetField::Level)?,
            service: value_bitmaps(reader, FacetField::Service)?,
            host: value_bitmaps(reader, FacetField::Host)?,
            tenant: value_bitmaps(reader, FacetField::Tenant)?,
            attrs: OnceLock::new(),
            ordinals: Default::default(),
            max_doc: reader.max_doc(),
        })
    }

    /// Each doc's value of `field`, built once; `None` for a field of too
    /// many values ([`Ordinals`]).
    pub(crate) fn ordinals(&self, field: FacetField) -> Option<Arc<Ordinals>> {
        let built = self
            .ordinals
            .get(field.index())?
            .get_or_init(|| Ordinals::build(self.of(field), self.max_doc).map(Arc::new));
        built.clone()
    }

    pub(crate) fn of(&self, field: FacetField) -> &ValueBitmaps {
        match field {
            FacetField::Level => &self.level,
            FacetField::Service => &self.service,
            FacetField::Host => &self.host,
            FacetField::Tenant => &self.tenant,
        }
    }

    fn value(&self, field: FacetField, value: &str) -> Cow<'_, RoaringBitmap> {
        found(self.of(field).get(value))
    }

    /// The docs with attribute `key` = `value`, if the key has few values
    /// in `reader`, the segment of these bitmaps.
    fn attr(
        &self,
        reader: &SegmentReader,
        key: &str,
        value: &str,
    ) -> Option<Cow<'_, RoaringBitmap>> {
        let attrs = self
            .attrs
            .get_or_init(|| attr_bitmaps(reader).ok())
            .as_ref()?;
        let term = attr_term(key, value);
        if attrs.many_valued.contains(key_group(&term)) {
            return None;
        }
        Some(found(attrs.terms.get(&term)))
    }

    /// Every doc of the segment.
    fn all(&self) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..self.max_doc);
        all
    }

    /// Bytes the bitmaps take serialized (in memory they take at least
    /// this), and the ordinals built from them.
    pub(crate) fn bytes(&self) -> u64 {
        let attrs = self.attrs.get().and_then(Option::as_ref);
        let fields = [&self.level, &self.service, &self.host, &self.tenant];
        let fields = fields.into_iter().chain(attrs.map(|a| &a.terms));
        let values = fields.flat_map(|f| f.values());
        let bitmaps: u64 = values.map(|b| b.serialized_size() as u64).sum();
        let ordinals = self
            .ordinals
            .iter()
            .filter_map(|o| o.get().and_then(Option::as_ref));
        bitmaps + ordinals.map(|o| o.bytes()).sum::<u64>()
    }

    /// The docs `query` matches in `reader` (the segment of these
    /// bitmaps), deleted ones included, if it is made only of what the
    /// bitmaps answer; `None` otherwise.
    pub(crate) fn matches(
        &self,
        reader: &SegmentReader,
        query: &Query,
    ) -> Option<Cow<'_, RoaringBitmap>> {
        Some(match query {
            Query::All => Cow::Owned(self.all()),
            Query::FieldIs(QField::Attr(key), value) => self.attr(reader, key, value)?,
            Query::FieldIs(field, value) => self.value(facet(field)?, value),
            Query::LevelCmp(cmp, bound) => {
                let mut union = RoaringBitmap::new();
                for level in levels_selected(*cmp, bound) {
                    union |= self.value(FacetField::Level, level).as_ref();
                }
                Cow::Owned(union)
            }
            Query::And(parts) => {
                let mut parts = parts.iter().map(|q| self.matches(reader, q));
                let first = parts.next().flatten()?;
                parts.try_fold(first, |both, b| {
                    Some(Cow::Owned(both.as_ref() & b?.as_ref()))
                })?
            }
            Query::Or(parts) => {
                let mut union = RoaringBitmap::new();
                for part in parts {
                    union |= self.matches(reader, part)?.as_ref();
                }
                Cow::Owned(union)
            }
            Query::Not(inner) => {
                let mut rest = self.all();
                rest -= self.matches(reader, inner)?.as_ref();
                Cow::Owned(rest)
            }
            Query::Word(_)
            | Query::WordPrefix(_)
            | Query::WordPart { .. }
            | Query::Phrase(_)
            | Query::FieldPrefix(..) => {
                return None;
            }
        })
    }
}

/// A value's bitmap, or an empty one for a value the segment lacks; borrowed
/// so that an intersection does not copy its inputs.
fn found(bitmap: Option<&RoaringBitmap>) -> Cow<'_, RoaringBitmap> {
    bitmap.map_or_else(|| Cow::Owned(RoaringBitmap::new()), Cow::Borrowed)
}

fn facet(field: &QField) -> Option<FacetField> {
    match field {
        QField::Level => Some(FacetField::Level),
        QField::Service => Some(FacetField::Service),
        QField::Host => Some(FacetField::Host),
        QField::Tenant => Some(FacetField::Tenant),
        QField::Attr(_) => None,
    }
}

/// A bitmap per term of `field` in the segment, from its postings.
pub(crate) fn value_bitmaps(
    reader: &SegmentReader,
    field: FacetField,
) -> tantivy::Result<ValueBitmaps> {
    let field = reader.schema().get_field(field.name())?;
    let inverted = reader.inverted_index(field)?;
    let mut out = ValueBitmaps::new();
    let mut terms = inverted.terms().stream()?;
    while terms.advance() {
        let value = String::from_utf8_lossy(terms.key()).into_owned();
        let postings =
            inverted.read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
        out.insert(value, doc_bitmap(postings));
    }
    Ok(out)
}

/// The part of an attribute term before its first separator: the key,
/// unless the key holds a separator itself. Terms are grouped by it both
/// when bitmaps are built and when a query looks one up, so a key with a
/// separator is still answered exactly (by its whole term) or not at all.
fn key_group(term: &str) -> &str {
    term.split(ATTR_SEP).next().unwrap_or(term)
}

/// Bitmaps of the attribute terms whose key group has at most
/// [`MAX_ATTR_VALUES`] values, and the groups that have more. Terms come
/// sorted, so a group's terms are consecutive; the postings of a group's
/// terms past the limit are not read.
fn attr_bitmaps(reader: &SegmentReader) -> tantivy::Result<AttrBitmaps> {
    let field = reader.schema().get_field(crate::schema::ATTR_FIELD)?;
    let inverted = reader.inverted_index(field)?;
    let mut few = ValueBitmaps::new();
    let mut many = HashSet::new();
    let mut group: Option<String> = None;
    let mut pending: Vec<(String, RoaringBitmap)> = Vec::new();
    let mut terms = inverted.terms().stream()?;
    while terms.advance() {
        let term = String::from_utf8_lossy(terms.key()).into_owned();
        let this_group = key_group(&term);
        if group.as_deref() != Some(this_group) {
            few.extend(pending.drain(..));
            group = Some(this_group.to_owned());
        } else if many.contains(this_group) {
            continue;
        } else if pending.len() == MAX_ATTR_VALUES {
            many.insert(this_group.to_owned());
            pending.clear();
            continue;
        }
        let postings =
            inverted.read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
        pending.push((term, doc_bitmap(postings)));
    }
    few.extend(pending);
    Ok(AttrBitmaps {
        terms: few,
        many_valued: many,
    })
}

/// The docs of a postings list.
fn doc_bitmap(mut postings: impl DocSet) -> RoaringBitmap {
    let mut docs = AscendingDocs::default();
    let mut doc = postings.doc();
    while doc != TERMINATED {
        docs.push(doc);
        doc = postings.advance();
    }
    docs.finish()
}

/// A bitmap of docs given in increasing order (postings, a query's
/// matches), appended in runs. Not with `RoaringBitmap::push`, which first
/// looks for the largest value, scanning a dense container from its end:
/// building bitmaps that way was 11% of the instructions of importing 1M
/// records (callgrind), and tallying top values four times slower.
#[derive(Default)]
pub(crate) struct AscendingDocs {
    bitmap: RoaringBitmap,
    run: Vec<u32>,
}

impl AscendingDocs {
    pub(crate) fn push(&mut self, doc: u32) {
        self.run.push(doc);
        if self.run.len() >= RUN {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.bitmap.append(self.run.iter().copied()).is_err() {
            self.bitmap.extend(self.run.iter().copied());
        }
        self.run.clear();
    }

    pub(crate) fn finish(mut self) -> RoaringBitmap {
        self.flush();
        self.bitmap
    }
}

/// Docs appended to a bitmap at once.
const RUN: usize = 4096;
