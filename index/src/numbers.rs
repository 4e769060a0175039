//! Long numbers, indexed by bucket.
//!
//! Numbers are most of a log's distinct words (96% of the distinct terms of
//! the loghub mix) and most of them occur once: as terms, each costs a
//! dictionary entry and a posting list of its own, about 15 bytes, more
//! than the rest of the index per record. A number of [`MIN_DIGITS`] or
//! more is indexed instead as one of [`BUCKETS`] bucket terms, chosen by a
//! hash of its digits; a query for it finds the records of its bucket and
//! reads their messages to keep those that hold it
//! ([`crate::recheck`]), as a phrase is settled.

use std::borrow::Cow;

/// Numbers shorter than this stay terms: there are few distinct ones, and
/// a word such as a port or a year is found without reading records.
pub(crate) const MIN_DIGITS: usize = 5;

/// Bucket terms a segment can hold.
pub(crate) const BUCKETS: u64 = 1 << 16;

/// Whether `text` is ASCII digits only (and not empty).
pub(crate) fn only_digits(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(u8::is_ascii_digit)
}

/// Whether `token` (a lowercased token) is indexed by its bucket.
pub(crate) fn bucketed(token: &str) -> bool {
    token.len() >= MIN_DIGITS && only_digits(token.as_bytes())
}

/// Stands for a hex digit in a bucket's term: no letter or digit, so no
/// prefix or part of a word (whose regex needs one) finds a bucket.
const BUCKET_DIGITS: &[u8; 16] = b"!$%&()*+,-./:;<=";

/// The term of `number`'s bucket: `#` (never in a token) and the bucket in
/// hex written with [`BUCKET_DIGITS`]. The hash (64-bit FNV-1a) and the
/// spelling are part of the index format.
pub(crate) fn bucket_term(number: &str) -> String {
    let mut term = String::with_capacity(5);
    push_bucket_term(number, &mut term);
    term
}

/// [`bucket_term`] of `number`, pushed onto `out`.
pub(crate) fn push_bucket_term(number: &str, out: &mut String) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in number.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let bucket = hash % BUCKETS;
    out.push('#');
    for shift in [12, 8, 4, 0] {
        let digit = BUCKET_DIGITS.get(((bucket >> shift) & 0xf) as usize);
        out.push(char::from(digit.copied().unwrap_or(b'!')));
    }
}

/// Whether a term of the message field is a bucket's.
pub(crate) fn is_bucket_term(term: &[u8]) -> bool {
    term.first() == Some(&b'#')
}

/// The term a word (a lowercased token) is indexed as.
pub(crate) fn index_term(word: &str) -> Cow<'_, str> {
    match bucketed(word) {
        true => Cow::Owned(bucket_term(word)),
        false => Cow::Borrowed(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spelling of buckets is part of the index format: an index built
    /// with other buckets would find no long number.
    #[test]
    fn buckets_are_stable_and_never_a_word() {
        let terms: Vec<String> = ["12345", "55473", "1608999687919862906"]
            .into_iter()
            .map(bucket_term)
            .collect();
        assert_eq!(terms, ["#,-=,", "#(:=&", "#<=%<"]);
        for term in &terms {
            assert!(is_bucket_term(term.as_bytes()));
            assert!(!term.chars().any(char::is_alphanumeric), "{term}");
        }
        assert_eq!(index_term("1234"), "1234");
        assert_eq!(index_term("12345x"), "12345x");
        assert_ne!(index_term("12345"), "12345");
    }

    #[test]
    fn the_analyzer_replaces_long_numbers_only() {
        let mut analyzer = crate::schema::analyzer();
        let mut stream = analyzer.token_stream("Block 1608999687919862906 of 1234 at 12345x");
        let mut seen = Vec::new();
        use tantivy::tokenizer::TokenStream;
        stream.process(&mut |token| seen.push(token.text.clone()));
        assert_eq!(
            seen,
            [
                "block",
                &bucket_term("1608999687919862906"),
                "of",
                "1234",
                "at",
                "12345x"
            ]
        );
    }
}
