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

/// Records whose `field` (the message) holds `words` consecutively.
#[derive(Debug, Clone)]
pub(crate) struct Phrase {
    pub(crate) field: Field,
    pub(crate) words: Arc<[String]>,
    pub(crate) recheck: Arc<Recheck>,
}

impl Query for Phrase {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let all_words = BooleanQuery::new(
            self.words
                .iter()
                .map(|word| {
                    let term = Term::from_field_text(self.field, word);
                    let query: Box<dyn Query> =
                        Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                    (Occur::Must, query)
                })
                .collect(),
        );
        Ok(Box::new(PhraseWeight {
            all_words: all_words.weight(scoring)?,
            phrase: self.clone(),
        }))
    }
}

struct PhraseWeight {
    all_words: Box<dyn Weight>,
    phrase: Phrase,
}

impl Weight for PhraseWeight {
    /// The docs holding every word whose message has them in order.
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let candidates = self.all_words.scorer(reader, boost)?;
        let Phrase { words, recheck, .. } = self.phrase.clone();
        let columns = recheck.columns(reader)?;
        let keeps = move |docs: &[DocId]| {
            let seqs = seqs_of(&columns.seqs, docs.iter().copied());
            recheck
                .read_many(&seqs, |record| has_phrase(&record.message, &words))
                .into_iter()
                .map(|holds| holds.unwrap_or(false))
                .collect()
        };
        Ok(Box::new(Filtered::new(candidates, keeps, READ_COST)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        explain(self, reader, doc, "Phrase")
    }
}
