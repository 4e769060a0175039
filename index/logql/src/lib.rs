//! LogQL, Loki's query language, as a query engine over lode's records:
//! what Grafana's Loki data source, Logs Drilldown and the dashboards and
//! alert rules people write send.
//!
//! - Log queries: a stream selector (`=`, `!=`, `=~`, `!~`), line
//!   filters (`|=`, `!=`, `|~`, `!~`, `|>`, `!>`, `ip()`), parsers
//!   (`json`, `logfmt`, `regexp`, `pattern`, `unpack`), label filters
//!   (strings, numbers, durations, bytes, `ip()`, with `or`/`and`),
//!   `keep`, `drop`, `decolorize`, and `line_format`/`label_format` with
//!   Go's templates ([`template`]).
//! - Metric queries: range functions over lines and over `| unwrap`ped
//!   values, `offset`, aggregations (`sum` ... `topk`, `sort`,
//!   `label_replace`), arithmetic, comparisons and set operations with
//!   vector matching.
//! - [`drain`]: Drain's log patterns (Logs Drilldown's patterns tab);
//!   [`fields`]: the fields of logfmt and JSON lines, with their types.
//!
//! A record's labels are `service_name`, `host` and `level` (the ones it
//! has); `service`, `app` and `job` name its service, `hostname` and
//! `instance` its host, `detected_level` and `severity` its level, and any
//! other name an attribute. Where lode differs from Loki: `=` and `!=` on
//! those labels ignore case, as lode's own field filters do (regexes do
//! not: use `(?i)`).
//!
//! [`parse`] takes text to an [`Expr`] with errors at a line and column;
//! [`LogQuery::candidates`] is a query in lode's language whose matches
//! include every record the LogQL query selects (`|=` is a substring, not
//! a word: the candidates hold the words the substring surely contains and
//! [`LogQuery::process`] checks each); [`eval_metric`] and [`select_logs`]
//! run queries over a
//! [`Source`].
//!
//! ```
//! use lode_logql::{Expr, parse};
//!
//! let Expr::Log(query) = parse(r#"{service_name="api"} |= "connection reset by" != "retry""#)? else {
//!     unreachable!()
//! };
//! // "connection" may end a longer word; "by" may begin one.
//! assert_eq!(query.candidates(), r#"service:"api" AND reset AND by*"#);
//! let err = parse(r#"{service_name="api"} |= timeout"#).unwrap_err();
//! assert_eq!(err.column, 25);
//! # Ok::<(), lode_logql::LogqlError>(())
//! ```

pub mod drain;
mod eval;
pub mod fields;
mod parse;
pub mod template;

pub use eval::{
    Entry, EvalError, Labels, MAX_POINTS, Metric, Sampled, Series, Source, Steps, eval_metric,
    select_logs, stream_labels,
};
pub use parse::{MAX_LOGQL_CHARS, duration_ns, parse};

use std::net::IpAddr;

use regex::Regex;

/// Why a query text is refused, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at line {line}, col {column}: {message}")]
pub struct LogqlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A parsed LogQL expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// A log query: the records themselves.
    Log(LogQuery),
    /// `count_over_time({...}[5m])` and friends; over unwrapped values
    /// (`avg_over_time({...} | unwrap took [5m]) by (level)`) with the
    /// grouping of their series.
    Range {
        func: RangeFn,
        query: LogQuery,
        range_ns: i64,
        /// `[5m] offset 1h`: the window that much earlier.
        offset_ns: i64,
        /// `quantile_over_time`'s φ.
        param: Option<f64>,
        grouping: Option<Grouping>,
    },
    /// `sum by (level) (...)` and friends.
    Aggregate {
        op: AggOp,
        grouping: Option<Grouping>,
        inner: Box<Expr>,
    },
    /// `topk(5, ...)`, `bottomk(3, ...) by (level)`: at each step, the
    /// `k` series with the largest (smallest) values of each group.
    TopK {
        bottom: bool,
        k: usize,
        grouping: Option<Grouping>,
        inner: Box<Expr>,
    },
    /// `sort(...)`, `sort_desc(...)`: series ordered by their last value.
    Sort {
        desc: bool,
        inner: Box<Expr>,
    },
    /// `label_replace(v, "dst", "$1", "src", "(.*):.*")`.
    LabelReplace {
        inner: Box<Expr>,
        dst: String,
        replacement: String,
        src: String,
        regex: Regex,
    },
    Number(f64),
    /// `vector(1)`: one series without labels.
    Vector(f64),
    Binary(Box<Binary>),
}

/// `lhs op [bool] [on|ignoring (...)] [group_left|group_right (...)] rhs`.
#[derive(Debug, Clone)]
pub struct Binary {
    pub op: BinOp,
    /// A comparison gives 1 or 0 instead of filtering.
    pub bool_result: bool,
    pub matching: Matching,
    pub lhs: Expr,
    pub rhs: Expr,
}

/// How the series of two vectors are paired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matching {
    /// `on (...)`: these labels must be equal; otherwise all but
    /// `ignoring (...)`'s.
    pub on: bool,
    pub labels: Vec<String>,
    pub group: Group,
}

/// Which side may have many series per match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Group {
    #[default]
    OneToOne,
    /// `group_left (extra)`: many on the left; `extra` labels are copied
    /// from the right.
    Left(Vec<String>),
    Right(Vec<String>),
}

/// A stream selector and the stages after it.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub selector: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

/// `name op "value"`, in a selector or a label filter.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// Anchored at both ends, for `=~` and `!~`.
    pub regex: Option<Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    Nre,
}

impl MatchOp {
    pub fn symbol(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

/// One stage of a log pipeline.
#[derive(Debug, Clone)]
pub enum Stage {
    Line {
        op: LineOp,
        text: String,
        /// Unanchored, for `|~` and `!~`; the pattern as an anchored
        /// regex for `|>` and `!>`.
        regex: Option<Regex>,
        /// `|= "a" or "b"`: more texts (with their regexes); a positive
        /// filter passes if one matches, a negative one if none does.
        or: Vec<(String, Option<Regex>)>,
    },
    /// `| json`: every field; `| json a="x.y", b`: those the paths name.
    Json(Vec<JsonField>),
    Logfmt,
    /// `|= ip("10.0.0.0/8")`, `!= ip(...)`: whether the line holds an
    /// address in the range.
    LineIp {
        negate: bool,
        range: IpRange,
    },
    /// `| regexp "(?P<name>...)"`: each named group's match as a label.
    Regexp(Regex),
    /// `| pattern "<ip> - <_> \"<method> <path>\""`.
    Pattern(Vec<PatternPart>),
    /// `| unpack`: a JSON object's top-level fields as labels, and its
    /// `_entry` as the line (Promtail's `pack` undone).
    Unpack,
    Label(LabelFilter),
    /// `| drop a, b="x"`: those labels (a matcher's only when it matches).
    Drop(Vec<LabelPick>),
    /// `| keep a, b="x"`: only those labels (and `__error__`).
    Keep(Vec<LabelPick>),
    /// `| decolorize`: ANSI color codes taken out of the line.
    Decolorize,
    /// `| line_format "{{.a}}"`: the line rendered from a template.
    LineFormat(template::Template),
    /// `| label_format a=b, c="{{.d}}"`.
    LabelFormat(Vec<LabelFormat>),
    /// `| unwrap took`, `| unwrap duration(took)`: the value a range
    /// aggregation takes from each line.
    Unwrap(Unwrap),
}

/// What `ip()` takes: one address, a CIDR block or `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl IpRange {
    /// `192.168.4.5`, `192.168.4.0/24`, `2001:db8::1-2001:db8::8`.
    pub fn parse(text: &str) -> Option<IpRange> {
        let text = text.trim();
        if let Some((first, last)) = text.split_once('-') {
            let first: IpAddr = first.trim().parse().ok()?;
            let last: IpAddr = last.trim().parse().ok()?;
            return (first.is_ipv4() == last.is_ipv4() && first <= last)
                .then_some(IpRange { first, last });
        }
        let Some((base, bits)) = text.split_once('/') else {
            let one: IpAddr = text.parse().ok()?;
            return Some(IpRange {
                first: one,
                last: one,
            });
        };
        let bits: u32 = bits.parse().ok()?;
        Some(match base.parse().ok()? {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32u32.checked_sub(bits)?).unwrap_or(0);
                let low = u32::from(v4) & mask;
                IpRange {
                    first: IpAddr::V4(low.into()),
                    last: IpAddr::V4((low | !mask).into()),
                }
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128u32.checked_sub(bits)?)
                    .unwrap_or(0);
                let low = u128::from(v6) & mask;
                IpRange {
                    first: IpAddr::V6(low.into()),
                    last: IpAddr::V6((low | !mask).into()),
                }
            }
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.first.is_ipv4() && self.first <= addr && addr <= self.last
    }

    /// Whether `text` holds an address in the range (among its runs of
    /// hex digits, `.` and `:`).
    pub fn found_in(&self, text: &str) -> bool {
        text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
            .filter(|t| t.len() >= 2)
            .filter_map(|t| {
                // A sentence's period, or a `key:` before the address.
                [t, t.trim_matches('.'), t.trim_matches(['.', ':'])]
                    .iter()
                    .find_map(|t| t.parse().ok())
            })
            .any(|addr| self.contains(addr))
    }
}

/// A label named by `| drop` or `| keep`, with a matcher on its value.
#[derive(Debug, Clone)]
pub struct LabelPick {
    pub name: String,
    pub matcher: Option<Matcher>,
}

/// One part of a `| pattern`: literal text, or a capture (`<name>`; `<_>`
/// captures nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    Literal(String),
    Capture(Option<String>),
}

/// One assignment of `| label_format`.
#[derive(Debug, Clone)]
pub enum LabelFormat {
    /// `dst=src`: the label renamed.
    Rename { to: String, from: String },
    /// `dst="{{...}}"`: the label set from a template.
    Template {
        to: String,
        template: template::Template,
    },
}

/// What `| unwrap` reads, and how it turns the label's text into a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwrap {
    pub label: String,
    pub conversion: Conversion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// The text as a number.
    Number,
    /// `duration(label)`, `duration_seconds(label)`: Go's `1m30s` as seconds.
    Duration,
    /// `bytes(label)`: `5 MiB` as bytes.
    Bytes,
}

/// `label="path"` of `| json`: the label gets the value at the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonField {
    pub label: String,
    pub path: Vec<PathStep>,
}

/// One step of a JSON path: `.key` or `["key"]`, `[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOp {
    /// `|=`: the line holds the text (case-sensitive substring).
    Contains,
    /// `!=`
    NotContains,
    /// `|~`: the regex matches somewhere in the line.
    Matches,
    /// `!~`
    NotMatches,
    /// `|>`: the whole line matches the pattern, whose `<_>` stand for
    /// any non-empty text (the patterns Logs Drilldown lists).
    Pattern,
    /// `!>`
    NotPattern,
}

/// A filter on a label's value after the selector.
#[derive(Debug, Clone)]
pub enum LabelFilter {
    Text(Matcher),
    /// `status >= 500`, `took > 10s`, `size < 20MB`: the label's text read
    /// as a number of `conversion`'s kind.
    Number {
        name: String,
        op: NumOp,
        value: f64,
        conversion: Conversion,
    },
    /// `addr = ip("10.0.0.0/8")`, `addr != ip(...)`.
    Ip {
        name: String,
        negate: bool,
        range: IpRange,
    },
    /// `a or b`: one passes.
    Any(Vec<LabelFilter>),
    /// `a and b`, `a, b`: all pass.
    All(Vec<LabelFilter>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFn {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    // Over unwrapped values:
    SumOverTime,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    FirstOverTime,
    LastOverTime,
    StddevOverTime,
    StdvarOverTime,
    QuantileOverTime,
    /// The per-second increase of an unwrapped counter, resets allowed
    /// and extrapolated to the window's edges (Prometheus' `rate`).
    RateCounter,
    /// 1 where the query selects nothing in the window.
    AbsentOverTime,
}

impl RangeFn {
    fn named(name: &str) -> Option<RangeFn> {
        Some(match name {
            "count_over_time" => RangeFn::CountOverTime,
            "rate" => RangeFn::Rate,
            "bytes_over_time" => RangeFn::BytesOverTime,
            "bytes_rate" => RangeFn::BytesRate,
            "sum_over_time" => RangeFn::SumOverTime,
            "avg_over_time" => RangeFn::AvgOverTime,
            "min_over_time" => RangeFn::MinOverTime,
            "max_over_time" => RangeFn::MaxOverTime,
            "first_over_time" => RangeFn::FirstOverTime,
            "last_over_time" => RangeFn::LastOverTime,
            "stddev_over_time" => RangeFn::StddevOverTime,
            "stdvar_over_time" => RangeFn::StdvarOverTime,
            "quantile_over_time" => RangeFn::QuantileOverTime,
            "rate_counter" => RangeFn::RateCounter,
            "absent_over_time" => RangeFn::AbsentOverTime,
            _ => return None,
        })
    }

    /// Whether it aggregates unwrapped values (and so needs `| unwrap`).
    pub fn unwraps(self) -> bool {
        !matches!(
            self,
            RangeFn::CountOverTime
                | RangeFn::Rate
                | RangeFn::BytesOverTime
                | RangeFn::BytesRate
                | RangeFn::AbsentOverTime
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Stddev,
    Stdvar,
}

impl AggOp {
    fn named(name: &str) -> Option<AggOp> {
        Some(match name {
            "sum" => AggOp::Sum,
            "avg" => AggOp::Avg,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            "count" => AggOp::Count,
            "stddev" => AggOp::Stddev,
            "stdvar" => AggOp::Stdvar,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    /// Set operations on series: `and`, `or`, `unless`.
    And,
    Or,
    Unless,
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl BinOp {
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le
        )
    }
}
