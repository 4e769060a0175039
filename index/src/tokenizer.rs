//! The tokenizer of messages, in one pass.
//!
//! A message's tokens are `lode_query::tokens` exactly: runs of
//! alphanumeric characters, lowercased character by character, long
//! numbers replaced by their bucket's term ([`crate::numbers`]). tantivy's
//! `SimpleTokenizer`, `LowerCaser` and a bucket filter did it in three
//! passes with a copy and a check of each token in each; one pass over
//! ASCII bytes, lowercasing as it copies, takes under half the
//! instructions (callgrind over an import). Offsets and positions are
//! `SimpleTokenizer`'s: the test compares the two on any text.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

use crate::numbers::{bucketed, push_bucket_term};

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub(crate) struct MessageTokenizer {
    token: Token,
}

pub(crate) struct MessageTokens<'a> {
    text: &'a str,
    /// Where the next token is looked for: always a char boundary.
    at: usize,
    token: &'a mut Token,
}

impl Tokenizer for MessageTokenizer {
    type TokenStream<'a> = MessageTokens<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> MessageTokens<'a> {
        self.token.reset();
        MessageTokens {
            text,
            at: 0,
            token: &mut self.token,
        }
    }
}

impl TokenStream for MessageTokens<'_> {
    fn advance(&mut self) -> bool {
        let token = &mut *self.token;
        token.text.clear();
        token.position = token.position.wrapping_add(1);
        let Some(word) = next_word(self.text, self.at) else {
            self.at = self.text.len();
            return false;
        };
        self.at = word.to;
        token.offset_from = word.from;
        token.offset_to = word.to;
        let text = self.text.get(word.from..word.to).unwrap_or_default();
        if word.ascii && bucketed(text) {
            push_bucket_term(text, &mut token.text);
        } else if word.ascii {
            token.text.push_str(text);
            token.text.make_ascii_lowercase();
        } else {
            token.text.extend(text.chars().flat_map(char::to_lowercase));
        }
        true
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

/// A run of alphanumeric characters: its byte range, and whether it is
/// all ASCII.
struct Word {
    from: usize,
    to: usize,
    ascii: bool,
}

/// What a byte is: an ASCII letter or digit, other ASCII, or part of a
/// character beyond ASCII (decoded to be told).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Alphanumeric,
    Separator,
    Wide,
}

/// [`Class`] of each byte: one load a byte in the loops below.
// Evaluated at compile time: an index out of bounds would fail the build.
#[allow(clippy::indexing_slicing)]
const CLASS: [Class; 256] = {
    let mut class = [Class::Wide; 256];
    let mut b = 0;
    while b < 128 {
        class[b] = match (b as u8).is_ascii_alphanumeric() {
            true => Class::Alphanumeric,
            false => Class::Separator,
        };
        b += 1;
    }
    class
};

/// The class of `byte`.
fn class(byte: u8) -> Class {
    // Never `None`: the table has a class for each of the 256 bytes.
    CLASS.get(usize::from(byte)).copied().unwrap_or(Class::Wide)
}

/// The first run of alphanumeric characters at or after `at` (a char
/// boundary).
fn next_word(text: &str, at: usize) -> Option<Word> {
    let bytes = text.as_bytes();
    let mut from = at;
    loop {
        match class(*bytes.get(from)?) {
            Class::Alphanumeric => break,
            Class::Separator => from += 1,
            Class::Wide => match wide_char(text, from)? {
                (true, _) => break,
                (false, len) => from += len,
            },
        }
    }
    let (mut to, mut ascii) = (from, true);
    while let Some(&byte) = bytes.get(to) {
        match class(byte) {
            Class::Alphanumeric => to += 1,
            Class::Separator => break,
            Class::Wide => match wide_char(text, to) {
                Some((true, len)) => (to, ascii) = (to + len, false),
                _ => break,
            },
        }
    }
    Some(Word { from, to, ascii })
}

/// Whether the character beyond ASCII at byte `at` (a char boundary) is
/// alphanumeric, and its length.
fn wide_char(text: &str, at: usize) -> Option<(bool, usize)> {
    let c = text.get(at..)?.chars().next()?;
    Some((c.is_alphanumeric(), c.len_utf8()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tantivy::tokenizer::{LowerCaser, SimpleTokenizer, TextAnalyzer};

    use super::*;
    use crate::numbers::index_term;

    /// Each token as (text, offsets, position).
    fn tokens(mut stream: impl TokenStream) -> Vec<(String, usize, usize, usize)> {
        let mut out = Vec::new();
        stream.process(&mut |t| out.push((t.text.clone(), t.offset_from, t.offset_to, t.position)));
        out
    }

    /// What tantivy's tokenizer and lowercaser make of `text`, long
    /// numbers then put into buckets.
    fn reference(text: &str) -> Vec<(String, usize, usize, usize)> {
        let mut analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .build();
        let mut out = tokens(analyzer.token_stream(text));
        for token in &mut out {
            token.0 = index_term(&token.0).into_owned();
        }
        out
    }

    fn ours(text: &str) -> Vec<(String, usize, usize, usize)> {
        tokens(MessageTokenizer::default().token_stream(text))
    }

    #[test]
    fn words_numbers_and_other_scripts() {
        for text in [
            "",
            "  ",
            "Block blk_-1608999687919862906 of 1234 at 12345x, 12345.",
            "ÉTÉ Straße İstanbul ΣΑΣ naïve café ٣٤٥٦٧٨ 二〇二六年",
            "a\u{301}b x\u{200b}y Ⅻ ½ ①②",
            "trailing word",
        ] {
            assert_eq!(ours(text), reference(text), "{text:?}");
        }
        assert_eq!(ours("Proxy 8080")[0].0, "proxy");
        assert!(ours("pid 1234567")[1].0.starts_with('#'));
    }

    /// The same tokenizer reused for several texts starts each afresh.
    #[test]
    fn a_reused_tokenizer_starts_afresh() {
        let mut tokenizer = MessageTokenizer::default();
        let first = tokens(tokenizer.token_stream("one two three"));
        let second = tokens(tokenizer.token_stream("Four"));
        assert_eq!(first.len(), 3);
        assert_eq!(second, [("four".to_owned(), 0, 4, 0)]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// tantivy's chain, and `lode_query::tokens`, which queries and
        /// the brute-force matcher use.
        #[test]
        fn the_same_tokens_as_tantivys_chain(text in "(\\PC|[0-9]{1,8}|[a-zA-Z]{1,6}|[ ._-]){0,24}") {
            let ours = ours(&text);
            prop_assert_eq!(&ours, &reference(&text));
            let words: Vec<String> = lode_query::tokens(&text)
                .map(|word| index_term(&word).into_owned())
                .collect();
            let texts: Vec<String> = ours.into_iter().map(|t| t.0).collect();
            prop_assert_eq!(texts, words);
        }
    }
}
