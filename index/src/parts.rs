//! Parts of words (`*conn*`, `*conn`), found without reading the whole
//! term dictionary.
//!
//! A part is a substring of a term, so an automaton over the dictionary
//! cannot skip any of it: tantivy's `RegexQuery` for `.*conn.*` read every
//! term, 150 ms per million records, most of them numbers (96% of the
//! distinct terms of generated logs are). Each segment keeps instead, once
//! a query first asks for a part, the terms of its messages that hold a
//! letter (anything but a digit), with where their postings are; a part
//! that holds a letter is looked for in that list alone, and the docs of
//! the terms that hold it are gathered into a bitset, as tantivy's
//! `AutomatonWeight` does. A part of digits only may lie in a long number,
//! which is a term of its bucket ([`crate::numbers`]): it is settled by
//! reading ([`crate::reading`]) instead.

use std::sync::Arc;

use tantivy::postings::TermInfo;
use tantivy::query::{
    BitSetDocSet, BooleanQuery, ConstScorer, EmptyScorer, EnableScoring, Explanation, Occur, Query,
    RegexQuery, Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{BitSet, DocId, Score, SegmentReader, TantivyError, Term};

use crate::numbers::{is_bucket_term, only_digits};
use crate::recheck::Recheck;
use crate::schema::regex_escaped;

/// Most terms whose postings are merged as they are read (a union that
/// seeks: a time range or another filter skips through them); more, or
/// terms holding more than a [`DENSE_SHARE`]th of the segment's docs in
/// all, are gathered into a bitset first, as tantivy's `AutomatonWeight`
/// does (a union stepping through every doc of a common word cost a
/// volume over 10M records 0.8 s).
const MAX_UNION_TERMS: usize = 32;
const DENSE_SHARE: u64 = 8;

/// Most terms a segment's list keeps (about 70 bytes each in memory);
/// past it the segment's parts go through the regex.
const MAX_WORDS: usize = 500_000;

/// A segment's message terms that hold a letter, each with where its
/// postings are; `None` when there were more than [`MAX_WORDS`].
#[derive(Debug, Default)]
pub(crate) struct Words(Option<Vec<(Box<str>, TermInfo)>>);

impl Words {
    pub(crate) fn build(reader: &SegmentReader, field: Field) -> tantivy::Result<Words> {
        let index = reader.inverted_index(field)?;
        let mut stream = index.terms().stream()?;
        let mut words = Vec::new();
        while stream.advance() {
            let key = stream.key();
            if only_digits(key) || is_bucket_term(key) {
                continue;
            }
            if words.len() == MAX_WORDS {
                return Ok(Words(None));
            }
            let word = String::from_utf8_lossy(key).into();
            words.push((word, stream.value().clone()));
        }
        Ok(Words(Some(words)))
    }
}

/// Message terms that hold `part`: anywhere, or at their end.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) field: Field,
    pub(crate) part: String,
    pub(crate) at_end: bool,
    pub(crate) recheck: Arc<Recheck>,
}

impl Part {
    fn holds(&self, term: &str) -> bool {
        match self.at_end {
            true => term.ends_with(self.part.as_str()),
            false => term.contains(self.part.as_str()),
        }
    }

    /// The regex the dictionary is read with when the list cannot serve.
    fn regex(&self) -> tantivy::Result<RegexQuery> {
        let escaped = regex_escaped(&self.part);
        let pattern = match self.at_end {
            true => format!(".*{escaped}"),
            false => format!(".*{escaped}.*"),
        };
        RegexQuery::from_pattern(&pattern, self.field)
    }
}

impl Query for Part {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        // Nothing is scored; the regex is compiled only for a segment whose
        // list cannot serve.
        Ok(Box::new(PartWeight { part: self.clone() }))
    }
}

struct PartWeight {
    part: Part,
}

impl Weight for PartWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let digits = only_digits(self.part.part.as_bytes());
        let columns = self.part.recheck.columns(reader)?;
        let words = columns.words(reader, self.part.field)?;
        let (false, Some(words)) = (digits, words.0.as_ref()) else {
            let scoring = EnableScoring::disabled_from_schema(reader.schema());
            return self.part.regex()?.weight(scoring)?.scorer(reader, boost);
        };
        let matching: Vec<&(Box<str>, TermInfo)> = words
            .iter()
            .filter(|(term, _)| self.part.holds(term))
            .collect();
        if matching.is_empty() {
            return Ok(Box::new(EmptyScorer));
        }
        let docs_held: u64 = matching
            .iter()
            .map(|(_, info)| u64::from(info.doc_freq))
            .sum();
        let sparse = docs_held.saturating_mul(DENSE_SHARE) <= u64::from(reader.max_doc());
        if matching.len() <= MAX_UNION_TERMS && sparse {
            let terms = matching.iter().map(|(term, _)| {
                let term = Term::from_field_text(self.part.field, term);
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                (Occur::Should, query)
            });
            return BooleanQuery::new(terms.collect())
                .weight(EnableScoring::disabled_from_schema(reader.schema()))?
                .scorer(reader, boost);
        }
        let index = reader.inverted_index(self.part.field)?;
        let mut docs = BitSet::with_max_value(reader.max_doc());
        for (_, info) in matching {
            let mut postings =
                index.read_block_postings_from_terminfo(info, IndexRecordOption::Basic)?;
            while !postings.docs().is_empty() {
                for &doc in postings.docs() {
                    docs.insert(doc);
                }
                postings.advance();
            }
        }
        Ok(Box::new(ConstScorer::new(BitSetDocSet::from(docs), boost)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.seek(doc) == doc {
            Ok(Explanation::new("Part", 1.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "doc {doc} holds no term with '{}'",
                self.part.part
            )))
        }
    }
}
