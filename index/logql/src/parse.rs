//! LogQL text to [`Expr`]: a lexer that keeps each token's line and
//! column, and a recursive-descent parser over it.
//!
//! ```text
//! expr      := term (("+" | "-") term)*
//! term      := primary (("*" | "/" | "%") primary)*
//! primary   := number | "-" number | "(" expr ")" | "vector" "(" number ")"
//!            | log | range_fn "(" [number ","] log range ")" [grouping] | agg
//! agg       := agg_op [grouping] "(" expr ")" [grouping]
//! grouping  := ("by" | "without") "(" [label ("," label)*] ")"
//! log       := "{" matcher ("," matcher)* "}" stage*
//! matcher   := label ("=" | "!=" | "=~" | "!~") string
//! stage     := ("|=" | "!=" | "|~" | "!~" | "|>" | "!>") string ("or" string)*
//!            | "|" "json" [label ["=" string] ("," label ["=" string])*]
//!            | "|" ("logfmt" | "unpack" | "decolorize")
//!            | "|" ("drop" | "keep") pick ("," pick)*
//!            | "|" ("regexp" | "pattern" | "line_format") string
//!            | "|" "label_format" label "=" (label | string) ("," ...)*
//!            | "|" "unwrap" (label | ("duration" | "duration_seconds" | "bytes") "(" label ")")
//!            | "|" filters
//! filters   := all ("or" all)*
//! all       := filter (("and" | ",") filter)*
//! pick      := label [("=" | "!=" | "=~" | "!~") string]
//! filter    := "(" filters ")"
//!            | label ("=" | "!=" | "=~" | "!~") string
//!            | label ("==" | "!=" | ">" | ">=" | "<" | "<=") number
//! ```

use regex::Regex;

use super::fields::{bytes, duration_seconds};
use super::template::{self, Template};
use super::{
    AggOp, BinOp, Binary, Conversion, Expr, Group, Grouping, IpRange, JsonField, LabelFilter,
    LabelFormat, LabelPick, LineOp, LogQuery, LogqlError, MatchOp, Matcher, Matching, NumOp,
    PathStep, PatternPart, RangeFn, Stage, Unwrap,
};

/// Longest query text taken (Loki's own limit is larger; nothing Grafana
/// sends comes near).
pub const MAX_LOGQL_CHARS: usize = 16 * 1024;

const COMPARISONS: &[(&str, BinOp)] = &[
    ("==", BinOp::Eq),
    ("!=", BinOp::Ne),
    (">", BinOp::Gt),
    (">=", BinOp::Ge),
    ("<", BinOp::Lt),
    ("<=", BinOp::Le),
];

/// Arithmetic operators by precedence, loosest first.
const LEVELS: &[&[(&str, BinOp)]] = &[
    &[("+", BinOp::Add), ("-", BinOp::Sub)],
    &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Mod)],
    &[("^", BinOp::Pow)],
];

fn binary(op: BinOp, bool_result: bool, matching: Matching, lhs: Expr, rhs: Expr) -> Expr {
    Expr::Binary(Box::new(Binary {
        op,
        bool_result,
        matching,
        lhs,
        rhs,
    }))
}

/// Most binary operators in one query.
const MAX_OPERATORS: usize = 256;

/// Deepest nesting of parentheses and aggregations.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    /// The text inside `[...]`.
    Range(String),
    /// A duration outside `[...]`, as after `offset`.
    Dur(String),
    /// `20MB`, `1.5KiB`: bytes.
    Bytes(f64),
    Sym(&'static str),
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    line: usize,
    column: usize,
}

fn err(line: usize, column: usize, message: impl Into<String>) -> LogqlError {
    LogqlError {
        line,
        column,
        message: message.into(),
    }
}

/// Two-character symbols first, so `|=` is not `|` then `=`.
const SYMBOLS: &[&str] = &[
    "|=", "|~", "|>", "!=", "!~", "!>", "=~", "==", ">=", "<=", "|", "=", ">", "<", "{", "}", "(",
    ")", ",", "+", "-", "*", "/", "%", "^",
];

fn lex(text: &str) -> Result<Vec<Spanned>, LogqlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut line_start) = (0, 1, 0);
    while let Some(&c) = chars.get(i) {
        let column = i - line_start + 1;
        let at = |tok| Spanned { tok, line, column };
        if c == '\n' {
            i += 1;
            (line, line_start) = (line + 1, i);
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            // A comment runs to the end of the line.
            while chars.get(i).is_some_and(|&c| c != '\n') {
                i += 1;
            }
        } else if c == '"' || c == '`' {
            let (text, end) = string(&chars, i).map_err(|reason| {
                let message = reason
                    .unwrap_or_else(|| format!("unterminated string: expected a closing {c}"));
                err(line, column, message)
            })?;
            out.push(at(Tok::Str(text)));
            i = end;
        } else if c == '[' {
            let end = (i + 1..chars.len())
                .find(|&j| chars.get(j) == Some(&']'))
                .ok_or_else(|| err(line, column, "unterminated range: expected ']'"))?;
            let inner: String = chars.get(i + 1..end).unwrap_or_default().iter().collect();
            out.push(at(Tok::Range(inner.trim().to_owned())));
            i = end + 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.')
            {
                i += 1;
            }
            let word: String = chars.get(start..i).unwrap_or_default().iter().collect();
            match word.parse::<f64>() {
                Ok(value) => out.push(at(Tok::Num(value))),
                Err(_) if dur_seconds(&word).is_some() => out.push(at(Tok::Dur(word))),
                Err(_) if let Some(n) = bytes(&word) => out.push(at(Tok::Bytes(n))),
                Err(_) => return Err(err(line, column, format!("'{word}' is not a number"))),
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                i += 1;
            }
            out.push(at(Tok::Ident(
                chars.get(start..i).unwrap_or_default().iter().collect(),
            )));
        } else {
            let rest: String = chars.iter().skip(i).take(2).collect();
            let symbol = SYMBOLS
                .iter()
                .find(|s| rest.starts_with(**s))
                .ok_or_else(|| err(line, column, format!("unexpected character '{c}'")))?;
            out.push(at(Tok::Sym(symbol)));
            i += symbol.chars().count();
        }
    }
    Ok(out)
}

/// A double-quoted string with Go's escapes, or a raw backquoted one,
/// starting at `start`: its text and the index after it; `Err(None)`
/// when it does not end, `Err(Some(reason))` for an escape Go refuses.
fn string(chars: &[char], start: usize) -> Result<(String, usize), Option<String>> {
    let quote = *chars.get(start).ok_or(None)?;
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        let c = *chars.get(i).ok_or(None)?;
        i += 1;
        match c {
            c if c == quote => return Ok((text, i)),
            '\\' if quote == '"' => {
                let e = *chars.get(i).ok_or(None)?;
                i += 1;
                let simple = match e {
                    'n' => Some('\n'),
                    't' => Some('\t'),
                    'r' => Some('\r'),
                    'a' => Some('\u{7}'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'v' => Some('\u{b}'),
                    '\\' | '"' | '\'' => Some(e),
                    _ => None,
                };
                if let Some(c) = simple {
                    text.push(c);
                    continue;
                }
                let digits = match e {
                    'x' => 2,
                    'u' => 4,
                    'U' => 8,
                    _ => {
                        return Err(Some(format!(
                            "unknown escape \\{e} in a string: write \\\\{e}, or put the text in `backquotes`"
                        )));
                    }
                };
                let hex: String = chars
                    .get(i..i + digits)
                    .unwrap_or_default()
                    .iter()
                    .collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == digits)
                    .and_then(char::from_u32)
                    .ok_or_else(|| Some(format!("\\{e}{hex} is not a character")))?;
                text.push(code);
                i += digits;
            }
            c => text.push(c),
        }
    }
}

/// Parses a LogQL query.
pub fn parse(text: &str) -> Result<Expr, LogqlError> {
    if text.chars().count() > MAX_LOGQL_CHARS {
        return Err(err(
            1,
            1,
            format!("query longer than {MAX_LOGQL_CHARS} characters"),
        ));
    }
    let toks = lex(text)?;
    let (line, column) = end_of(text);
    let mut parser = Parser {
        toks,
        pos: 0,
        end: (line, column),
        depth: 0,
        operators: 0,
    };
    if parser.toks.is_empty() {
        return Err(err(
            1,
            1,
            "empty query: expected a stream selector such as {service_name=\"api\"}",
        ));
    }
    let expr = parser.expr()?;
    match parser.peek() {
        None => Ok(expr),
        Some(s) => Err(parser.unexpected(s, "the end of the query")),
    }
}

fn end_of(text: &str) -> (usize, usize) {
    let line = text.matches('\n').count() + 1;
    let column = text.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    (line, column)
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
    end: (usize, usize),
    depth: usize,
    operators: usize,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(name) => format!("'{name}'"),
        Tok::Str(text) => format!("string \"{text}\""),
        Tok::Num(n) => format!("number {n}"),
        Tok::Range(text) => format!("range [{text}]"),
        Tok::Dur(text) => format!("duration {text}"),
        Tok::Bytes(n) => format!("bytes {n}"),
        Tok::Sym(s) => format!("'{s}'"),
    }
}

impl Parser {
    fn peek(&self) -> Option<Spanned> {
        self.toks.get(self.pos).cloned()
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|s| &s.tok)
    }

    fn next(&mut self, expected: &str) -> Result<Spanned, LogqlError> {
        let s = self.peek().ok_or_else(|| {
            err(
                self.end.0,
                self.end.1,
                format!("unexpected end of query, expecting {expected}"),
            )
        })?;
        self.pos += 1;
        Ok(s)
    }

    fn unexpected(&self, s: Spanned, expected: &str) -> LogqlError {
        err(
            s.line,
            s.column,
            format!(
                "syntax error: unexpected {}, expecting {expected}",
                describe(&s.tok)
            ),
        )
    }

    fn eat(&mut self, symbol: &str) -> bool {
        if self.peek_tok() == Some(&Tok::Sym(sym(symbol))) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, symbol: &'static str) -> Result<(), LogqlError> {
        let s = self.next(&format!("'{symbol}'"))?;
        if s.tok == Tok::Sym(symbol) {
            Ok(())
        } else {
            Err(self.unexpected(s, &format!("'{symbol}'")))
        }
    }

    /// Counts a binary operator: a long chain (`1+1+1+...`) nests as
    /// deep as it is long when evaluated.
    fn one_more_operator(&mut self) -> Result<(), LogqlError> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            let (line, column) = self.peek().map_or(self.end, |s| (s.line, s.column));
            return Err(err(
                line,
                column,
                format!("more than {MAX_OPERATORS} binary operators"),
            ));
        }
        Ok(())
    }

    fn deeper(&mut self) -> Result<(), LogqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let (line, column) = self.peek().map_or(self.end, |s| (s.line, s.column));
            return Err(err(line, column, format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, LogqlError> {
        self.deeper()?;
        let mut lhs = self.and_unless()?;
        while self.eat_word("or") {
            let matching = self.matching()?;
            let rhs = self.and_unless()?;
            self.one_more_operator()?;
            lhs = binary(BinOp::Or, false, matching, lhs, rhs);
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn and_unless(&mut self) -> Result<Expr, LogqlError> {
        let mut lhs = self.comparison()?;
        loop {
            let op = if self.eat_word("and") {
                BinOp::And
            } else if self.eat_word("unless") {
                BinOp::Unless
            } else {
                return Ok(lhs);
            };
            let matching = self.matching()?;
            let rhs = self.comparison()?;
            self.one_more_operator()?;
            lhs = binary(op, false, matching, lhs, rhs);
        }
    }

    fn comparison(&mut self) -> Result<Expr, LogqlError> {
        let mut lhs = self.level(0)?;
        while let Some(op) = self.binary_op(COMPARISONS) {
            let bool_result = self.eat_word("bool");
            let matching = self.matching()?;
            let rhs = self.level(0)?;
            self.one_more_operator()?;
            lhs = binary(op, bool_result, matching, lhs, rhs);
        }
        Ok(lhs)
    }

    /// Operators binding tighter than comparisons, by level: `+ -`, then
    /// `* / %`, then `^` (right-associative).
    fn level(&mut self, n: usize) -> Result<Expr, LogqlError> {
        let Some(ops) = LEVELS.get(n) else {
            return self.primary();
        };
        let lhs = self.level(n + 1)?;
        if n + 1 == LEVELS.len() {
            return match self.binary_op(ops) {
                Some(op) => {
                    let matching = self.matching()?;
                    self.deeper()?;
                    let rhs = self.level(n)?;
                    self.depth -= 1;
                    self.one_more_operator()?;
                    Ok(binary(op, false, matching, lhs, rhs))
                }
                None => Ok(lhs),
            };
        }
        let mut lhs = lhs;
        while let Some(op) = self.binary_op(ops) {
            let matching = self.matching()?;
            let rhs = self.level(n + 1)?;
            self.one_more_operator()?;
            lhs = binary(op, false, matching, lhs, rhs);
        }
        Ok(lhs)
    }

    /// The next token as one of `ops`, consumed.
    fn binary_op(&mut self, ops: &[(&str, BinOp)]) -> Option<BinOp> {
        let Some(Tok::Sym(symbol)) = self.peek_tok() else {
            return None;
        };
        let (_, op) = ops.iter().find(|(s, _)| s == symbol)?;
        self.pos += 1;
        Some(*op)
    }

    /// `on (...)` or `ignoring (...)`, then `group_left` or `group_right`
    /// with their labels, after a binary operator.
    fn matching(&mut self) -> Result<Matching, LogqlError> {
        let mut matching = Matching::default();
        if self.eat_word("on") {
            matching.on = true;
        } else if !self.eat_word("ignoring") {
            return Ok(matching);
        }
        matching.labels = self.label_list()?;
        let left = self.eat_word("group_left");
        if left || self.eat_word("group_right") {
            let extra = if self.peek_tok() == Some(&Tok::Sym("(")) {
                self.label_list()?
            } else {
                Vec::new()
            };
            matching.group = if left {
                Group::Left(extra)
            } else {
                Group::Right(extra)
            };
        }
        Ok(matching)
    }

    /// `(a, b, ...)`.
    fn label_list(&mut self) -> Result<Vec<String>, LogqlError> {
        self.expect("(")?;
        let mut labels = Vec::new();
        if !self.eat(")") {
            loop {
                labels.push(self.label_name()?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        Ok(labels)
    }

    fn primary(&mut self) -> Result<Expr, LogqlError> {
        const EXPECTED: &str =
            "a stream selector, a number, vector(), an aggregation or a range function";
        let s = self.next(EXPECTED)?;
        match &s.tok {
            Tok::Num(n) => Ok(Expr::Number(*n)),
            Tok::Sym("-") => match self.next("a number")?.tok {
                Tok::Num(n) => Ok(Expr::Number(-n)),
                _ => Err(err(s.line, s.column, "'-' is only taken before a number")),
            },
            Tok::Sym("(") => {
                let inner = self.expr()?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Sym("{") => {
                self.pos -= 1;
                Ok(Expr::Log(self.log_query()?))
            }
            Tok::Ident(name) => self.named(name, &s),
            _ => Err(self.unexpected(s, EXPECTED)),
        }
    }

    fn named(&mut self, name: &str, s: &Spanned) -> Result<Expr, LogqlError> {
        if name == "vector" {
            self.expect("(")?;
            let value = match self.next("a number")? {
                Spanned {
                    tok: Tok::Num(n), ..
                } => n,
                other => return Err(self.unexpected(other, "a number")),
            };
            self.expect(")")?;
            return Ok(Expr::Vector(value));
        }
        if let Some(func) = RangeFn::named(name) {
            self.expect("(")?;
            let param = if func == RangeFn::QuantileOverTime {
                let phi = self.next("a number (the quantile, 0 to 1)")?;
                let Tok::Num(phi_value) = phi.tok else {
                    return Err(self.unexpected(phi, "a number (the quantile, 0 to 1)"));
                };
                self.expect(",")?;
                Some(phi_value)
            } else {
                None
            };
            // `rate(({job="a"} |= "x")[1m])`: the query in parentheses.
            let query = if self.eat("(") {
                let query = self.log_query()?;
                self.expect(")")?;
                query
            } else {
                self.log_query()?
            };
            let unwrapped = query.stages.iter().any(|st| matches!(st, Stage::Unwrap(_)));
            if unwrapped != func.unwraps() {
                return Err(err(
                    s.line,
                    s.column,
                    if unwrapped {
                        format!("{name} counts lines: it takes no | unwrap")
                    } else {
                        format!("{name} aggregates values: its query needs | unwrap LABEL")
                    },
                ));
            }
            let range = self.next("a range such as [5m]")?;
            let range_ns = match &range.tok {
                Tok::Range(text) => duration_ns(text).ok_or_else(|| {
                    err(
                        range.line,
                        range.column,
                        format!("'{text}' is not a duration such as 30s, 5m or 1h"),
                    )
                })?,
                _ => return Err(self.unexpected(range, "a range such as [5m]")),
            };
            let offset_ns = self.offset()?;
            self.expect(")")?;
            let grouping = if func.unwraps() {
                self.grouping()?
            } else {
                None
            };
            return Ok(Expr::Range {
                func,
                query,
                range_ns,
                offset_ns,
                param,
                grouping,
            });
        }
        if name == "topk" || name == "bottomk" {
            self.deeper()?;
            let mut grouping = self.grouping()?;
            self.expect("(")?;
            let k = self.next("a number (how many series)")?;
            let k = match k.tok {
                Tok::Num(n) if n >= 1.0 && n.fract() == 0.0 && n <= 1e6 => n as usize,
                _ => return Err(self.unexpected(k, "a whole number of series, 1 or more")),
            };
            self.expect(",")?;
            let inner = self.expr()?;
            self.expect(")")?;
            if grouping.is_none() {
                grouping = self.grouping()?;
            }
            self.depth -= 1;
            return Ok(Expr::TopK {
                bottom: name == "bottomk",
                k,
                grouping,
                inner: Box::new(inner),
            });
        }
        if name == "label_replace" {
            self.deeper()?;
            self.expect("(")?;
            let inner = self.expr()?;
            let mut texts = Vec::new();
            for what in ["destination label", "replacement", "source label", "regex"] {
                self.expect(",")?;
                texts.push(self.string(&format!("the {what}"))?);
            }
            self.expect(")")?;
            self.depth -= 1;
            let [(dst, _), (replacement, _), (src, _), (regex, at)] = <[_; 4]>::try_from(texts)
                .map_err(|_| err(s.line, s.column, "label_replace takes five arguments"))?;
            return Ok(Expr::LabelReplace {
                inner: Box::new(inner),
                dst,
                replacement,
                src,
                regex: compile(&regex, true, &at)?,
            });
        }
        if name == "sort" || name == "sort_desc" {
            self.expect("(")?;
            let inner = self.expr()?;
            self.expect(")")?;
            return Ok(Expr::Sort {
                desc: name == "sort_desc",
                inner: Box::new(inner),
            });
        }
        if let Some(op) = AggOp::named(name) {
            self.deeper()?;
            let mut grouping = self.grouping()?;
            self.expect("(")?;
            let inner = self.expr()?;
            self.expect(")")?;
            if grouping.is_none() {
                grouping = self.grouping()?;
            }
            self.depth -= 1;
            return Ok(Expr::Aggregate {
                op,
                grouping,
                inner: Box::new(inner),
            });
        }
        Err(err(
            s.line,
            s.column,
            format!(
                "unknown function '{name}': lode takes the range functions (count_over_time, rate, bytes_over_time, bytes_rate, absent_over_time, and sum, avg, min, max, first, last, stddev, stdvar and quantile _over_time and rate_counter of unwrapped values), the aggregations sum, avg, min, max, count, stddev, stdvar, topk, bottomk, sort, sort_desc, label_replace and vector(); count_values is in neither Loki's nor Grafana's LogQL"
            ),
        ))
    }

    /// `offset 1h` after a range; 0 without one.
    fn offset(&mut self) -> Result<i64, LogqlError> {
        if !self.eat_word("offset") {
            return Ok(0);
        }
        let at = self.next("a duration such as 1h")?;
        match &at.tok {
            Tok::Dur(text) => Ok((dur_seconds(text).unwrap_or_default() * 1e9) as i64),
            _ => Err(self.unexpected(at, "a duration such as 1h")),
        }
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, LogqlError> {
        let without = match self.peek_tok() {
            Some(Tok::Ident(word)) if word == "by" => false,
            Some(Tok::Ident(word)) if word == "without" => true,
            _ => return Ok(None),
        };
        self.pos += 1;
        let labels = self.label_list()?;
        Ok(Some(if without {
            Grouping::Without(labels)
        } else {
            Grouping::By(labels)
        }))
    }

    fn label_name(&mut self) -> Result<String, LogqlError> {
        match self.next("a label name")? {
            Spanned {
                tok: Tok::Ident(name),
                ..
            } => Ok(name),
            other => Err(self.unexpected(other, "a label name")),
        }
    }

    fn string(&mut self, after: &str) -> Result<(String, Spanned), LogqlError> {
        let s = self.next(&format!("a string after {after}"))?;
        match &s.tok {
            Tok::Str(text) => Ok((text.clone(), s)),
            _ => Err(self.unexpected(s, &format!("a string after {after}"))),
        }
    }

    fn log_query(&mut self) -> Result<LogQuery, LogqlError> {
        self.expect("{")?;
        let mut selector = Vec::new();
        loop {
            let name = self.label_name()?;
            let op = self.next("=, !=, =~ or !~")?;
            let op = match op.tok {
                Tok::Sym("=") => MatchOp::Eq,
                Tok::Sym("!=") => MatchOp::Ne,
                Tok::Sym("=~") => MatchOp::Re,
                Tok::Sym("!~") => MatchOp::Nre,
                _ => return Err(self.unexpected(op, "=, !=, =~ or !~")),
            };
            let (value, at) = self.string(&format!("{name}{}", op.symbol()))?;
            selector.push(matcher(name, op, value, &at)?);
            if self.eat("}") {
                break;
            }
            self.expect(",")?;
        }
        let mut stages = Vec::new();
        while let Some(stage) = self.stage()? {
            stages.push(stage);
        }
        Ok(LogQuery { selector, stages })
    }

    fn stage(&mut self) -> Result<Option<Stage>, LogqlError> {
        let op = match self.peek_tok() {
            Some(Tok::Sym("|=")) => LineOp::Contains,
            Some(Tok::Sym("!=")) => LineOp::NotContains,
            Some(Tok::Sym("|~")) => LineOp::Matches,
            Some(Tok::Sym("!~")) => LineOp::NotMatches,
            Some(Tok::Sym("|>")) => LineOp::Pattern,
            Some(Tok::Sym("!>")) => LineOp::NotPattern,
            Some(Tok::Sym("|")) => {
                self.pos += 1;
                return self.pipe_stage().map(Some);
            }
            _ => return Ok(None),
        };
        let symbol = self.next("a line filter")?;
        let after = describe(&symbol.tok);
        if matches!(op, LineOp::Contains | LineOp::NotContains) && self.at_word("ip") {
            let range = self.ip()?;
            return Ok(Some(Stage::LineIp {
                negate: op == LineOp::NotContains,
                range,
            }));
        }
        let (text, regex) = self.line_text(op, &after)?;
        let mut or = Vec::new();
        while self.eat_word("or") {
            or.push(self.line_text(op, &format!("{after} ... or"))?);
        }
        Ok(Some(Stage::Line {
            op,
            text,
            regex,
            or,
        }))
    }

    /// A line filter's string, and its regex for `op`.
    fn line_text(
        &mut self,
        op: LineOp,
        after: &str,
    ) -> Result<(String, Option<Regex>), LogqlError> {
        let (text, at) = self.string(after)?;
        let regex = match op {
            LineOp::Matches | LineOp::NotMatches => Some(compile(&text, false, &at)?),
            LineOp::Pattern | LineOp::NotPattern => {
                Some(compile(&pattern_regex(&text), true, &at)?)
            }
            LineOp::Contains | LineOp::NotContains => None,
        };
        Ok((text, regex))
    }

    fn pipe_stage(&mut self) -> Result<Stage, LogqlError> {
        if self.peek_tok() == Some(&Tok::Sym("(")) {
            return self.filters(None).map(Stage::Label);
        }
        let s = self.next("a parser, a formatter, drop, keep or a label filter")?;
        let Tok::Ident(name) = &s.tok else {
            return Err(self.unexpected(s, "a parser, a formatter, drop, keep or a label filter"));
        };
        match name.as_str() {
            "json" if !self.at_label_op() => self.json_fields().map(Stage::Json),
            "logfmt" if !self.at_label_op() => {
                if let Some(Tok::Ident(_)) = self.peek_tok() {
                    let next = self.peek().unwrap_or(s.clone());
                    return Err(err(
                        next.line,
                        next.column,
                        format!(
                            "{name} with parameters is not supported by lode: use | {name} alone"
                        ),
                    ));
                }
                Ok(Stage::Logfmt)
            }
            "drop" if !self.at_label_op() => self.picks().map(Stage::Drop),
            "keep" if !self.at_label_op() => self.picks().map(Stage::Keep),
            "unwrap" if !self.at_label_op() => self.unwrap().map(Stage::Unwrap),
            "regexp" if !self.at_label_op() => {
                let (text, at) = self.string("regexp")?;
                regexp(&text, &at).map(Stage::Regexp)
            }
            "pattern" if !self.at_label_op() => {
                let (text, at) = self.string("pattern")?;
                pattern(&text)
                    .map(Stage::Pattern)
                    .map_err(|m| err(at.line, at.column, format!("pattern \"{text}\": {m}")))
            }
            "unpack" if !self.at_label_op() => Ok(Stage::Unpack),
            "decolorize" if !self.at_label_op() => Ok(Stage::Decolorize),
            "line_format" if !self.at_label_op() => {
                let (text, at) = self.string("line_format")?;
                Ok(Stage::LineFormat(template_at(&text, &at)?))
            }
            "label_format" if !self.at_label_op() => self.label_formats().map(Stage::LabelFormat),
            "distinct" if !self.at_label_op() => Err(err(
                s.line,
                s.column,
                "the 'distinct' stage (experimental in Loki) is not supported by lode",
            )),
            _ => self.filters(Some(name.clone())).map(Stage::Label),
        }
    }

    /// `label`, `duration(label)`, `duration_seconds(label)` or
    /// `bytes(label)` after `| unwrap`.
    fn unwrap(&mut self) -> Result<Unwrap, LogqlError> {
        let label = self.label_name()?;
        let conversion = match label.as_str() {
            "duration" | "duration_seconds" | "bytes" if self.eat("(") => {
                let conversion = if label == "bytes" {
                    Conversion::Bytes
                } else {
                    Conversion::Duration
                };
                let inner = self.label_name()?;
                self.expect(")")?;
                return Ok(Unwrap {
                    label: inner,
                    conversion,
                });
            }
            _ => Conversion::Number,
        };
        Ok(Unwrap { label, conversion })
    }

    /// `a, b="x", c!~"y.*"` after `| drop` or `| keep`.
    fn picks(&mut self) -> Result<Vec<LabelPick>, LogqlError> {
        let mut picks = Vec::new();
        loop {
            let name = self.label_name()?;
            let op = match self.peek_tok() {
                Some(Tok::Sym("=")) => Some(MatchOp::Eq),
                Some(Tok::Sym("!=")) => Some(MatchOp::Ne),
                Some(Tok::Sym("=~")) => Some(MatchOp::Re),
                Some(Tok::Sym("!~")) => Some(MatchOp::Nre),
                _ => None,
            };
            let matcher = match op {
                Some(op) => {
                    self.pos += 1;
                    let (value, at) = self.string(&format!("{name}{}", op.symbol()))?;
                    Some(matcher(name.clone(), op, value, &at)?)
                }
                None => None,
            };
            picks.push(LabelPick { name, matcher });
            if !self.eat(",") {
                return Ok(picks);
            }
        }
    }

    /// `dst=src, dst="{{ template }}", ...` after `| label_format`.
    fn label_formats(&mut self) -> Result<Vec<LabelFormat>, LogqlError> {
        let mut formats = Vec::new();
        loop {
            let to = self.label_name()?;
            self.expect("=")?;
            let value = self.next("a label name or a template string")?;
            formats.push(match &value.tok {
                Tok::Ident(from) => LabelFormat::Rename {
                    to,
                    from: from.clone(),
                },
                Tok::Str(text) => LabelFormat::Template {
                    to,
                    template: template_at(text, &value)?,
                },
                _ => return Err(self.unexpected(value, "a label name or a template string")),
            });
            if !self.eat(",") {
                return Ok(formats);
            }
        }
    }

    /// `label="path", label, ...` after `| json` (none: every field).
    fn json_fields(&mut self) -> Result<Vec<JsonField>, LogqlError> {
        let mut fields = Vec::new();
        if !matches!(self.peek_tok(), Some(Tok::Ident(_))) {
            return Ok(fields);
        }
        loop {
            let label = self.label_name()?;
            let (expr, at) = if self.eat("=") {
                let (text, at) = self.string(&format!("{label}="))?;
                (text, Some(at))
            } else {
                (label.clone(), None)
            };
            let path = json_path(&expr).map_err(|reason| {
                let (line, column) = at.as_ref().map_or(self.end, |s| (s.line, s.column));
                err(line, column, format!("json path \"{expr}\": {reason}"))
            })?;
            fields.push(JsonField { label, path });
            if !self.eat(",") {
                return Ok(fields);
            }
        }
    }

    /// Label filters joined by `or`, `and` and `,` (`and` binds
    /// tighter), in parentheses or not; `first` is a label name already
    /// read.
    fn filters(&mut self, first: Option<String>) -> Result<LabelFilter, LogqlError> {
        let mut any = vec![self.all_filters(first)?];
        while self.eat_word("or") {
            any.push(self.all_filters(None)?);
        }
        Ok(one_or(any, LabelFilter::Any))
    }

    fn all_filters(&mut self, first: Option<String>) -> Result<LabelFilter, LogqlError> {
        let mut all = vec![self.one_filter(first)?];
        while self.eat(",") || self.eat_word("and") {
            all.push(self.one_filter(None)?);
        }
        Ok(one_or(all, LabelFilter::All))
    }

    fn one_filter(&mut self, first: Option<String>) -> Result<LabelFilter, LogqlError> {
        if let Some(name) = first {
            return self.label_filter(name);
        }
        if self.eat("(") {
            self.deeper()?;
            let inner = self.filters(None)?;
            self.expect(")")?;
            self.depth -= 1;
            return Ok(inner);
        }
        let name = self.label_name()?;
        self.label_filter(name)
    }

    /// Consumes the word `word` (`or`, `and`) if it comes next.
    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek_tok(), Some(Tok::Ident(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn at_label_op(&self) -> bool {
        matches!(
            self.peek_tok(),
            Some(Tok::Sym(
                "=" | "!=" | "=~" | "!~" | "==" | ">" | ">=" | "<" | "<="
            ))
        )
    }

    fn label_filter(&mut self, name: String) -> Result<LabelFilter, LogqlError> {
        const OPS: &str = "=, !=, =~, !~, ==, >, >=, < or <=";
        let op = self.next(OPS)?;
        let Tok::Sym(symbol) = op.tok else {
            return Err(self.unexpected(op, OPS));
        };
        const VALUES: &str = "a string, a number, a duration, bytes or ip(\"...\")";
        if self.at_word("ip") {
            let negate = match symbol {
                "=" | "==" => false,
                "!=" => true,
                _ => return Err(self.unexpected(op, "= or != before ip()")),
            };
            let range = self.ip()?;
            return Ok(LabelFilter::Ip {
                name,
                negate,
                range,
            });
        }
        let value = self.next(VALUES)?;
        let (number, conversion) = match &value.tok {
            Tok::Str(text) => {
                let op = match symbol {
                    "=" | "==" => MatchOp::Eq,
                    "!=" => MatchOp::Ne,
                    "=~" => MatchOp::Re,
                    "!~" => MatchOp::Nre,
                    _ => return Err(self.unexpected(value, "a number, a duration or bytes")),
                };
                return Ok(LabelFilter::Text(matcher(name, op, text.clone(), &value)?));
            }
            Tok::Num(n) => (*n, Conversion::Number),
            Tok::Dur(text) => (dur_seconds(text).unwrap_or_default(), Conversion::Duration),
            Tok::Bytes(n) => (*n, Conversion::Bytes),
            _ => return Err(self.unexpected(value, VALUES)),
        };
        let op = match symbol {
            "==" | "=" => NumOp::Eq,
            "!=" => NumOp::Ne,
            ">" => NumOp::Gt,
            ">=" => NumOp::Ge,
            "<" => NumOp::Lt,
            "<=" => NumOp::Le,
            _ => return Err(self.unexpected(value, "a string")),
        };
        Ok(LabelFilter::Number {
            name,
            op,
            value: number,
            conversion,
        })
    }

    fn at_word(&self, word: &str) -> bool {
        matches!(self.peek_tok(), Some(Tok::Ident(w)) if w == word)
    }

    /// `ip("192.168.0.0/16")`.
    fn ip(&mut self) -> Result<IpRange, LogqlError> {
        self.pos += 1;
        self.expect("(")?;
        let (text, at) = self.string("ip(")?;
        self.expect(")")?;
        IpRange::parse(&text).ok_or_else(|| {
            err(
                at.line,
                at.column,
                format!("ip(\"{text}\"): expected an address, a CIDR block (10.0.0.0/8) or a range (10.0.0.1-10.0.0.9)"),
            )
        })
    }
}

/// A template of `line_format` or `label_format`, its errors placed at
/// its string.
fn template_at(text: &str, at: &Spanned) -> Result<Template, LogqlError> {
    template::parse(text).map_err(|m| err(at.line, at.column, format!("template \"{text}\": {m}")))
}

/// `| regexp`'s expression: unanchored, with at least one named group,
/// each a label name.
fn regexp(text: &str, at: &Spanned) -> Result<Regex, LogqlError> {
    let regex = compile(text, false, at)?;
    let names: Vec<&str> = regex.capture_names().flatten().collect();
    if names.is_empty() {
        return Err(err(
            at.line,
            at.column,
            format!("regexp \"{text}\" has no named group, such as (?P<status>\\d+)"),
        ));
    }
    if let Some(bad) = names.iter().find(|n| super::eval::sanitize(n) != **n) {
        return Err(err(
            at.line,
            at.column,
            format!("regexp \"{text}\": '{bad}' is not a label name"),
        ));
    }
    Ok(regex)
}

/// `| pattern`'s text as literals and captures: at least one named
/// capture, no two captures side by side, each name used once.
fn pattern(text: &str) -> Result<Vec<PatternPart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let capture = after.find('>').map(|close| &after[..close]).filter(|name| {
            *name == "_"
                || (name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        });
        let Some(name) = capture else {
            // Not a capture: the `<` is text.
            literal.push_str(&rest[..open + 1]);
            rest = after;
            continue;
        };
        literal.push_str(&rest[..open]);
        if !literal.is_empty() {
            parts.push(PatternPart::Literal(std::mem::take(&mut literal)));
        }
        if matches!(parts.last(), Some(PatternPart::Capture(_))) {
            return Err(format!(
                "<{name}> right after another capture: put text between them"
            ));
        }
        let name = (name != "_").then(|| name.to_owned());
        if name.is_some() && parts.contains(&PatternPart::Capture(name.clone())) {
            return Err(format!("<{}> is named twice", name.unwrap_or_default()));
        }
        parts.push(PatternPart::Capture(name));
        rest = &after[after.find('>').map_or(after.len(), |c| c + 1)..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(PatternPart::Literal(literal));
    }
    if !parts
        .iter()
        .any(|p| matches!(p, PatternPart::Capture(Some(_))))
    {
        return Err("no named capture, such as <status>".to_owned());
    }
    Ok(parts)
}

/// `symbol` as the static str the lexer made.
fn sym(symbol: &str) -> &'static str {
    SYMBOLS
        .iter()
        .find(|s| **s == symbol)
        .copied()
        .unwrap_or("")
}

fn matcher(name: String, op: MatchOp, value: String, at: &Spanned) -> Result<Matcher, LogqlError> {
    let regex = match op {
        MatchOp::Re | MatchOp::Nre => Some(compile(&value, true, at)?),
        _ => None,
    };
    Ok(Matcher {
        name,
        op,
        value,
        regex,
    })
}

/// A JSON path as `| json` takes one: `a.b`, `a[0]`, `["a b"].c`,
/// `a["b"][1]`.
fn json_path(text: &str) -> Result<Vec<PathStep>, String> {
    let mut steps = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or("a '[' without its ']'")?;
            let key = inner[..close].trim();
            rest = &inner[close + 1..];
            if let Some(quoted) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                steps.push(PathStep::Key(quoted.to_owned()));
            } else {
                let index = key
                    .parse()
                    .map_err(|_| format!("[{key}] is neither an index nor a quoted key"))?;
                steps.push(PathStep::Index(index));
            }
        } else {
            let rest_of = rest.strip_prefix('.').unwrap_or(rest);
            if rest_of.len() != rest.len() && steps.is_empty() {
                return Err("a path does not start with '.'".to_owned());
            }
            let end = rest_of.find(['.', '[']).unwrap_or(rest_of.len());
            let key = &rest_of[..end];
            if key.is_empty() {
                return Err("an empty key".to_owned());
            }
            steps.push(PathStep::Key(key.to_owned()));
            rest = &rest_of[end..];
        }
    }
    if steps.is_empty() {
        return Err("an empty path".to_owned());
    }
    Ok(steps)
}

/// The one filter of `list`, or `join` of them all.
fn one_or(mut list: Vec<LabelFilter>, join: fn(Vec<LabelFilter>) -> LabelFilter) -> LabelFilter {
    if list.len() == 1 {
        list.remove(0)
    } else {
        join(list)
    }
}

/// A pattern filter's text as a regex (to be anchored): its text
/// literally, each `<_>` any non-empty text.
fn pattern_regex(pattern: &str) -> String {
    pattern
        .split("<_>")
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join("(?s:.+?)")
}

/// Regexes of label matchers are anchored at both ends, line filters'
/// are not (as in Loki).
fn compile(pattern: &str, anchored: bool, at: &Spanned) -> Result<Regex, LogqlError> {
    let full = if anchored {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_owned()
    };
    regex::RegexBuilder::new(&full)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            err(
                at.line,
                at.column,
                format!(
                    "invalid regex \"{pattern}\": {}",
                    first_line(&e.to_string())
                ),
            )
        })
}

fn first_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_owned()
}

/// A duration as a label filter or `offset` takes it, in seconds:
/// Prometheus' (`1d`, `1w`) or Go's (`1.5s`, `1h30m`).
fn dur_seconds(text: &str) -> Option<f64> {
    duration_ns(text)
        .map(|ns| ns as f64 / 1e9)
        .or_else(|| duration_seconds(text))
}

/// A Prometheus duration (`90s`, `1h30m`, `500ms`, `2d`, `1w`, `1y`) in ns.
pub fn duration_ns(text: &str) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let number: i64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i64 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 7 * 86_400_000_000_000,
            "y" => 365 * 86_400_000_000_000,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(scale)?)?;
        rest = after;
    }
    (total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column_of(text: &str) -> (usize, usize) {
        let e = parse(text).unwrap_err();
        (e.line, e.column)
    }

    #[test]
    fn json_takes_labels_with_paths() {
        let Expr::Log(q) = parse(
            r#"{app="a"} | json status="[\"status\"]", user_id="user.id", first="servers[0]", ua="request.headers[\"User-Agent\"]", level | json"#,
        )
        .unwrap() else {
            panic!("not a log query");
        };
        let Stage::Json(fields) = &q.stages[0] else {
            panic!("{:?}", q.stages[0]);
        };
        let key = |k: &str| PathStep::Key(k.to_owned());
        let got: Vec<(&str, &[PathStep])> = fields
            .iter()
            .map(|f| (f.label.as_str(), f.path.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("status", &[key("status")][..]),
                ("user_id", &[key("user"), key("id")][..]),
                ("first", &[key("servers"), PathStep::Index(0)][..]),
                (
                    "ua",
                    &[key("request"), key("headers"), key("User-Agent")][..]
                ),
                ("level", &[key("level")][..]),
            ]
        );
        assert!(matches!(&q.stages[1], Stage::Json(all) if all.is_empty()));
        for bad in [
            r#"{a="b"} | json x="a[b]""#,
            r#"{a="b"} | json x="a..b""#,
            r#"{a="b"} | json x="""#,
        ] {
            assert_eq!(column_of(bad), (1, 18), "{bad}");
        }
    }

    #[test]
    fn label_filters_join_with_or_and_and_and_pattern_filters_parse() {
        let Expr::Log(q) = parse(
            r#"{app="a"} | level="error" or level="warn", host="h" | (a="1" or b>2) and c!~"x.*" |> "GET <_> 200" !> "<_>health<_>""#,
        )
        .unwrap() else {
            panic!("not a log query");
        };
        let Stage::Label(LabelFilter::Any(any)) = &q.stages[0] else {
            panic!("{:?}", q.stages[0]);
        };
        assert_eq!(any.len(), 2);
        assert!(matches!(&any[1], LabelFilter::All(all) if all.len() == 2));
        let Stage::Label(LabelFilter::All(all)) = &q.stages[1] else {
            panic!("{:?}", q.stages[1]);
        };
        assert!(matches!(&all[0], LabelFilter::Any(any) if any.len() == 2));
        assert!(matches!(
            q.stages[2],
            Stage::Line {
                op: LineOp::Pattern,
                ..
            }
        ));
        assert!(matches!(
            q.stages[3],
            Stage::Line {
                op: LineOp::NotPattern,
                ..
            }
        ));
        // Unclosed, or an operator with nothing after it: refused where.
        assert_eq!(column_of(r#"{a="b"} | (level="x" or level="y""#), (1, 34));
        assert_eq!(column_of(r#"{a="b"} | level="x" or"#), (1, 23));
    }

    #[test]
    fn selectors_line_filters_and_parsers() {
        let Expr::Log(q) = parse(r#"{service_name="api", host=~"web-.*"} |= "timeout" != `debug` |~ "(?i)err" | json | status >= 500 | level!="info" | drop __error__"#).unwrap() else {
            panic!("not a log query");
        };
        assert_eq!(q.selector.len(), 2);
        assert_eq!(q.selector[1].op, MatchOp::Re);
        assert_eq!(q.stages.len(), 7);
        assert!(
            matches!(&q.stages[0], Stage::Line { op: LineOp::Contains, text, .. } if text == "timeout")
        );
        assert!(
            matches!(&q.stages[1], Stage::Line { op: LineOp::NotContains, text, .. } if text == "debug")
        );
        assert!(matches!(&q.stages[3], Stage::Json(fields) if fields.is_empty()));
        assert!(
            matches!(&q.stages[4], Stage::Label(LabelFilter::Number { op: NumOp::Ge, value, .. }) if *value == 500.0)
        );
        assert!(matches!(&q.stages[6], Stage::Drop(l) if l.len() == 1 && l[0].name == "__error__"));
    }

    #[test]
    fn metric_queries_as_grafana_sends_them() {
        let e = parse(r#"sum by (level, detected_level) (count_over_time({service_name="api"} | drop __error__[1m]))"#).unwrap();
        let Expr::Aggregate {
            op: AggOp::Sum,
            grouping: Some(Grouping::By(labels)),
            inner,
        } = e
        else {
            panic!("not a sum by");
        };
        assert_eq!(labels, ["level", "detected_level"]);
        assert!(matches!(
            *inner,
            Expr::Range {
                func: RangeFn::CountOverTime,
                range_ns: 60_000_000_000,
                ..
            }
        ));
        assert!(matches!(
            parse("vector(1)+vector(1)").unwrap(),
            Expr::Binary(b) if b.op == BinOp::Add
        ));
        assert!(matches!(
            parse(r#"sum(rate({job="a"}[5m])) without (host)"#).unwrap(),
            Expr::Aggregate {
                grouping: Some(Grouping::Without(_)),
                ..
            }
        ));
        assert!(matches!(
            parse("2 * 3 + 1").unwrap(),
            Expr::Binary(b) if b.op == BinOp::Add
        ));
    }

    #[test]
    fn errors_name_line_and_column() {
        assert_eq!(column_of(r#"{service_name="api""#), (1, 20));
        assert_eq!(column_of(r#"{service_name="api"} |= timeout"#), (1, 25));
        assert_eq!(column_of(r#"{service_name~"api"}"#), (1, 14));
        assert_eq!(column_of("{a=\"b\"}\n  |~ \"(\""), (2, 6));
        assert_eq!(column_of(r#"count_over_time({a="b"}[5x])"#), (1, 24));
        assert_eq!(column_of(r#"{a="b"} | distinct x"#), (1, 11));
        assert_eq!(column_of(r#"{a="b"} | line_format "{{.x"#), (1, 23));
        assert_eq!(column_of(r#"{a="b"} | regexp "(\d+)""#), (1, 18));
        assert_eq!(column_of(r#"{a="b"} | pattern "<a><b>""#), (1, 19));
        assert_eq!(column_of(r#"frobnicate({a="b"})"#), (1, 1));
        assert_eq!(column_of(""), (1, 1));
        assert_eq!(column_of("{}"), (1, 2));
        let e = parse(r#"{a="b"} |= "x" )"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parse error at line 1, col 16: syntax error: unexpected ')', expecting the end of the query"
        );
    }

    /// Every example of Loki's LogQL documentation is taken; the few
    /// lode refuses say why.
    #[test]
    fn loki_documentation_examples_parse() {
        let examples = include_str!("loki_docs.txt");
        let mut n = 0;
        for query in examples
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Err(e) = parse(query) {
                panic!("{query}: {e}");
            }
            n += 1;
        }
        assert!(n >= 60, "{n} examples");
        for (refused, says) in [
            (r#"rate({app="bar"})"#, "expecting a range"),
            (
                r#"{job="a"} | line_format `{{ range $q := fromJson .queries }} {{ $q.query }} {{ end }}`"#,
                "variables",
            ),
            (r#"{job="a"} | distinct id"#, "not supported"),
            (r#"count_values("n", rate({a="b"}[1m]))"#, "neither Loki's"),
        ] {
            let e = parse(refused).unwrap_err();
            assert!(e.message.contains(says), "{refused}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("1h30m"), Some(5_400_000_000_000));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("5"), None);
        assert_eq!(duration_ns("0s"), None);
        assert_eq!(duration_ns("99999999999y"), None);
    }

    #[test]
    fn operator_chains_are_bounded() {
        let chain = format!("1{}", "+1".repeat(300));
        assert!(
            parse(&chain)
                .unwrap_err()
                .message
                .contains("binary operators")
        );
        assert!(parse(&format!("1{}", "+1".repeat(200))).is_ok());
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
        let sums = format!("{}vector(1){}", "sum(".repeat(200), ")".repeat(200));
        assert!(parse(&sums).is_err());
    }

    proptest::proptest! {
        /// Any text, and any one character of a valid query changed: a
        /// query or an error, never a panic (the fuzz target
        /// `logql_parser` goes further).
        #[test]
        fn no_input_panics(text in "\\PC{0,80}", at in 0usize..200, to in proptest::char::any()) {
            let _ = parse(&text);
            let query = r#"sum by (level) (count_over_time({service=~"api|db", host!="h1"} |= "disk" !~ "x.*y" | json | level="error" | drop __error__ [5m])) / 2"#;
            let mut chars: Vec<char> = query.chars().collect();
            let i = at % chars.len();
            if let Some(c) = chars.get_mut(i) {
                *c = to;
            }
            let mutated: String = chars.into_iter().collect();
            if let Ok(Expr::Log(q)) = parse(&mutated) {
                let _ = (q.candidates(), q.exact());
            }
        }
    }
}
