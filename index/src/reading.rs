//! Conditions settled by reading the message: phrases, long numbers and
//! prefixes or parts of numbers.
//!
//! The index keeps which words each message holds, not where: positions
//! would cost about 8 bytes a record and term frequencies (which they need)
//! 3 more, an eighth of all lode stores, for phrases alone. A phrase
//! matches the records holding all its words, and each such candidate's
//! message is then read from the engine and checked for the words in order
//! ([`lode_query::has_phrase`], the definition the brute-force matcher
//! uses). The words of a phrase mostly occur together, so few candidates
//! are read in vain; a newest-first page reads about as many messages as
//! it returns.
//!
//! A long number is a term of its bucket ([`crate::numbers`]): the
//! records of the bucket are its candidates, read and checked as a phrase
//! of one word. A prefix or part of digits only can lie in any long
//! number, which no term tells: in an AND, every record the rest of the
//! AND leaves is read; under OR or NOT, every record of the windows the
//! query's scorers step through.

use std::collections::BTreeSet;
use std::sync::Arc;

use lode_query::{has_phrase, tokens};
use tantivy::query::{
    AllQuery, BooleanQuery, EnableScoring, Explanation, Occur, Query, Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Score, SegmentReader, Term};

use crate::numbers::index_term;
use crate::recheck::{Filtered, Recheck, explain, seqs_of};

/// What checking a candidate costs beside stepping through a posting list
/// (tantivy's unit of `cost`): reading a record from the engine takes some
/// microseconds. Intersections then lead with the other scorers, and a
/// newest-first page reads candidates a window at a time.
const READ_COST: u64 = 100;

/// What a message must hold.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// These words, consecutively (a long number is a phrase of one).
    Phrase(Arc<[String]>),
    /// A token that starts with this.
    Prefix(String),
    /// A token that holds this, or ends with it.
    Part { part: String, at_end: bool },
}

impl Check {
    fn holds(&self, message: &str) -> bool {
        match self {
            Check::Phrase(words) => has_phrase(message, words),
            Check::Prefix(prefix) => tokens(message).any(|t| t.starts_with(prefix.as_str())),
            Check::Part { part, at_end } => tokens(message).any(|t| match at_end {
                true => t.ends_with(part.as_str()),
                false => t.contains(part.as_str()),
            }),
        }
    }

    /// Words every message that holds this holds.
    fn words(&self) -> &[String] {
        match self {
            Check::Phrase(words) => words,
            Check::Prefix(_) | Check::Part { .. } => &[],
        }
    }
}

/// Records that every query of `within` matches and whose `field` (the
/// message) passes each of `checks`. The index finds the records holding
/// every word of the checks and matching `within`; only those are read
/// and checked.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub(crate) field: Field,
    pub(crate) checks: Arc<[Check]>,
    pub(crate) within: Arc<[Box<dyn Query>]>,
    pub(crate) recheck: Arc<Recheck>,
}

impl Query for Reading {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let terms: BTreeSet<String> = self
            .checks
            .iter()
            .flat_map(Check::words)
            .map(|word| index_term(word).into_owned())
            .collect();
        let terms = terms.into_iter().map(|term| {
            let term = Term::from_field_text(self.field, &term);
            let query: Box<dyn Query> = Box::new(TermQuery::new(term, IndexRecordOption::Basic));
            query
        });
        let mut candidates: Vec<(Occur, Box<dyn Query>)> = terms
            .chain(self.within.iter().map(|q| q.box_clone()))
            .map(|query| (Occur::Must, query))
            .collect();
        if candidates.is_empty() {
            candidates.push((Occur::Must, Box::new(AllQuery)));
        }
        Ok(Box::new(ReadingWeight {
            candidates: BooleanQuery::new(candidates).weight(scoring)?,
            reading: self.clone(),
        }))
    }
}

struct ReadingWeight {
    candidates: Box<dyn Weight>,
    reading: Reading,
}

impl Weight for ReadingWeight {
    /// The candidates whose message passes every check.
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let candidates = self.candidates.scorer(reader, boost)?;
        let Reading {
            checks, recheck, ..
        } = self.reading.clone();
        let columns = recheck.columns(reader)?;
        let within = recheck.bound_for(candidates.as_ref());
        let keeps = move |docs: &[DocId]| {
            let seqs = seqs_of(&columns.seqs, docs.iter().copied());
            recheck
                .read_many(&seqs, |record| {
                    checks.iter().all(|c| c.holds(&record.message))
                })
                .into_iter()
                .map(|holds| holds.unwrap_or(false))
                .collect()
        };
        Ok(Box::new(Filtered::new(
            candidates, keeps, READ_COST, within,
        )))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        explain(self, reader, doc, "Reading")
    }
}
