//! The tantivy schema of lode records and the translation of a parsed
//! [`lode_query::Query`] into a tantivy query.
//!
//! Owns how a record becomes a document and how lode's query semantics map
//! onto tantivy's: both sides must agree with `lode_query`'s brute-force
//! matcher, which the oracle test checks.

use std::borrow::Cow;
use std::ops::Bound;
use std::sync::Arc;

use lode_engine::{RecordRef, tenant_name};
use lode_query::{Field as QField, Query, levels_selected};
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, PhraseQuery, Query as TQuery, RangeQuery, RegexQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{FAST, Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{IndexSettings, TantivyDocument, Term};

use crate::numbers::{bucketed, only_digits};
use crate::parts::Part;
use crate::reading::{Check, Reading};
use crate::recheck::Recheck;
use crate::time::{TimeRange, grain};
use crate::tokenizer::MessageTokenizer;

/// The tokenizer of messages: `lode_query::tokens` exactly (alphanumeric
/// runs, lowercased per character), long numbers as their bucket's term
/// ([`crate::numbers`]). Its name is in the schema: an index tokenized
/// otherwise (before buckets, "lode") does not open as this one and is
/// rebuilt.
pub(crate) const TOKENIZER: &str = "lode-buckets";
/// Column of each record's seq.
pub(crate) const SEQ_FIELD: &str = "seq";
/// Attribute terms: key, [`ATTR_SEP`], lowercased value.
pub(crate) const ATTR_FIELD: &str = "attr";
/// Column of each record's time in milliseconds ([`crate::time`]); named
/// for its unit so that an index holding nanoseconds does not open as this.
pub(crate) const TS_FIELD: &str = "ts_ms";
/// Separates an attribute's key from its value in the `attr` field.
pub(crate) const ATTR_SEP: char = '\u{1f}';

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub(crate) seq: Field,
    pub(crate) ts_ms: Field,
    pub(crate) message: Field,
    pub(crate) level: Field,
    pub(crate) service: Field,
    pub(crate) host: Field,
    pub(crate) tenant: Field,
    pub(crate) attr: Field,
    /// Whether the message field keeps word positions: phrases then run on
    /// them instead of reading candidates' messages.
    pub(crate) positions: bool,
}

/// Indexing of a field: nothing is scored, so no field norms (they cost a
/// byte per document and field).
fn indexing(tokenizer: &str, option: IndexRecordOption) -> TextFieldIndexing {
    TextFieldIndexing::default()
        .set_tokenizer(tokenizer)
        .set_index_option(option)
        .set_fieldnorms(false)
}

/// The schema; `positions` as [`crate::IndexOptions::positions`]. An index
/// of the other choice does not open as this schema and is rebuilt.
pub(crate) fn schema(positions: bool) -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // Without positions, which words a message holds, not where: phrases
    // are settled by reading the message ([`crate::reading`]).
    let message_option = if positions {
        IndexRecordOption::WithFreqsAndPositions
    } else {
        IndexRecordOption::Basic
    };
    let message = TextOptions::default().set_indexing_options(indexing(TOKENIZER, message_option));
    // Whole lowercased values, without a column: top values are tallied
    // from bitmaps ([`crate::facets`]).
    let value =
        TextOptions::default().set_indexing_options(indexing("raw", IndexRecordOption::Basic));
    let fields = Fields {
        // Fast fields only: range queries run on the columns, and an
        // inverted index of unique values would cost a term per record.
        seq: builder.add_u64_field(SEQ_FIELD, FAST),
        ts_ms: builder.add_i64_field(TS_FIELD, FAST),
        message: builder.add_text_field("message", message),
        level: builder.add_text_field("level", value.clone()),
        service: builder.add_text_field("service", value.clone()),
        host: builder.add_text_field("host", value.clone()),
        tenant: builder.add_text_field("tenant", value.clone()),
        attr: builder.add_text_field(ATTR_FIELD, value),
        positions,
    };
    (builder.build(), fields)
}

/// Index settings: nothing is stored in tantivy's document store (records
/// live in the engine), yet each block of it keeps a u32 offset per
/// document, which lz4 cannot shrink (4.0 bytes per record); zstd at its
/// default level makes that 2.5 (levels up to 17 do no better; 18 and 19
/// reach 1.0 at 0.17 s of CPU per block). Large blocks keep the store's
/// own index small.
pub(crate) fn settings() -> IndexSettings {
    IndexSettings {
        docstore_blocksize: 1 << 20,
        docstore_compression: Compressor::Zstd(ZstdCompressor::default()),
        ..IndexSettings::default()
    }
}

pub(crate) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::from(MessageTokenizer::default())
}

pub(crate) fn attr_term(key: &str, value: &str) -> String {
    // Pushed, not `format!`: a third of building a document went to
    // formatting (callgrind).
    let mut term = String::with_capacity(key.len() + ATTR_SEP.len_utf8() + value.len());
    term.push_str(key);
    term.push(ATTR_SEP);
    term.push_str(value);
    term
}

/// `text` lowercased: borrowed when it is ASCII without capitals (most
/// levels, services, hosts and attribute values), so nothing is allocated.
fn lowercase(text: &str) -> Cow<'_, str> {
    match text
        .bytes()
        .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
    {
        true => Cow::Owned(text.to_lowercase()),
        false => Cow::Borrowed(text),
    }
}

/// The document of record `seq`, built from the record read in place.
pub(crate) fn document(fields: &Fields, seq: u64, record: RecordRef<'_>) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_text(fields.tenant, tenant_name(record.tenant));
    doc.add_u64(fields.seq, seq);
    doc.add_i64(fields.ts_ms, grain(record.timestamp()));
    doc.add_text(fields.message, record.message.as_str());
    doc.add_text(fields.level, lowercase(record.level.as_str()));
    doc.add_text(fields.service, lowercase(record.service.as_str()));
    doc.add_text(fields.host, lowercase(record.host.as_str()));
    for attr in record.attrs.iter() {
        doc.add_text(
            fields.attr,
            attr_term(attr.0.as_str(), &lowercase(attr.1.as_str())),
        );
    }
    doc
}

/// `text` as a regex that matches it literally.
pub(crate) fn regex_escaped(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

/// A regex that matches exactly the strings starting with `prefix`.
fn prefix_pattern(prefix: &str) -> String {
    format!("{}.*", regex_escaped(prefix))
}

fn field_term(fields: &Fields, field: &QField, value: &str) -> (Field, String) {
    match field {
        QField::Level => (fields.level, value.to_owned()),
        QField::Service => (fields.service, value.to_owned()),
        QField::Host => (fields.host, value.to_owned()),
        QField::Tenant => (fields.tenant, value.to_owned()),
        QField::Attr(key) => (fields.attr, attr_term(key, value)),
    }
}

fn term_query(field: Field, text: &str) -> Box<dyn TQuery> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, text),
        IndexRecordOption::Basic,
    ))
}

fn regex_query(field: Field, prefix: &str) -> tantivy::Result<Box<dyn TQuery>> {
    Ok(Box::new(RegexQuery::from_pattern(
        &prefix_pattern(prefix),
        field,
    )?))
}

/// Translates a parsed query restricted to a time range and to
/// `seq < before`; phrases read candidates' messages through `recheck`.
/// `Err` only for a regex tantivy refuses.
pub(crate) fn translate_restricted(
    fields: &Fields,
    query: &Query,
    time: Option<TimeRange>,
    before: Option<u64>,
    recheck: &Arc<Recheck>,
) -> tantivy::Result<Box<dyn TQuery>> {
    let mut also: Vec<Box<dyn TQuery>> = Vec::new();
    if let Some(time) = time {
        also.push(Box::new(time));
    }
    if let Some(before) = before {
        let upper = Bound::Excluded(Term::from_field_u64(fields.seq, before));
        also.push(Box::new(RangeQuery::new(Bound::Unbounded, upper)));
    }
    conjunction(fields, query, also, recheck)
}

fn translate(
    fields: &Fields,
    query: &Query,
    recheck: &Arc<Recheck>,
) -> tantivy::Result<Box<dyn TQuery>> {
    if settled_by_reading(fields, query).is_some() {
        return conjunction(fields, query, Vec::new(), recheck);
    }
    Ok(match query {
        Query::All => Box::new(AllQuery),
        Query::Word(word) => term_query(fields.message, word),
        Query::WordPrefix(prefix) => regex_query(fields.message, prefix)?,
        Query::WordPart { part, at_end } => Box::new(Part {
            field: fields.message,
            part: part.clone(),
            at_end: *at_end,
            recheck: Arc::clone(recheck),
        }),
        Query::Phrase(_) | Query::And(_) => conjunction(fields, query, Vec::new(), recheck)?,
        Query::FieldIs(field, value) => {
            let (field, text) = field_term(fields, field, value);
            term_query(field, &text)
        }
        Query::FieldPrefix(field, prefix) => {
            let (field, text) = field_term(fields, field, prefix);
            regex_query(field, &text)?
        }
        Query::LevelCmp(cmp, bound) => Box::new(TermSetQuery::new(
            levels_selected(*cmp, bound)
                .into_iter()
                .map(|name| Term::from_field_text(fields.level, name)),
        )),
        Query::Or(parts) => Box::new(BooleanQuery::new(
            parts
                .iter()
                .map(|q| Ok((Occur::Should, translate(fields, q, recheck)?)))
                .collect::<tantivy::Result<_>>()?,
        )),
        // tantivy's MustNot alone matches nothing: exclude from everything.
        Query::Not(inner) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery) as Box<dyn TQuery>),
            (Occur::MustNot, translate(fields, inner, recheck)?),
        ])),
    })
}

/// The parts of `query` that must all hold: an AND's parts (nested ANDs
/// flattened), or the query itself.
fn conjuncts(query: &Query) -> Vec<&Query> {
    match query {
        Query::And(parts) => parts.iter().flat_map(conjuncts).collect(),
        other => vec![other],
    }
}

/// What a message must hold for `query` (a conjunct) when the index
/// cannot tell: a phrase without positions, or with a long number (whose
/// term is its bucket's); a long number; a prefix or part of digits only
/// (which any long number may hold).
fn settled_by_reading(fields: &Fields, query: &Query) -> Option<Check> {
    let digits = |text: &str| only_digits(text.as_bytes());
    match query {
        Query::Phrase(words) if !fields.positions || words.iter().any(|w| bucketed(w)) => {
            Some(Check::Phrase(words.as_slice().into()))
        }
        Query::Word(word) if bucketed(word) => Some(Check::Phrase([word.clone()].into())),
        Query::WordPrefix(prefix) if digits(prefix) => Some(Check::Prefix(prefix.clone())),
        Query::WordPart { part, at_end } if digits(part) => Some(Check::Part {
            part: part.clone(),
            at_end: *at_end,
        }),
        _ => None,
    }
}

/// Whether answering `query` reads messages from the engine.
pub(crate) fn reads_messages(fields: &Fields, query: &Query) -> bool {
    match query {
        Query::And(parts) | Query::Or(parts) => parts.iter().any(|q| reads_messages(fields, q)),
        Query::Not(inner) => reads_messages(fields, inner),
        other => settled_by_reading(fields, other).is_some(),
    }
}

/// Every conjunct of `query` and every query of `also`. The conjuncts the
/// index cannot settle ([`settled_by_reading`]) are settled last, in one
/// check: only the records that every other conjunct and every word of
/// the checks match are read (two-phase matching). A phrase beside a
/// filter, a time range or a page's cursor reads no record the rest
/// excludes.
fn conjunction(
    fields: &Fields,
    query: &Query,
    also: Vec<Box<dyn TQuery>>,
    recheck: &Arc<Recheck>,
) -> tantivy::Result<Box<dyn TQuery>> {
    let mut within = also;
    let mut checks: Vec<Check> = Vec::new();
    for part in conjuncts(query) {
        match (settled_by_reading(fields, part), part) {
            (Some(check), _) => checks.push(check),
            (None, Query::Phrase(words)) => within.push(Box::new(PhraseQuery::new(
                words
                    .iter()
                    .map(|w| Term::from_field_text(fields.message, w))
                    .collect(),
            ))),
            (None, other) => within.push(translate(fields, other, recheck)?),
        }
    }
    if checks.is_empty() {
        return Ok(all_of(within));
    }
    Ok(Box::new(Reading {
        field: fields.message,
        checks: checks.into(),
        within: within.into(),
        recheck: Arc::clone(recheck),
    }))
}

/// A query matching what every one of `parts` matches.
fn all_of(mut parts: Vec<Box<dyn TQuery>>) -> Box<dyn TQuery> {
    match parts.pop() {
        Some(only) if parts.is_empty() => only,
        last => Box::new(BooleanQuery::new(
            parts
                .into_iter()
                .chain(last)
                .map(|q| (Occur::Must, q))
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_borrows_only_what_is_already_lower_case() {
        assert!(matches!(lowercase("sshd-42"), Cow::Borrowed("sshd-42")));
        assert_eq!(lowercase("LabSZ"), "labsz");
        assert_eq!(lowercase("ÉTÉ"), "été");
        assert!(matches!(lowercase("été"), Cow::Owned(_)));
        assert_eq!(lowercase("été"), "été");
        assert_eq!(attr_term("pid", "7"), "pid\u{1f}7");
    }
}
