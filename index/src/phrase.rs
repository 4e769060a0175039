//! Phrases, settled by reading the message.
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

use std::collections::BTreeSet;
use std::sync::Arc;

use lode_query::has_phrase;
use tantivy::query::{
    BooleanQuery, EnableScoring, Explanation, Occur, Query, Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Score, SegmentReader, Term};

use crate::recheck::{Filtered, Recheck, explain, seqs_of};

/// What checking a candidate costs beside stepping through a posting list
/// (tantivy's unit of `cost`): reading a record from the engine takes some
/// microseconds. Intersections then lead with the other scorers, and a
/// newest-first page reads candidates a window at a time.
const READ_COST: u64 = 100;

/// Records that every query of `within` matches and whose `field` (the
/// message) holds each of `phrases`, its words consecutively. The index
/// finds the records holding every word of the phrases and matching
/// `within`; only those are read and checked.
#[derive(Debug, Clone)]
pub(crate) struct Phrase {
    pub(crate) field: Field,
    pub(crate) phrases: Arc<[Arc<[String]>]>,
    pub(crate) within: Arc<[Box<dyn Query>]>,
    pub(crate) recheck: Arc<Recheck>,
}

impl Query for Phrase {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let words: BTreeSet<&String> = self.phrases.iter().flat_map(|p| p.iter()).collect();
        let words = words.into_iter().map(|word| {
            let term = Term::from_field_text(self.field, word);
            let query: Box<dyn Query> = Box::new(TermQuery::new(term, IndexRecordOption::Basic));
            query
        });
        let candidates = BooleanQuery::new(
            words
                .chain(self.within.iter().map(|q| q.box_clone()))
                .map(|query| (Occur::Must, query))
                .collect(),
        );
        Ok(Box::new(PhraseWeight {
            candidates: candidates.weight(scoring)?,
            phrase: self.clone(),
        }))
    }
}

struct PhraseWeight {
    candidates: Box<dyn Weight>,
    phrase: Phrase,
}

impl Weight for PhraseWeight {
    /// The candidates whose message holds every phrase.
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let candidates = self.candidates.scorer(reader, boost)?;
        let Phrase {
            phrases, recheck, ..
        } = self.phrase.clone();
        let columns = recheck.columns(reader)?;
        let within = recheck.bound_for(candidates.as_ref());
        let keeps = move |docs: &[DocId]| {
            let seqs = seqs_of(&columns.seqs, docs.iter().copied());
            recheck
                .read_many(&seqs, |record| {
                    phrases
                        .iter()
                        .all(|words| has_phrase(&record.message, words))
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
        explain(self, reader, doc, "Phrase")
    }
}
