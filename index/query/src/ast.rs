//! The parsed form of a query, and the word semantics every part of lode
//! agrees on.

use lode_codec::Level;

/// The fields a query can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Level,
    Service,
    Host,
    /// `attrs.KEY`
    Attr(String),
    /// The tenant a record belongs to (`default` for the default tenant):
    /// how a server scopes every read to its caller's tenants.
    Tenant,
}

/// How `level:` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Ge,
    Gt,
}

/// A parsed query.
///
/// Message words are lowercase tokens; field values are lowercased and
/// compared whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `*`: every record.
    All,
    /// A message token (`word`, `message:word`).
    Word(String),
    /// Message tokens that start with this (`conn*`).
    WordPrefix(String),
    /// Message tokens that hold this: anywhere (`*conn*`), or at their
    /// end (`*conn`).
    WordPart {
        part: String,
        at_end: bool,
    },
    /// Consecutive message tokens (`"a b c"`, or a word that tokenizes into
    /// several, like `blk_42`).
    Phrase(Vec<String>),
    /// A field's whole value, case-insensitively (`service:api`).
    FieldIs(Field, String),
    /// A field's value starts with this, case-insensitively (`host:web-*`).
    FieldPrefix(Field, String),
    /// `level:>=warn` and friends: only the six known levels compare.
    LevelCmp(Cmp, Level),
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
}

/// The tokens of a text: maximal runs of characters that are alphanumeric
/// (`char::is_alphanumeric`: Unicode letters and numbers), lowercased
/// character by character (`char::to_lowercase`, as tantivy's `LowerCaser`
/// does: no context rules such as a word-final sigma).
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    raw_tokens(text).map(|t| t.chars().flat_map(char::to_lowercase).collect())
}

/// The tokens of a text as they are written (not lowercased).
fn raw_tokens(text: &str) -> impl Iterator<Item = &str> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
}

/// Whether `text` holds `words` (lowercase tokens) as consecutive tokens;
/// never for no words. What a phrase means; compares in place, without
/// lowercased copies of the text's tokens.
pub fn has_phrase(text: &str, words: &[String]) -> bool {
    let same = |raw: &str, word: &String| raw.chars().flat_map(char::to_lowercase).eq(word.chars());
    let raw: Vec<&str> = raw_tokens(text).collect();
    !words.is_empty()
        && raw
            .windows(words.len())
            .any(|window| window.iter().zip(words).all(|(raw, word)| same(raw, word)))
}

/// The rank of a known level (trace 0 … fatal 5); `None` for others.
pub fn level_rank(level: &Level) -> Option<u8> {
    match level {
        Level::Trace => Some(0),
        Level::Debug => Some(1),
        Level::Info => Some(2),
        Level::Warn => Some(3),
        Level::Error => Some(4),
        Level::Fatal => Some(5),
        Level::Other(_) => None,
    }
}

impl Cmp {
    pub fn holds(self, value: u8, bound: u8) -> bool {
        match self {
            Cmp::Lt => value < bound,
            Cmp::Le => value <= bound,
            Cmp::Ge => value >= bound,
            Cmp::Gt => value > bound,
        }
    }
}
