//! lode's query language.
//!
//! What users type: words and `"phrases"`; `AND`, `OR`, `NOT`, `-word` and
//! parentheses (juxtaposition means AND); `level:error`, `level:>=warn`
//! (trace < debug < info < warn < error < fatal), `service:api`,
//! `host:web-1`, `attrs.KEY:value`, `message:word`; prefixes `conn*` and
//! `host:web-*`; `*` alone for everything. A time range is given beside the
//! text ([`parse_time`]: RFC 3339 or `15m`, `2h`, `7d` before now).
//!
//! Word semantics, which the index, the tests and every client rely on: a
//! word matches a record whose message contains it as a whole token,
//! case-insensitively, where tokens are maximal runs of alphanumeric
//! characters ([`tokens`]); a phrase matches consecutive tokens; a word
//! that tokenizes into several tokens (`blk_42`, `10.0.0.1`) is a phrase.
//! Field filters compare a field's whole value, case-insensitively.
//!
//! ```
//! use lode_query::{parse, Query};
//!
//! let query = parse("level:>=warn (timeout OR \"connection refused\") -host:test-*")?;
//! assert!(matches!(query, Query::And(_)));
//! let err = parse("service:api (timeout").unwrap_err();
//! assert_eq!(err.column, 21);
//! assert_eq!(err.to_string(), "column 21: expected ')' to close the '(' at column 13");
//! # Ok::<(), lode_query::ParseError>(())
//! ```

mod ast;
mod matcher;
mod parser;
mod time;

pub use ast::{Cmp, Field, Query, has_phrase, level_rank, tokens};
pub use matcher::{Prepared, levels_selected};
pub use parser::{MAX_QUERY_CHARS, ParseError, parse};
pub use time::parse_time;

#[cfg(test)]
mod proptests {
    //! The parser never panics and always answers within its limits: a
    //! bounded, always-on companion of the cargo-fuzz target in
    //! `index/fuzz`.
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn any_text_parses_or_errs_with_a_column(text in "[a-z:*()\" \\-ORANDT>=<.0-9é_]{0,40}") {
            match parse(&text) {
                Ok(query) => {
                    let record = lode_codec::LogRecord { message: text.clone(), ..Default::default() };
                    let _ = query.matches(&Prepared::new(&record));
                }
                Err(e) => prop_assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{e} for {text:?}"),
            }
            let _ = parse_time(&text, 0);
        }

        /// A phrase is found exactly where the lowercased tokens hold it
        /// consecutively; phrases are cut from the text's own tokens half
        /// the time, so that both answers are tried.
        #[test]
        fn has_phrase_is_consecutive_lowercased_tokens(
            text in "[a-cA-CÉé1 ,.]{0,30}",
            picked in proptest::collection::vec("[a-cé1]{1,2}", 1..4),
            start in 0usize..10,
            own in any::<bool>(),
        ) {
            let all: Vec<String> = tokens(&text).collect();
            let words: Vec<String> = if own && !all.is_empty() {
                let from = start % all.len();
                all[from..all.len().min(from + picked.len())].to_vec()
            } else {
                picked
            };
            let expected = all.windows(words.len()).any(|w| w == words.as_slice());
            prop_assert_eq!(has_phrase(&text, &words), expected);
        }
    }
}
