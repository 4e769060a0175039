//! The query parser: text in, [`Query`] or a [`ParseError`] naming the
//! column and what was expected. Deterministic, no I/O, never panics.
//!
//! ```text
//! query   := or
//! or      := and ("OR" and)*
//! and     := unary (["AND"] unary)*          juxtaposition means AND
//! unary   := "NOT" unary | "-" unary | primary
//! primary := "(" or ")" | "*" | PHRASE | FIELD ":" value | WORD
//! value   := [">=" | ">" | "<=" | "<"] WORD | PHRASE          (comparisons: level only)
//! FIELD   := level | service | host | message | attrs.KEY
//! ```
//!
//! A WORD ending in `*` is a prefix of a token (`conn*`); one starting
//! with `*` a part of one (`*conn*` anywhere in it, `*conn` at its end).

use lode_codec::Level;

use crate::ast::{Cmp, Field, Query, level_rank, tokens};

/// Why a query does not parse: where (1-based column, in characters) and
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// Queries longer than this are refused rather than parsed.
pub const MAX_QUERY_CHARS: usize = 16 * 1024;
/// Nesting deeper than this is refused (the parser recurses).
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    Minus,
    Phrase(String),
    Word(String),
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    column: usize,
}

fn error(column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column,
        message: message.into(),
    }
}

fn lex(text: &str) -> Result<Vec<Spanned>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let column = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' => {
                out.push(Spanned {
                    tok: if c == '(' { Tok::Open } else { Tok::Close },
                    column,
                });
                i += 1;
            }
            '"' => {
                let end = (i + 1..chars.len())
                    .find(|&j| chars.get(j) == Some(&'"'))
                    .ok_or_else(|| error(column, "unterminated phrase: expected a closing '\"'"))?;
                let phrase: String = chars.get(i + 1..end).unwrap_or_default().iter().collect();
                out.push(Spanned {
                    tok: Tok::Phrase(phrase),
                    column,
                });
                i = end + 1;
            }
            '-' if chars.get(i + 1).is_some_and(|n| !n.is_whitespace()) => {
                out.push(Spanned {
                    tok: Tok::Minus,
                    column,
                });
                i += 1;
            }
            _ => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|&c| !c.is_whitespace() && c != '(' && c != ')' && c != '"')
                {
                    i += 1;
                }
                // `field:"a phrase"`: the word ends at the colon, the phrase follows.
                let word: String = chars.get(start..i).unwrap_or_default().iter().collect();
                out.push(Spanned {
                    tok: Tok::Word(word),
                    column,
                });
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
    end_column: usize,
    depth: usize,
}

/// Parses `text` into a [`Query`].
pub fn parse(text: &str) -> Result<Query, ParseError> {
    let length = text.chars().count();
    if length > MAX_QUERY_CHARS {
        return Err(error(
            MAX_QUERY_CHARS + 1,
            format!("query longer than {MAX_QUERY_CHARS} characters"),
        ));
    }
    let toks = lex(text)?;
    if toks.is_empty() {
        return Err(error(
            1,
            "empty query: expected a word, a phrase, a field filter or * (everything)",
        ));
    }
    let mut parser = Parser {
        toks,
        pos: 0,
        end_column: length + 1,
        depth: 0,
    };
    let query = parser.or()?;
    match parser.peek() {
        None => Ok(query),
        Some(s) if s.tok == Tok::Close => Err(error(s.column, "unexpected ')' with no '(' open")),
        Some(s) => Err(error(s.column, "expected AND, OR or the end of the query")),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Spanned> {
        self.toks.get(self.pos)
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end_column, |s| s.column)
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Spanned { tok: Tok::Word(w), .. }) if w == keyword)
    }

    fn or(&mut self) -> Result<Query, ParseError> {
        let mut parts = vec![self.and()?];
        while self.is_keyword("OR") {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Query, ParseError> {
        let mut parts = vec![self.unary()?];
        loop {
            if self.is_keyword("AND") {
                self.pos += 1;
                parts.push(self.unary()?);
            } else if self.peek().is_some_and(|s| s.tok != Tok::Close) && !self.is_keyword("OR") {
                parts.push(self.unary()?);
            } else {
                break;
            }
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Query, ParseError> {
        if self.is_keyword("NOT")
            || matches!(
                self.peek(),
                Some(Spanned {
                    tok: Tok::Minus,
                    ..
                })
            )
        {
            self.pos += 1;
            return self.nested(|p| p.unary()).map(|q| Query::Not(Box::new(q)));
        }
        self.primary()
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Parser) -> Result<Query, ParseError>,
    ) -> Result<Query, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(error(
                self.column(),
                format!("query nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn primary(&mut self) -> Result<Query, ParseError> {
        let Some(Spanned { tok, column }) = self.peek().cloned() else {
            return Err(error(
                self.end_column,
                "expected a word, a phrase, a field filter, * or '('",
            ));
        };
        self.pos += 1;
        match tok {
            Tok::Open => {
                let inner = self.nested(|p| p.or())?;
                match self.peek() {
                    Some(Spanned {
                        tok: Tok::Close, ..
                    }) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(error(
                        self.column(),
                        format!("expected ')' to close the '(' at column {column}"),
                    )),
                }
            }
            Tok::Close => Err(error(
                column,
                "expected a word, a phrase, a field filter, * or '(' before ')'",
            )),
            Tok::Minus => Err(error(column, "expected something to exclude after '-'")),
            Tok::Phrase(text) => phrase(&text, column),
            Tok::Word(word) if word == "AND" || word == "OR" => Err(error(
                column,
                format!("expected a word, a phrase or a field filter before {word}"),
            )),
            Tok::Word(word) if word == "NOT" => {
                Err(error(column, "expected something to exclude after NOT"))
            }
            Tok::Word(word) if word == "*" => Ok(Query::All),
            Tok::Word(word) => match split_field(&word) {
                Some((name, value)) => self.field(name, value, column),
                None => message_word(&word, column),
            },
        }
    }

    fn field(&mut self, name: &str, value: &str, column: usize) -> Result<Query, ParseError> {
        let value_column = column + name.chars().count() + 1;
        let field = match name {
            "level" => Some(Field::Level),
            "service" => Some(Field::Service),
            "host" => Some(Field::Host),
            "tenant" => Some(Field::Tenant),
            "message" => None,
            _ => match name.strip_prefix("attrs.") {
                Some(key) if !key.is_empty() => Some(Field::Attr(key.to_owned())),
                _ => {
                    return Err(error(
                        column,
                        format!(
                            "unknown field '{name}': expected level, service, host, tenant, message or attrs.KEY"
                        ),
                    ));
                }
            },
        };
        // `field:"quoted value"`
        let value = if value.is_empty() {
            match self.peek().cloned() {
                Some(Spanned {
                    tok: Tok::Phrase(text),
                    column: phrase_column,
                }) if phrase_column == value_column => {
                    self.pos += 1;
                    return match field {
                        None => phrase(&text, phrase_column),
                        Some(field) => Ok(Query::FieldIs(field, text.to_lowercase())),
                    };
                }
                _ => {
                    return Err(error(
                        value_column,
                        format!("expected a value after '{name}:'"),
                    ));
                }
            }
        } else {
            value
        };
        match field {
            None => message_word(value, value_column),
            Some(Field::Level) => level_filter(value, value_column),
            Some(field) => Ok(match value.strip_suffix('*') {
                Some(prefix) => Query::FieldPrefix(field, prefix.to_lowercase()),
                None => Query::FieldIs(field, value.to_lowercase()),
            }),
        }
    }
}

/// `name:value` when `name` looks like a field name (letters, digits, `.`,
/// `_`, `-`); URLs and times like `12:30` stay words.
fn split_field(word: &str) -> Option<(&str, &str)> {
    let (name, value) = word.split_once(':')?;
    let is_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
    let known = matches!(name, "level" | "service" | "host" | "tenant" | "message")
        || name.starts_with("attrs.");
    (is_name && (known || !value.starts_with('/'))).then_some((name, value))
}

fn phrase(text: &str, column: usize) -> Result<Query, ParseError> {
    let words: Vec<String> = tokens(text).collect();
    match words.len() {
        0 => Err(error(column, "phrase has no letters or digits to match")),
        1 => Ok(Query::Word(words.into_iter().next().unwrap_or_default())),
        _ => Ok(Query::Phrase(words)),
    }
}

fn message_word(word: &str, column: usize) -> Result<Query, ParseError> {
    if let Some(rest) = word.strip_prefix('*').filter(|rest| !rest.is_empty()) {
        let (part, at_end) = match rest.strip_suffix('*') {
            Some(part) => (part, false),
            None => (rest, true),
        };
        let mut parts: Vec<String> = tokens(part).collect();
        return match (parts.len(), part.chars().all(char::is_alphanumeric)) {
            (1, true) => Ok(Query::WordPart {
                part: parts.remove(0),
                at_end,
            }),
            _ => Err(error(
                column,
                format!("'{word}': a part of a word must be letters and digits only"),
            )),
        };
    }
    if let Some(prefix) = word.strip_suffix('*') {
        let mut parts: Vec<String> = tokens(prefix).collect();
        return match parts.len() {
            1 => Ok(Query::WordPrefix(parts.remove(0))),
            0 => Err(error(
                column,
                format!("'{word}': a prefix needs letters or digits before '*'"),
            )),
            _ => Err(error(
                column,
                format!("'{word}': a prefix must be a single token (letters and digits)"),
            )),
        };
    }
    phrase(word, column).map_err(|_| {
        error(
            column,
            format!("'{word}' has no letters or digits to match"),
        )
    })
}

fn level_filter(value: &str, column: usize) -> Result<Query, ParseError> {
    let (cmp, name) = if let Some(rest) = value.strip_prefix(">=") {
        (Some(Cmp::Ge), rest)
    } else if let Some(rest) = value.strip_prefix("<=") {
        (Some(Cmp::Le), rest)
    } else if let Some(rest) = value.strip_prefix('>') {
        (Some(Cmp::Gt), rest)
    } else if let Some(rest) = value.strip_prefix('<') {
        (Some(Cmp::Lt), rest)
    } else {
        (None, value)
    };
    match cmp {
        None => Ok(Query::FieldIs(
            Field::Level,
            Level::parse(name).as_str().to_lowercase(),
        )),
        Some(cmp) => {
            let level = Level::parse(name);
            if level_rank(&level).is_none() {
                return Err(error(
                    column,
                    format!(
                        "'{name}' is not a level to compare: expected trace, debug, info, warn, error or fatal"
                    ),
                ));
            }
            Ok(Query::LevelCmp(cmp, level))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(w: &str) -> Query {
        Query::Word(w.into())
    }

    #[test]
    fn words_operators_and_precedence() {
        assert_eq!(parse("Error").unwrap(), word("error"));
        assert_eq!(
            parse("a b").unwrap(),
            Query::And(vec![word("a"), word("b")])
        );
        assert_eq!(
            parse("a AND b OR c").unwrap(),
            Query::Or(vec![Query::And(vec![word("a"), word("b")]), word("c")])
        );
        assert_eq!(
            parse("a (b OR c) -d NOT e").unwrap(),
            Query::And(vec![
                word("a"),
                Query::Or(vec![word("b"), word("c")]),
                Query::Not(Box::new(word("d"))),
                Query::Not(Box::new(word("e"))),
            ])
        );
        assert_eq!(parse("*").unwrap(), Query::All);
        assert_eq!(parse("conn*").unwrap(), Query::WordPrefix("conn".into()));
        assert_eq!(
            parse("*Conn*").unwrap(),
            Query::WordPart {
                part: "conn".into(),
                at_end: false
            }
        );
        assert_eq!(
            parse("*conn").unwrap(),
            Query::WordPart {
                part: "conn".into(),
                at_end: true
            }
        );
        for refused in ["**", "*a-b*", "*-*", "*a_b"] {
            assert!(parse(refused).is_err(), "{refused}");
        }
        assert_eq!(
            parse("and or").unwrap(),
            Query::And(vec![word("and"), word("or")])
        );
    }

    #[test]
    fn phrases_and_multi_token_words() {
        assert_eq!(
            parse("\"Connection Refused\"").unwrap(),
            Query::Phrase(vec!["connection".into(), "refused".into()])
        );
        assert_eq!(
            parse("blk_42").unwrap(),
            Query::Phrase(vec!["blk".into(), "42".into()])
        );
        assert_eq!(
            parse("message:\"a b\"").unwrap(),
            Query::Phrase(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse("10.0.0.1").unwrap(),
            Query::Phrase(vec!["10".into(), "0".into(), "0".into(), "1".into()])
        );
    }

    #[test]
    fn fields() {
        assert_eq!(
            parse("service:API").unwrap(),
            Query::FieldIs(Field::Service, "api".into())
        );
        assert_eq!(
            parse("host:web-*").unwrap(),
            Query::FieldPrefix(Field::Host, "web-".into())
        );
        assert_eq!(
            parse("attrs.user:42").unwrap(),
            Query::FieldIs(Field::Attr("user".into()), "42".into())
        );
        assert_eq!(
            parse("level:>=warn").unwrap(),
            Query::LevelCmp(Cmp::Ge, Level::Warn)
        );
        assert_eq!(
            parse("level:WARNING").unwrap(),
            Query::FieldIs(Field::Level, "warn".into())
        );
        assert_eq!(parse("message:Timeout").unwrap(), word("timeout"));
        assert_eq!(
            parse("service:\"my app\"").unwrap(),
            Query::FieldIs(Field::Service, "my app".into())
        );
        assert_eq!(
            parse("http://x").unwrap(),
            Query::Phrase(vec!["http".into(), "x".into()])
        );
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let err = |q: &str| parse(q).unwrap_err();
        assert_eq!(err("").column, 1);
        assert_eq!(err("a (b").column, 5);
        assert!(err("a (b").message.contains("')'"));
        assert_eq!(err("a )").column, 3);
        assert_eq!(
            err("foo:bar").message,
            "unknown field 'foo': expected level, service, host, tenant, message or attrs.KEY"
        );
        assert_eq!(err("x \"open").column, 3);
        assert_eq!(err("level:>=loud").column, 7);
        assert_eq!(err("a OR").column, 5);
        assert_eq!(err("AND b").column, 1);
        assert_eq!(err("service:").column, 9);
        assert_eq!(err("--").column, 2);
        assert!(err(&"(".repeat(100)).message.contains("nested"));
    }
}
