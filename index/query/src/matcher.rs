//! The brute-force meaning of a query over one record: what the index must
//! agree with (the search oracle), and the filter of live tails.

use lode_codec::{Level, LogRecord};

use crate::ast::{Field, Query, has_phrase, level_rank, tokens};

/// A record prepared for matching: its message tokens computed once.
#[derive(Debug)]
pub struct Prepared<'a> {
    record: &'a LogRecord,
    tokens: Vec<String>,
}

impl<'a> Prepared<'a> {
    pub fn new(record: &'a LogRecord) -> Prepared<'a> {
        Prepared {
            record,
            tokens: tokens(&record.message).collect(),
        }
    }
}

fn field_values<'a>(record: &'a LogRecord, field: &Field) -> Vec<&'a str> {
    match field {
        Field::Level => vec![record.level.as_str()],
        Field::Service => vec![record.service.as_str()],
        Field::Host => vec![record.host.as_str()],
        Field::Tenant => vec![lode_codec::tenant_name(&record.tenant)],
        Field::Attr(key) => record
            .attrs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect(),
    }
}

impl Query {
    /// Whether `record` matches, by the definitions in [`crate`]'s docs.
    pub fn matches(&self, record: &Prepared<'_>) -> bool {
        match self {
            Query::All => true,
            Query::Word(word) => record.tokens.iter().any(|t| t == word),
            Query::WordPrefix(prefix) => {
                record.tokens.iter().any(|t| t.starts_with(prefix.as_str()))
            }
            Query::WordPart { part, at_end } => record.tokens.iter().any(|t| match at_end {
                true => t.ends_with(part.as_str()),
                false => t.contains(part.as_str()),
            }),
            Query::Phrase(words) => has_phrase(&record.record.message, words),
            Query::FieldIs(field, value) => field_values(record.record, field)
                .iter()
                .any(|v| v.to_lowercase() == *value),
            Query::FieldPrefix(field, prefix) => field_values(record.record, field)
                .iter()
                .any(|v| v.to_lowercase().starts_with(prefix.as_str())),
            Query::LevelCmp(cmp, bound) => {
                match (level_rank(&record.record.level), level_rank(bound)) {
                    (Some(value), Some(bound)) => cmp.holds(value, bound),
                    _ => false,
                }
            }
            Query::And(parts) => parts.iter().all(|q| q.matches(record)),
            Query::Or(parts) => parts.iter().any(|q| q.matches(record)),
            Query::Not(inner) => !inner.matches(record),
        }
    }
}

/// The levels `level:<cmp><bound>` selects, as canonical names.
pub fn levels_selected(cmp: crate::Cmp, bound: &Level) -> Vec<&'static str> {
    const ALL: [&str; 6] = ["trace", "debug", "info", "warn", "error", "fatal"];
    let Some(bound) = level_rank(bound) else {
        return Vec::new();
    };
    ALL.iter()
        .zip(0u8..)
        .filter(|(_, rank)| cmp.holds(*rank, bound))
        .map(|(name, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn record(message: &str) -> LogRecord {
        LogRecord {
            ts: 0,
            level: Level::Warn,
            service: "API".into(),
            host: "web-1".into(),
            attrs: vec![("user".into(), "Bob".into())],
            message: message.into(),
            tenant: String::new(),
        }
    }

    fn hit(query: &str, message: &str) -> bool {
        let r = record(message);
        parse(query).unwrap().matches(&Prepared::new(&r))
    }

    #[test]
    fn word_semantics() {
        assert!(hit("refused", "Connection REFUSED by peer"));
        assert!(!hit("refuse", "connection refused"));
        assert!(hit("refuse*", "connection refused"));
        assert!(hit("\"connection refused\"", "Connection, refused!"));
        assert!(!hit("\"refused connection\"", "connection refused"));
        assert!(hit("blk_42", "got blk_42 done"));
        assert!(hit("42", "got blk_42 done"));
        assert!(hit("élan", "ÉLAN vital"));
    }

    #[test]
    fn fields_and_logic() {
        assert!(hit("service:api host:web-1 attrs.user:bob", "x"));
        assert!(hit("host:web*", "x"));
        assert!(!hit("service:ap", "x"));
        assert!(hit("level:>=warn", "x"));
        assert!(!hit("level:>warn", "x"));
        assert!(hit("level:warning", "x"));
        assert!(hit("a OR b", "b"));
        assert!(hit("-a", "b"));
        assert!(!hit("NOT b", "b"));
        assert!(hit("*", ""));
    }

    #[test]
    fn level_ranges() {
        assert_eq!(
            levels_selected(crate::Cmp::Ge, &Level::Error),
            vec!["error", "fatal"]
        );
        assert_eq!(
            levels_selected(crate::Cmp::Lt, &Level::Debug),
            vec!["trace"]
        );
    }
}
