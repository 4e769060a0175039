//! Grafana's Loki data source against lode: the LogQL oracle (random
//! queries on the loghub samples, answered over HTTP by lode's index and
//! compared with a brute-force evaluation of the same LogQL over every
//! record), the requests Grafana sends, and Grafana's own LogQL grammar
//! (`@grafana/lezer-logql`) accepting every query the oracle makes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lode_engine::LogRecord;
use lode_server::{Config, Server};
use lode_tools::{SplitMix64, url_encode};
use regex::Regex;
use serde_json::Value;

use crate::server::{http, runtime};

type Labels = BTreeMap<String, String>;

/// The loghub samples with times that are neither unique nor in the
/// order of the records (shippers send them so): pairs share a second,
/// and the order is scrambled.
fn records() -> Vec<LogRecord> {
    let mut records = crate::search::loghub_records();
    let n = records.len() as i64;
    for (i, r) in records.iter_mut().enumerate() {
        let place = (i as i64 * 7919) % n;
        r.ts = BASE + place / 2 * 1_000_000_000;
    }
    records
}

const BASE: i64 = 1_700_000_000_000_000_000;
const SECOND: i64 = 1_000_000_000;

fn get(addr: SocketAddr, path: &str, params: &[(&str, String)]) -> (u16, Value) {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect();
    let (status, _, body) = http(addr, "GET", &format!("{path}?{}", query.join("&")), b"");
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (status, value)
}

/// `query_range` of `text` over `[start, end)` with `more` parameters;
/// it must answer 200 with `kind` of result.
fn query_range(
    addr: SocketAddr,
    text: &str,
    (start, end): (i64, i64),
    more: &[(&str, String)],
    kind: &str,
) -> Value {
    let mut params = vec![
        ("query", text.to_owned()),
        ("start", start.to_string()),
        ("end", end.to_string()),
    ];
    params.extend_from_slice(more);
    let (status, answer) = get(addr, "/loki/api/v1/query_range", &params);
    assert_eq!(status, 200, "{text}: {answer}");
    assert_eq!(answer["data"]["resultType"], kind, "{text}");
    answer
}

/// A LogQL string literal.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[derive(Debug, Clone)]
enum Op {
    Eq,
    Ne,
    Re,
    Nre,
    /// Line filters only: `|>` and `!>`.
    Pattern,
    NotPattern,
}

impl Op {
    fn symbol(&self, line: bool) -> &'static str {
        match (self, line) {
            (Op::Eq, false) => "=",
            (Op::Eq, true) => "|=",
            (Op::Ne, _) => "!=",
            (Op::Re, false) => "=~",
            (Op::Re, true) => "|~",
            (Op::Nre, _) => "!~",
            (Op::Pattern, _) => "|>",
            (Op::NotPattern, _) => "!>",
        }
    }
}

/// Whether `line` is `pattern` with each `<_>` some non-empty text: the
/// brute force's own reading of a pattern filter (no regex).
fn pattern_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("<_>").collect();
    fn rest_matches(parts: &[&str], line: &str) -> bool {
        match parts {
            [] => line.is_empty(),
            [last] => line == *last,
            [literal, more @ ..] => {
                let Some(after) = line.strip_prefix(literal) else {
                    return false;
                };
                // The wildcard takes one character or more.
                after
                    .char_indices()
                    .skip(1)
                    .map(|(i, _)| i)
                    .chain(std::iter::once(after.len()).filter(|l| *l > 0))
                    .any(|i| rest_matches(more, &after[i..]))
            }
        }
    }
    rest_matches(&parts, line)
}

/// A record's value of a stream label (as lode names them).
fn stream_label<'a>(r: &'a LogRecord, name: &str) -> &'a str {
    match name {
        "service_name" | "job" => r.service.as_str(),
        "host" => r.host.as_str(),
        _ => r.level.as_str(),
    }
}

/// A label matcher on a record, `=`/`!=` ignoring case as lode's do.
fn label_matches(
    r: &LogRecord,
    (name, op, value): &(&'static str, Op, String),
    re: Option<&Regex>,
) -> bool {
    let actual = stream_label(r, name);
    match op {
        Op::Eq => actual.to_lowercase() == value.to_lowercase(),
        Op::Ne => actual.to_lowercase() != value.to_lowercase(),
        Op::Re => re.is_some_and(|re| re.is_match(actual)),
        _ => !re.is_some_and(|re| re.is_match(actual)),
    }
}

/// A generated log query, kept in the test's own form for the brute
/// force.
#[derive(Debug, Clone)]
struct Generated {
    /// (label, op, value)
    selector: Vec<(&'static str, Op, String)>,
    lines: Vec<(Op, String)>,
    /// Label filter stages: each passes if one of its matchers does
    /// (`or`); written as stages of their own, or joined by `and`/`,`.
    filters: Vec<Vec<(&'static str, Op, String)>>,
    /// How the groups are joined in one stage (`and`, `,`), if they are.
    join: Option<&'static str>,
    drop_error: bool,
    /// A parser or formatter after the filters.
    format: Format,
    /// The regexes of `selector` then `lines` then `filters`, compiled
    /// once.
    regexes: Vec<Option<Regex>>,
    /// The time of the record most of the query was cut from.
    anchor: i64,
}

impl Generated {
    fn text(&self) -> String {
        let matchers: Vec<String> = self
            .selector
            .iter()
            .map(|(name, op, value)| format!("{name}{}{}", op.symbol(false), quote(value)))
            .collect();
        let mut text = format!("{{{}}}", matchers.join(", "));
        for (op, value) in &self.lines {
            text.push_str(&format!(" {} {}", op.symbol(true), quote(value)));
        }
        let groups: Vec<String> = self
            .filters
            .iter()
            .map(|group| {
                let any: Vec<String> = group
                    .iter()
                    .map(|(name, op, value)| format!("{name}{}{}", op.symbol(false), quote(value)))
                    .collect();
                any.join(" or ")
            })
            .collect();
        if let Some(join) = self.join.filter(|_| groups.len() > 1) {
            let all: Vec<String> = groups.iter().map(|g| format!("({g})")).collect();
            text.push_str(&format!(" | {}", all.join(join)));
        } else {
            for group in &groups {
                text.push_str(&format!(" | {group}"));
            }
        }
        text.push_str(&self.format.text());
        if self.drop_error {
            text.push_str(" | drop __error__");
        }
        text
    }

    /// The line the query answers for `r`.
    fn line(&self, r: &LogRecord) -> String {
        match &self.format {
            Format::Formatted(_) => format!("{} {}", r.level.as_str().to_uppercase(), r.message),
            _ => r.message.clone(),
        }
    }

    /// The labels the query answers `r` with.
    fn labels(&self, r: &LogRecord) -> Labels {
        let mut labels = labels_of(r);
        match &self.format {
            Format::Regexp(_) | Format::Pattern(_) => {
                if let Some(first) = self.format.first(&r.message) {
                    labels.insert("first".into(), first);
                }
            }
            Format::Keep => labels.retain(|k, _| k == "level" || k == "host"),
            Format::None | Format::Formatted(_) => {}
        }
        labels
    }

    fn compile(mut self) -> Generated {
        let selector = self.selector.iter().map(|(_, op, value)| {
            matches!(op, Op::Re | Op::Nre).then(|| Regex::new(&format!("^(?:{value})$")).unwrap())
        });
        let lines = self
            .lines
            .iter()
            .map(|(op, value)| matches!(op, Op::Re | Op::Nre).then(|| Regex::new(value).unwrap()));
        let filters = self.filters.iter().flatten().map(|(_, op, value)| {
            matches!(op, Op::Re | Op::Nre).then(|| Regex::new(&format!("^(?:{value})$")).unwrap())
        });
        self.regexes = selector.chain(lines).chain(filters).collect();
        self
    }

    fn selects(&self, r: &LogRecord) -> bool {
        let (matcher_res, rest) = self.regexes.split_at(self.selector.len());
        let (line_res, mut filter_res) = rest.split_at(self.lines.len());
        let selector = self
            .selector
            .iter()
            .zip(matcher_res)
            .all(|(m, re)| label_matches(r, m, re.as_ref()));
        let lines = self
            .lines
            .iter()
            .zip(line_res)
            .all(|((op, value), re)| match (op, re) {
                (Op::Eq, _) => r.message.contains(value.as_str()),
                (Op::Ne, _) => !r.message.contains(value.as_str()),
                (Op::Re, Some(re)) => re.is_match(&r.message),
                (Op::Pattern, _) => pattern_matches(value, &r.message),
                (Op::NotPattern, _) => !pattern_matches(value, &r.message),
                (_, re) => !re.as_ref().unwrap().is_match(&r.message),
            });
        let mut filters = true;
        for group in &self.filters {
            let (res, more) = filter_res.split_at(group.len());
            filter_res = more;
            filters &= group
                .iter()
                .zip(res)
                .any(|(m, re)| label_matches(r, m, re.as_ref()));
        }
        selector && lines && filters && self.format.passes(r)
    }
}

/// A parser or formatter stage the generator adds, read by the brute
/// force its own way.
#[derive(Debug, Clone)]
enum Format {
    None,
    /// `| regexp "(?P<first>\\S+)"`, then `| first="..."` if given.
    Regexp(Option<String>),
    /// `| pattern "<first> <_>"`, then `| first="..."` if given.
    Pattern(Option<String>),
    /// `| line_format "{{.level | ToUpper}} {{__line__}}"`, then `|= "..."`
    /// on the new line if given.
    Formatted(Option<String>),
    /// `| keep level, host`.
    Keep,
}

impl Format {
    fn text(&self) -> String {
        let then = |filter: &Option<String>, label: bool| match filter {
            Some(v) if label => format!(" | first={}", quote(v)),
            Some(v) => format!(" |= {}", quote(v)),
            None => String::new(),
        };
        match self {
            Format::None => String::new(),
            Format::Regexp(f) => format!(r#" | regexp "(?P<first>\\S+)"{}"#, then(f, true)),
            Format::Pattern(f) => format!(r#" | pattern "<first> <_>"{}"#, then(f, true)),
            Format::Formatted(f) => format!(
                r#" | line_format "{{{{.level | ToUpper}}}} {{{{__line__}}}}"{}"#,
                then(f, false)
            ),
            Format::Keep => " | keep level, host".to_owned(),
        }
    }

    /// What `first` is for a message: its first run of non-spaces
    /// (regexp), or what comes before its first space (pattern).
    fn first(&self, message: &str) -> Option<String> {
        match self {
            Format::Regexp(_) => message.split_whitespace().next().map(str::to_owned),
            Format::Pattern(_) if message.is_empty() => None,
            Format::Pattern(_) => Some(message.split(' ').next().unwrap_or_default().to_owned()),
            _ => None,
        }
    }

    fn passes(&self, r: &LogRecord) -> bool {
        match self {
            Format::Regexp(Some(want)) | Format::Pattern(Some(want)) => {
                self.first(&r.message).unwrap_or_default() == *want
            }
            Format::Formatted(Some(want)) => {
                format!("{} {}", r.level.as_str().to_uppercase(), r.message).contains(want.as_str())
            }
            _ => true,
        }
    }
}

fn labels_of(r: &LogRecord) -> Labels {
    [
        ("service_name", r.service.clone()),
        ("host", r.host.clone()),
        ("level", r.level.as_str().to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

struct Gen<'a> {
    rng: SplitMix64,
    records: &'a [LogRecord],
}

impl Gen<'_> {
    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    fn pick(&mut self) -> &LogRecord {
        let i = self.below(self.records.len());
        &self.records[i]
    }

    /// A piece of a line, cut anywhere (words cut in half too).
    fn piece(&mut self, line: &str) -> String {
        let chars: Vec<char> = line.chars().collect();
        let len = 2 + self.below(12);
        let start = self.below(chars.len().saturating_sub(len).max(1));
        chars.iter().skip(start).take(len).collect()
    }

    /// Some characters from inside one of `line`'s words (at least 3),
    /// so that the index finds it only as a part of a term.
    fn inside_word(&mut self, line: &str) -> String {
        let words: Vec<Vec<char>> = line
            .split(|c: char| !c.is_alphanumeric())
            .map(|w| w.chars().collect::<Vec<char>>())
            .filter(|w| w.len() >= 3)
            .collect();
        if words.is_empty() {
            return self.piece(line);
        }
        let word = &words[self.below(words.len())];
        let len = 3 + self.below(word.len() - 2);
        let start = self.below(word.len() - len + 1);
        word[start..start + len].iter().collect()
    }

    fn token(&mut self) -> String {
        loop {
            let message = self.pick().message.clone();
            let words: Vec<&str> = message
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() > 2)
                .collect();
            if !words.is_empty() {
                return words[self.below(words.len())].to_owned();
            }
        }
    }

    /// A matcher `anchor` passes, mostly.
    fn matcher(&mut self, anchor: &LogRecord) -> (&'static str, Op, String) {
        let r = if self.below(5) == 0 {
            self.pick().clone()
        } else {
            anchor.clone()
        };
        match self.below(8) {
            0..=2 => (
                if self.below(4) == 0 {
                    "job"
                } else {
                    "service_name"
                },
                Op::Eq,
                r.service,
            ),
            3 => (
                "service_name",
                Op::Re,
                format!("{}|{}", r.service, self.pick().service.clone()),
            ),
            4 => ("host", Op::Eq, r.host),
            5 => (
                "host",
                Op::Nre,
                format!("{}.*", &r.host[..3.min(r.host.len())]),
            ),
            6 => ("level", Op::Eq, r.level.as_str().to_owned()),
            _ => ("level", Op::Ne, "info".into()),
        }
    }

    /// A pattern `line` matches: some of its space-separated words
    /// (never all) replaced by `<_>`.
    fn pattern_of(&mut self, line: &str) -> String {
        let mut words: Vec<String> = line.split(' ').map(str::to_owned).collect();
        for _ in 0..1 + self.below(3) {
            let i = self.below(words.len());
            if !words[i].is_empty() && words.iter().filter(|w| *w != "<_>").count() > 1 {
                words[i] = "<_>".to_owned();
            }
        }
        words.join(" ")
    }

    /// A label filter group (`a="x" or b="y"`) `anchor` passes, mostly:
    /// Logs Drilldown's level filter, or matchers on other labels.
    fn filter_group(&mut self, anchor: &LogRecord) -> Vec<(&'static str, Op, String)> {
        if self.below(2) == 0 {
            let mut levels = vec![anchor.level.as_str().to_owned()];
            for _ in 0..self.below(3) {
                levels.push(self.pick().level.as_str().to_owned());
            }
            return levels
                .into_iter()
                .map(|l| ("detected_level", Op::Eq, l))
                .collect();
        }
        (0..1 + self.below(2))
            .map(|_| self.matcher(anchor))
            .collect()
    }

    /// A line filter `anchor` passes, mostly.
    fn line_filter(&mut self, anchor: &LogRecord) -> (Op, String) {
        match self.below(10) {
            9 => (Op::Eq, self.inside_word(&anchor.message)),
            7 => (Op::Pattern, self.pattern_of(&anchor.message)),
            8 => {
                let other = self.pick().message.clone();
                (Op::NotPattern, self.pattern_of(&other))
            }
            0..=2 => (Op::Eq, self.piece(&anchor.message)),
            3 => {
                let other = self.pick().message.clone();
                (Op::Ne, self.piece(&other))
            }
            4 => (
                Op::Re,
                format!(
                    "{}|{}",
                    regex::escape(&self.token()),
                    regex::escape(&self.token())
                ),
            ),
            5 => (
                Op::Re,
                format!("(?i){}\\s", regex::escape(&self.token().to_uppercase())),
            ),
            _ => (Op::Nre, format!("\\d{{{}}}", 1 + self.below(4))),
        }
    }

    /// A parser or formatter, sometimes with a filter `anchor` passes.
    fn format(&mut self, anchor: &LogRecord) -> Format {
        let filter = self.below(2) == 0;
        match self.below(8) {
            0 => {
                let f = Format::Regexp(None);
                Format::Regexp(f.first(&anchor.message).filter(|_| filter))
            }
            1 => {
                let f = Format::Pattern(None);
                Format::Pattern(f.first(&anchor.message).filter(|_| filter))
            }
            2 => {
                let line = format!(
                    "{} {}",
                    anchor.level.as_str().to_uppercase(),
                    anchor.message
                );
                let cut: String = line.chars().take(4 + self.below(12)).collect();
                Format::Formatted(filter.then_some(cut))
            }
            3 => Format::Keep,
            _ => Format::None,
        }
    }

    fn log_query(&mut self) -> Generated {
        let anchor = self.pick().clone();
        let mut selector = vec![self.matcher(&anchor)];
        match self.below(6) {
            // Nothing narrows: the line filters' words must.
            0 => selector = vec![("service_name", Op::Re, ".+".to_owned())],
            1 | 2 => selector.push(self.matcher(&anchor)),
            _ => {}
        }
        let lines = (0..self.below(4))
            .map(|_| self.line_filter(&anchor))
            .collect();
        let filters = (0..[0, 0, 1, 2][self.below(4)])
            .map(|_| self.filter_group(&anchor))
            .collect();
        let format = self.format(&anchor);
        Generated {
            selector,
            lines,
            filters,
            join: [None, Some(" and "), Some(", ")][self.below(3)],
            drop_error: self.below(4) == 0,
            format,
            regexes: Vec::new(),
            anchor: anchor.ts,
        }
        .compile()
    }
}

fn check_log_query(addr: SocketAddr, records: &[LogRecord], g: &mut Gen<'_>) -> (String, bool) {
    let q = g.log_query();
    let start = q.anchor - g.below(2000) as i64 * SECOND;
    let end = q.anchor + (1 + g.below(2000)) as i64 * SECOND;
    let limit = [1, 7, 50, 100, 1000][g.below(5)];
    let backward = g.below(4) != 0;
    let text = q.text();
    let direction = if backward { "backward" } else { "forward" };
    let answer = query_range(
        addr,
        &text,
        (start, end),
        &[
            ("limit", limit.to_string()),
            ("direction", direction.into()),
        ],
        "streams",
    );
    // The brute force: every record, in time order, ties newest first.
    let mut expected: Vec<&LogRecord> = records
        .iter()
        .filter(|r| r.ts >= start && r.ts < end && q.selects(r))
        .collect();
    expected.sort_by_key(|r| if backward { -r.ts } else { r.ts });
    expected.truncate(limit);
    let mut got: Vec<(i64, String, Labels)> = Vec::new();
    for stream in answer["data"]["result"].as_array().unwrap() {
        let labels: Labels = serde_json::from_value(stream["stream"].clone()).unwrap();
        for value in stream["values"].as_array().unwrap() {
            let ts: i64 = value[0].as_str().unwrap().parse().unwrap();
            got.push((ts, value[1].as_str().unwrap().to_owned(), labels.clone()));
        }
    }
    got.sort_by_key(|(ts, _, _)| if backward { -ts } else { *ts });
    let times = |v: &mut Vec<i64>| v.sort_unstable();
    let (mut want_ts, mut got_ts): (Vec<i64>, Vec<i64>) = (
        expected.iter().map(|r| r.ts).collect(),
        got.iter().map(|g| g.0).collect(),
    );
    times(&mut want_ts);
    times(&mut got_ts);
    assert_eq!(
        got_ts, want_ts,
        "{text} [{start}, {end}) limit {limit} backward {backward}"
    );
    // Every line is one the query selects, with its record's labels; past
    // the last time (where ties may be cut either way) the lines are the
    // same.
    let edge = expected.last().map(|r| r.ts);
    for (ts, line, labels) in &got {
        let found = records
            .iter()
            .any(|r| r.ts == *ts && q.line(r) == *line && q.labels(r) == *labels && q.selects(r));
        assert!(found, "{text}: {ts} {line:?} {labels:?} is not selected");
    }
    let inner = |items: Vec<(i64, String)>| -> Vec<(i64, String)> {
        let mut items: Vec<_> = items
            .into_iter()
            .filter(|(ts, _)| Some(*ts) != edge)
            .collect();
        items.sort();
        items
    };
    assert_eq!(
        inner(got.iter().map(|(t, l, _)| (*t, l.clone())).collect()),
        inner(expected.iter().map(|r| (r.ts, q.line(r))).collect()),
        "{text}"
    );
    (text, !expected.is_empty())
}

#[derive(Debug, Clone, Copy)]
enum Func {
    Count,
    Rate,
    Bytes,
    BytesRate,
    /// Over the records' `line` attribute, unwrapped.
    Sum,
    Avg,
    Min,
    Max,
    Stdvar,
    Stddev,
    Quantile(f64),
}

impl Func {
    fn name(self) -> &'static str {
        match self {
            Func::Count => "count_over_time",
            Func::Rate => "rate",
            Func::Bytes => "bytes_over_time",
            Func::BytesRate => "bytes_rate",
            Func::Sum => "sum_over_time",
            Func::Avg => "avg_over_time",
            Func::Min => "min_over_time",
            Func::Max => "max_over_time",
            Func::Stdvar => "stdvar_over_time",
            Func::Stddev => "stddev_over_time",
            Func::Quantile(_) => "quantile_over_time",
        }
    }

    /// The value of a window's records (`(size, line)` each) for a range
    /// of `seconds`, worked out plainly.
    fn of(self, window: &[(f64, f64)], seconds: f64) -> f64 {
        let n = window.len() as f64;
        let lines = || window.iter().map(|(_, line)| *line);
        let mean = lines().sum::<f64>() / n;
        let variance = lines().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        match self {
            Func::Count => n,
            Func::Rate => n / seconds,
            Func::Bytes => window.iter().map(|(size, _)| size).sum(),
            Func::BytesRate => window.iter().map(|(size, _)| size).sum::<f64>() / seconds,
            Func::Sum => lines().sum(),
            Func::Avg => mean,
            Func::Min => lines().fold(f64::INFINITY, f64::min),
            Func::Max => lines().fold(f64::NEG_INFINITY, f64::max),
            Func::Stdvar => variance,
            Func::Stddev => variance.sqrt(),
            Func::Quantile(phi) => {
                let mut sorted: Vec<f64> = lines().collect();
                sorted.sort_by(f64::total_cmp);
                let rank = phi * (sorted.len() - 1) as f64;
                let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
                sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - rank.floor())
            }
        }
    }
}

fn check_metric_query(addr: SocketAddr, records: &[LogRecord], g: &mut Gen<'_>) -> (String, bool) {
    let mut q = g.log_query();
    let func = [
        Func::Count,
        Func::Rate,
        Func::Bytes,
        Func::BytesRate,
        Func::Sum,
        Func::Avg,
        Func::Min,
        Func::Max,
        Func::Stdvar,
        Func::Stddev,
        Func::Quantile([0.0, 0.5, 0.9, 1.0][g.below(4)]),
    ][g.below(11)];
    let name = func.name();
    let counts_lines = matches!(
        func,
        Func::Count | Func::Rate | Func::Bytes | Func::BytesRate
    );
    if !counts_lines && matches!(q.format, Format::Keep) {
        // `keep` would take the unwrapped attribute away.
        q.format = Format::None;
    }
    // Grafana's grammar (lezer-logql 0.3) refuses `| unwrap x [5m] offset
    // 1m` after other stages, which Loki takes: offsets go on counts.
    let offset = if counts_lines {
        [0, 0, 60, 300][g.below(4)]
    } else {
        0
    };
    let offset_text = if offset > 0 {
        format!(" offset {offset}s")
    } else {
        String::new()
    };
    let (range, range_text) = [
        (10, "10s"),
        (60, "1m"),
        (90, "90s"),
        (300, "5m"),
        (3600, "1h"),
    ][g.below(5)];
    let step = [15, 30, 60, 120][g.below(4)] as i64 * SECOND;
    let grouping = g.below(6);
    let window = format!("[{range_text}]{offset_text}");
    let inner = match func {
        Func::Count | Func::Rate | Func::Bytes | Func::BytesRate => {
            format!("{name}({} {window})", q.text())
        }
        Func::Quantile(phi) => {
            format!("{name}({phi}, {} | unwrap line {window})", q.text())
        }
        _ => format!("{name}({} | unwrap line {window})", q.text()),
    };
    let text = match grouping {
        0 => inner,
        1 => format!("sum({inner})"),
        2 => format!("sum by (level) ({inner})"),
        3 => format!("sum by (service_name) ({inner})"),
        4 => format!("sum without (host) ({inner})"),
        _ => format!("sum by (detected_level, level) ({inner})"),
    };
    let post = g.below(6);
    let text = match post {
        4 => format!("topk(2, {text})"),
        5 => format!("{text} > 1"),
        _ => text,
    };
    let start = q.anchor - g.below(60) as i64 * step;
    let end = start + (1 + g.below(120)) as i64 * step;
    let step_text = format!("{}s", step / SECOND);
    let answer = query_range(addr, &text, (start, end), &[("step", step_text)], "matrix");
    // The brute force: at each step t, each series' records in
    // (t - range, t], then the aggregation over the series.
    let range = range * SECOND;
    let seconds = range as f64 / 1e9;
    let mut expected: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
    let selected: Vec<&LogRecord> = records.iter().filter(|r| q.selects(r)).collect();
    let mut t = start;
    while t <= end {
        let mut windows: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let at = t - offset * SECOND;
        for r in selected.iter().filter(|r| r.ts > at - range && r.ts <= at) {
            let line: f64 = r
                .attrs
                .iter()
                .find(|(k, _)| k == "line")
                .unwrap()
                .1
                .parse()
                .unwrap();
            windows
                .entry(q.labels(r))
                .or_default()
                .push((q.line(r).len() as f64, line));
        }
        for (all, window) in windows {
            let level = all["level"].clone();
            let key: Labels = match grouping {
                0 => all,
                1 => Labels::new(),
                2 => all.into_iter().filter(|(k, _)| k == "level").collect(),
                3 => all
                    .into_iter()
                    .filter(|(k, _)| k == "service_name")
                    .collect(),
                4 => all.into_iter().filter(|(k, _)| k != "host").collect(),
                _ => [("level", level.clone()), ("detected_level", level)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            };
            *expected.entry(key).or_default().entry(t).or_default() += func.of(&window, seconds);
        }
        t += step;
    }
    let mut got: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
    for series in answer["data"]["result"].as_array().unwrap() {
        let labels: Labels = serde_json::from_value(series["metric"].clone()).unwrap();
        let points = got.entry(labels).or_default();
        for v in series["values"].as_array().unwrap() {
            let t = (v[0].as_f64().unwrap() * 1e9).round() as i64;
            points.insert(t, v[1].as_str().unwrap().parse().unwrap());
        }
    }
    if post == 4 {
        top_two_agree(&text, &got, &expected);
        return (text, !expected.is_empty());
    }
    if post == 5 {
        for points in expected.values_mut() {
            points.retain(|_, v| *v > 1.0);
        }
        expected.retain(|_, points| !points.is_empty());
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{text} from {start} to {end}"
    );
    for (labels, points) in &expected {
        let answered = &got[labels];
        assert_eq!(
            answered.keys().collect::<Vec<_>>(),
            points.keys().collect::<Vec<_>>(),
            "{text}: {labels:?}"
        );
        for (t, want) in points {
            let have = answered[t];
            assert!(
                (have - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{text} at {t}: {have} != {want}"
            );
        }
    }
    (text, !expected.is_empty())
}

type Points = BTreeMap<Labels, BTreeMap<i64, f64>>;

/// `topk(2, ...)`: at each step the two largest values of `all` (series
/// of equal values may be either), each answered with its series' labels.
fn top_two_agree(text: &str, got: &Points, all: &Points) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    let steps: std::collections::BTreeSet<i64> = all
        .values()
        .chain(got.values())
        .flat_map(|p| p.keys().copied())
        .collect();
    for t in steps {
        let at = |points: &Points| {
            let mut values: Vec<f64> = points.values().filter_map(|p| p.get(&t).copied()).collect();
            values.sort_by(|a, b| b.total_cmp(a));
            values
        };
        let mut want = at(all);
        want.truncate(2);
        let have = at(got);
        assert!(
            have.len() == want.len() && have.iter().zip(&want).all(|(h, w)| close(*h, *w)),
            "{text} at {t}: {have:?} != {want:?}"
        );
    }
    for (labels, points) in got {
        for (t, v) in points {
            let there = all.get(labels).and_then(|p| p.get(t));
            assert!(
                there.is_some_and(|w| close(*v, *w)),
                "{text}: {labels:?} at {t}"
            );
        }
    }
}

fn config(data: &std::path::Path) -> Config {
    let loopback = "127.0.0.1:0".parse().ok();
    Config {
        data: data.to_owned(),
        listen: loopback,
        quic: loopback,
        http: loopback,
        syslog: None,
        ..Config::default()
    }
}

/// Starts a server holding `records`, indexed.
pub(crate) fn serve(
    dir: &std::path::Path,
    records: &[LogRecord],
) -> (tokio::runtime::Runtime, Server) {
    let rt = runtime();
    let server = rt.block_on(Server::start(config(dir))).unwrap();
    rt.block_on(async {
        for chunk in records.chunks(2000) {
            server
                .service()
                .append_records(&lode_server::Caller::everything(), chunk.to_vec(), None)
                .await
                .unwrap();
        }
    });
    assert!(server.service().wait_indexed(Duration::from_secs(30)));
    (rt, server)
}

/// 300 random log queries and 300 random metric queries, each equal to
/// the brute force; every query text also goes to Grafana's grammar.
#[test]
fn random_logql_equals_a_brute_force_evaluation() {
    let records = records();
    let dir = tempfile::tempdir().unwrap();
    let (rt, server) = serve(dir.path(), &records);
    let addr = server.addresses().http.unwrap();
    let mut g = Gen {
        rng: SplitMix64::new(0x1091),
        records: &records,
    };
    let mut texts = Vec::new();
    let (mut lines, mut series) = (0, 0);
    for _ in 0..300 {
        let (text, found) = check_log_query(addr, &records, &mut g);
        texts.push(text);
        lines += usize::from(found);
        let (text, found) = check_metric_query(addr, &records, &mut g);
        texts.push(text);
        series += usize::from(found);
    }
    rt.block_on(server.shutdown()).unwrap();
    // Enough of the answers hold something for the comparison to mean
    // something.
    eprintln!("{lines} of 300 log queries and {series} of 300 metric queries found records");
    assert!(
        lines >= 100 && series >= 100,
        "{lines} and {series} of 300 found records"
    );
    // Every construct the generator knows was drawn.
    for construct in [
        "| regexp",
        "| pattern",
        "| line_format",
        "| keep",
        "topk(2,",
        ") > 1",
        "] offset",
        "|>",
        "!>",
        " or ",
        " and ",
        "), (",
        "detected_level=",
        "| unwrap line",
        "quantile_over_time(0.9",
        "stddev_over_time",
        "avg_over_time",
    ] {
        let n = texts.iter().filter(|t| t.contains(construct)).count();
        assert!(n >= 3, "'{construct}' in {n} queries");
    }
    lezer_accepts(&texts);
}

/// Every query is valid LogQL by Grafana's own grammar
/// (`@grafana/lezer-logql`, installed by the test command), run by the
/// machine's node.
fn lezer_accepts(texts: &[String]) {
    let dir =
        std::env::var("LODE_LEZER_LOGQL").unwrap_or_else(|_| "/var/tmp/lode-test-node".into());
    let script = format!(
        r#"
const {{ parser }} = require("{dir}/node_modules/@grafana/lezer-logql");
const queries = JSON.parse(require("fs").readFileSync(0, "utf8"));
const bad = [];
for (const q of queries) {{
  let error = false;
  parser.parse(q).iterate({{ enter: (n) => {{ if (n.type.isError) error = true; }} }});
  if (error) bad.push(q);
}}
console.log(JSON.stringify(bad));
"#
    );
    let mut child = Command::new("node")
        .args(["-e", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (installed by tools/with-deps --test)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(texts).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(bad.is_empty(), "not LogQL by Grafana's grammar: {bad:#?}");
}

/// The requests Grafana's Loki data source sends (its health check,
/// label browsing, the logs volume, a log query in Explore, the query
/// inspector's stats, build info, a query with a typo), each answered
/// in the shape Loki's HTTP API documents and with the records' own
/// figures.
#[test]
fn grafana_data_source_requests_get_lokis_shapes() {
    let records = records();
    let dir = tempfile::tempdir().unwrap();
    let (rt, server) = serve(dir.path(), &records);
    let addr = server.addresses().http.unwrap();
    let (start, end) = (BASE - 60 * SECOND, BASE + records.len() as i64 * SECOND);
    let range = [("start", start.to_string()), ("end", end.to_string())];
    let service = records[0].service.to_lowercase();
    let selector = format!("{{service_name=\"{service}\"}}");
    let of_service: Vec<&LogRecord> = records
        .iter()
        .filter(|r| r.service.to_lowercase() == service)
        .collect();

    // The health check: an instant `vector(1)+vector(1)`.
    let (status, answer) = get(
        addr,
        "/loki/api/v1/query",
        &[
            ("query", "vector(1)+vector(1)".into()),
            ("time", end.to_string()),
        ],
    );
    assert_eq!((status, &answer["status"]), (200, &Value::from("success")));
    assert_eq!(answer["data"]["resultType"], "vector");
    assert_eq!(answer["data"]["result"][0]["value"][1], "2", "{answer}");
    assert!(answer["data"]["result"][0]["value"][0].is_number());

    // Label browsing.
    let (status, answer) = get(addr, "/loki/api/v1/labels", &range);
    assert_eq!(status, 200);
    let names: Vec<&str> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"service_name") && names.contains(&"level"),
        "{names:?}"
    );
    let (_, answer) = get(addr, "/loki/api/v1/label/service_name/values", &range);
    let mut got: Vec<String> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = records
        .iter()
        .map(|r| r.service.to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    got.sort();
    want.sort();
    want.dedup();
    assert_eq!(got, want);
    let mut series_params = range.to_vec();
    series_params.push(("match[]", selector.clone()));
    let (_, answer) = get(addr, "/loki/api/v1/series", &series_params);
    let sets = answer["data"].as_array().unwrap();
    assert!(!sets.is_empty());
    for set in sets {
        assert_eq!(
            set["service_name"].as_str().map(str::to_lowercase),
            Some(service.clone()),
            "{set}"
        );
    }

    // The query inspector's stats: bare, without the status wrapper.
    let mut stats_params = range.to_vec();
    stats_params.push(("query", selector.clone()));
    let (status, stats) = get(addr, "/loki/api/v1/index/stats", &stats_params);
    assert_eq!(status, 200);
    assert_eq!(
        stats["entries"].as_u64(),
        Some(of_service.len() as u64),
        "{stats}"
    );
    for key in ["streams", "chunks", "bytes"] {
        assert!(stats[key].is_u64(), "{key}: {stats}");
    }

    // The logs volume, at the step Grafana picks (seconds, or a duration).
    for step in ["60", "1m"] {
        let volume = format!(
            "sum by (level, detected_level) (count_over_time({selector} | drop __error__[1m]))"
        );
        let answer = query_range(
            addr,
            &volume,
            (start, end),
            &[("step", step.into())],
            "matrix",
        );
        let mut total = 0.0;
        for series in answer["data"]["result"].as_array().unwrap() {
            assert!(series["metric"]["level"].is_string(), "{series}");
            for point in series["values"].as_array().unwrap() {
                assert!(point[0].is_number(), "{point}");
                total += point[1].as_str().unwrap().parse::<f64>().unwrap();
            }
        }
        assert_eq!(total as usize, of_service.len(), "step {step}");
    }

    // Explore's log query: newest first, at most `limit`.
    let word = of_service[0]
        .message
        .split_whitespace()
        .find(|w| w.len() > 3 && w.chars().all(char::is_alphanumeric))
        .unwrap_or("a")
        .to_owned();
    let logs = format!("{selector} |= {}", quote(&word));
    let more = [
        ("limit", "1000".to_owned()),
        ("direction", "backward".to_owned()),
    ];
    let answer = query_range(addr, &logs, (start, end), &more, "streams");
    let mut lines: Vec<(i64, String)> = Vec::new();
    for stream in answer["data"]["result"].as_array().unwrap() {
        assert!(stream["stream"].is_object());
        for value in stream["values"].as_array().unwrap() {
            let ts: i64 = value[0].as_str().unwrap().parse().unwrap();
            lines.push((ts, value[1].as_str().unwrap().to_owned()));
        }
    }
    let expected = of_service
        .iter()
        .filter(|r| r.message.contains(&word))
        .count()
        .min(1000);
    assert_eq!(lines.len(), expected, "{logs}");
    assert!(lines.iter().all(|(_, line)| line.contains(&word)));

    // A typo: a 400 whose message a person can read, naming the column.
    let (status, answer) = get(
        addr,
        "/loki/api/v1/query_range",
        &[
            ("query", "{service_name=\"x\"} |= ".into()),
            ("start", start.to_string()),
            ("end", end.to_string()),
        ],
    );
    assert_eq!((status, &answer["status"]), (400, &Value::from("error")));
    assert!(
        answer["message"].as_str().unwrap().contains("col"),
        "{answer}"
    );

    let (status, _, body) = http(addr, "GET", "/loki/api/v1/status/buildinfo", b"");
    let info: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200);
    assert!(
        info["version"].as_str().is_some_and(|v| v.starts_with('3')),
        "{info}"
    );
    rt.block_on(server.shutdown()).unwrap();
}

/// A WebSocket to `/loki/api/v1/tail` with `params`, reading with a
/// timeout.
type Socket = tungstenite::WebSocket<std::net::TcpStream>;

fn tail_socket(addr: SocketAddr, params: &[(&str, String)]) -> Result<Socket, u16> {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect();
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let url = format!("ws://{addr}/loki/api/v1/tail?{}", query.join("&"));
    match tungstenite::client(url, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("tail: {e}"),
    }
}

/// The lines of the frames that arrive within `wait`, in order, each
/// frame in Loki's `{"streams": [...]}` shape.
fn tail_lines(
    socket: &mut Socket,
    wait: Duration,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut lines = Vec::new();
    while std::time::Instant::now() < deadline && !until(&lines) {
        let text = match socket.read() {
            Ok(tungstenite::Message::Text(text)) => text,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                continue;
            }
            Err(e) => panic!("tail: {e}"),
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        let mut framed: Vec<(i64, String)> = Vec::new();
        for stream in frame["streams"].as_array().unwrap() {
            assert!(stream["stream"]["service_name"].is_string(), "{stream}");
            for value in stream["values"].as_array().unwrap() {
                let ts = value[0].as_str().unwrap().parse().unwrap();
                framed.push((ts, value[1].as_str().unwrap().to_owned()));
            }
        }
        framed.sort_by_key(|(ts, _)| *ts);
        lines.extend(framed.into_iter().map(|(_, line)| line));
    }
    lines
}

/// Live tail as Grafana's Explore uses it: the newest `limit` lines since
/// `start` first (oldest first), then each new line the query keeps,
/// once; a metric query or a typo is refused before the upgrade.
#[test]
fn loki_tail_sends_the_backfill_then_new_lines_once() {
    let records = records();
    let dir = tempfile::tempdir().unwrap();
    let (rt, server) = serve(dir.path(), &records);
    let addr = server.addresses().http.unwrap();
    let service = records[0].service.to_lowercase();
    let query = format!("{{service_name=\"{service}\"}} != \"haystack\"");
    let mut of_service: Vec<&LogRecord> = records
        .iter()
        .filter(|r| r.service.to_lowercase() == service && !r.message.contains("haystack"))
        .collect();
    of_service.sort_by_key(|r| r.ts);
    let start = ("start", (BASE - SECOND).to_string());

    // All of them (fewer than the limit), then the newest 5 (the default
    // limit is 100).
    let all = ("limit", "10000".to_owned());
    let mut socket = tail_socket(addr, &[("query", query.clone()), start.clone(), all]).unwrap();
    let got = tail_lines(&mut socket, Duration::from_secs(10), |l| {
        l.len() >= of_service.len()
    });
    let mut want: Vec<String> = of_service.iter().map(|r| r.message.clone()).collect();
    let mut got = got;
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the backfill holds other lines than the brute force"
    );
    let mut newest = tail_socket(
        addr,
        &[("query", query.clone()), start, ("limit", "5".into())],
    )
    .unwrap();
    let five = tail_lines(&mut newest, Duration::from_secs(10), |l| l.len() >= 5);
    assert_eq!(five.len(), 5);
    let cut = of_service[of_service.len() - 5].ts;
    for line in &five {
        assert!(
            of_service.iter().any(|r| &r.message == line && r.ts >= cut),
            "{line}"
        );
    }

    // New lines: only the one the query keeps arrives, once, on both.
    let now = lode_engine::now_ns();
    let push = serde_json::json!({"streams": [
        {"stream": {"service_name": service}, "values": [
            [now.to_string(), "needle one"], [now.to_string(), "haystack two"]]},
        {"stream": {"service_name": "someone-else"}, "values": [[now.to_string(), "needle three"]]},
    ]});
    let (status, _, body) = crate::server::http_with(
        addr,
        "POST",
        "/loki/api/v1/push",
        "Content-Type: application/json\r\n",
        push.to_string().as_bytes(),
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    for socket in [&mut socket, &mut newest] {
        let live = tail_lines(socket, Duration::from_secs(3), |_| false);
        assert_eq!(live, ["needle one"]);
    }

    // Refused before the upgrade, with a reason.
    let metric = format!("count_over_time({{service_name=\"{service}\"}}[1m])");
    assert_eq!(tail_socket(addr, &[("query", metric)]).err(), Some(400));
    assert_eq!(
        tail_socket(addr, &[("query", "{service_name=".into())]).err(),
        Some(400)
    );
    drop((socket, newest));
    rt.block_on(server.shutdown()).unwrap();
}

/// Records of three services for Logs Drilldown: JSON lines, logfmt
/// lines and plain text, each with an `env` attribute and some a trace id.
fn drilldown_records() -> Vec<LogRecord> {
    (0..600)
        .map(|i: i64| {
            let (service, message) = match i % 3 {
                0 => (
                    "api",
                    format!(
                        r#"{{"status":{},"latency":"{}ms","user":{{"id":"u{}"}},"msg":"GET /items/{i}"}}"#,
                        [200, 404, 500][(i as usize / 3) % 3],
                        i % 50,
                        i % 7
                    ),
                ),
                1 => (
                    "db",
                    format!("query_ms={} table={} ok=true", i % 40, ["users", "items"][(i as usize) % 2]),
                ),
                _ => ("web", format!("served page {i} to a browser")),
            };
            let mut attrs = vec![("env".to_owned(), ["prod", "dev"][(i as usize / 2) % 2].to_owned())];
            if i % 5 == 0 {
                attrs.push(("trace_id".to_owned(), format!("{i:016x}")));
            }
            LogRecord {
                ts: BASE + i * SECOND,
                level: if i % 4 == 0 {
                    lode_engine::Level::Error
                } else {
                    lode_engine::Level::Info
                },
                service: service.into(),
                host: format!("h{}", i % 2),
                attrs,
                message,
                tenant: String::new(),
            }
        })
        .collect()
}

/// The requests Grafana's Logs Drilldown sends (service list, labels,
/// fields, a field's values) answered with Loki's shapes and the
/// brute-force figures.
#[test]
fn logs_drilldown_requests_get_lokis_shapes() {
    let records = drilldown_records();
    let dir = tempfile::tempdir().unwrap();
    let (_rt, server) = serve(dir.path(), &records);
    let addr = server.addresses().http.unwrap();
    // Drilldown sends ISO times.
    let iso = |ns: i64| {
        let s = ns / SECOND;
        let (days, rem) = (s / 86_400, s % 86_400);
        let (y, m, d) = civil(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    };
    let (start, end) = (BASE - 60 * SECOND, BASE + 700 * SECOND);
    let range = [("start", iso(start)), ("end", iso(end))];
    let with = |more: &[(&'static str, &str)]| {
        let mut p: Vec<(&str, String)> = range.to_vec();
        p.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
        p
    };
    let bytes_by = |key: &dyn Fn(&LogRecord) -> Option<String>| {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for r in &records {
            if let Some(k) = key(r) {
                *by.entry(k).or_default() += r.message.len() as u64;
            }
        }
        by
    };

    // The service list: a vector of bytes per service, largest first.
    let (status, answer) = get(
        addr,
        "/loki/api/v1/index/volume",
        &with(&[("query", r#"{service_name=~".+"}"#), ("limit", "5000")]),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "success");
    assert_eq!(answer["data"]["resultType"], "vector");
    let result = answer["data"]["result"].as_array().unwrap();
    let listed: Vec<(String, f64)> = result
        .iter()
        .map(|s| {
            assert!(s["value"][0].is_number(), "{s}");
            let bytes: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            (
                s["metric"]["service_name"].as_str().unwrap().to_owned(),
                bytes,
            )
        })
        .collect();
    let mut names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "db", "web"]);
    assert!(listed.windows(2).all(|w| w[0].1 >= w[1].1), "{listed:?}");
    // The search box's case-insensitive regex.
    let (_, answer) = get(
        addr,
        "/loki/api/v1/index/volume",
        &with(&[("query", r#"{service_name=~"(?i).*AP.*"}"#)]),
    );
    let result = answer["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{answer}");
    assert_eq!(
        result[0]["metric"],
        serde_json::json!({"service_name": "api"})
    );

    // By an attribute: read record by record, exact bytes.
    let want = bytes_by(&|r| {
        r.attrs
            .iter()
            .find(|(k, _)| k == "env")
            .map(|(_, v)| v.clone())
    });
    let (_, answer) = get(
        addr,
        "/loki/api/v1/index/volume",
        &with(&[("query", "{}"), ("targetLabels", "env")]),
    );
    let got: BTreeMap<String, u64> = answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["env"].as_str().unwrap().to_owned(),
                s["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "{answer}");
    // The same per minute: a matrix whose points add up to it.
    let (_, answer) = get(
        addr,
        "/loki/api/v1/index/volume_range",
        &with(&[("query", "{}"), ("targetLabels", "env"), ("step", "60s")]),
    );
    assert_eq!(answer["data"]["resultType"], "matrix", "{answer}");
    for series in answer["data"]["result"].as_array().unwrap() {
        let times: Vec<i64> = series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap() * 1e9).round() as i64)
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{series}");
        assert!(times.iter().all(|t| (start..=end).contains(t)), "{series}");
        let env = series["metric"]["env"].as_str().unwrap();
        let total: u64 = series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(Some(&total), want.get(env), "{series}");
    }
    // Labels grouped by name (`aggregateBy=labels`).
    let (_, answer) = get(
        addr,
        "/loki/api/v1/index/volume",
        &with(&[
            ("query", r#"{service_name="db"}"#),
            ("aggregateBy", "labels"),
            ("targetLabels", "host,env"),
        ]),
    );
    let metrics: Vec<&Value> = answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["metric"])
        .collect();
    assert_eq!(metrics.len(), 2, "{answer}");
    assert!(
        metrics
            .iter()
            .all(|m| m.as_object().unwrap().values().all(|v| v == "")),
        "{answer}"
    );

    // Labels, with their cardinality; bare (no status wrapper).
    let (status, answer) = get(
        addr,
        "/loki/api/v1/detected_labels",
        &with(&[("query", "")]),
    );
    assert_eq!(status, 200, "{answer}");
    let labels: BTreeMap<String, u64> = answer["detectedLabels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["label"].as_str().unwrap().to_owned(),
                l["cardinality"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(labels.get("service_name"), Some(&3), "{answer}");
    assert_eq!(labels.get("host"), Some(&2), "{answer}");
    assert_eq!(labels.get("level"), Some(&2), "{answer}");

    // Fields of a service's newest 100 lines, as the fields tab asks.
    let pipeline = r#"{service_name="api"} | json | logfmt | drop __error__, __error_details__"#;
    let (status, answer) = get(
        addr,
        "/loki/api/v1/detected_fields",
        &with(&[("query", pipeline)]),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["limit"], 1000, "{answer}");
    let fields: BTreeMap<String, &Value> = answer["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["label"].as_str().unwrap().to_owned(), f))
        .collect();
    let newest_api: Vec<&LogRecord> = records
        .iter()
        .rev()
        .filter(|r| r.service == "api")
        .take(100)
        .collect();
    let distinct = |f: &dyn Fn(&LogRecord) -> Option<String>| {
        newest_api
            .iter()
            .filter_map(|r| f(r))
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64
    };
    let json_field = |r: &LogRecord, path: &[&str]| {
        let v: Value = serde_json::from_str(&r.message).unwrap();
        let leaf = path.iter().fold(&v, |v, k| &v[*k]);
        Some(
            leaf.as_str()
                .map_or_else(|| leaf.to_string(), str::to_owned),
        )
    };
    for (name, kind, path) in [
        ("status", "int", vec!["status"]),
        ("latency", "duration", vec!["latency"]),
        ("user_id", "string", vec!["user", "id"]),
        ("msg", "string", vec!["msg"]),
    ] {
        let field = fields
            .get(name)
            .unwrap_or_else(|| panic!("{name}: {answer}"));
        assert_eq!(field["type"], kind, "{field}");
        assert_eq!(field["parsers"], serde_json::json!(["json"]), "{field}");
        assert_eq!(field["jsonPath"], serde_json::json!(path), "{field}");
        assert_eq!(
            field["cardinality"].as_u64(),
            Some(distinct(&|r| json_field(r, &path))),
            "{field}"
        );
    }
    for name in ["env", "trace_id", "detected_level"] {
        let field = fields
            .get(name)
            .unwrap_or_else(|| panic!("{name}: {answer}"));
        assert!(field["parsers"].is_null(), "{field}");
        assert!(field.get("jsonPath").is_none(), "{field}");
    }
    // logfmt lines.
    let (_, answer) = get(
        addr,
        "/loki/api/v1/detected_fields",
        &with(&[("query", r#"{service_name="db"}"#), ("line_limit", "10")]),
    );
    let db: Vec<&Value> = answer["fields"].as_array().unwrap().iter().collect();
    let query_ms = db
        .iter()
        .find(|f| f["label"] == "query_ms")
        .expect("query_ms");
    assert_eq!(
        query_ms["parsers"],
        serde_json::json!(["logfmt"]),
        "{answer}"
    );
    assert_eq!(query_ms["type"], "int");
    assert!(
        db.iter()
            .any(|f| f["label"] == "ok" && f["type"] == "boolean"),
        "{answer}"
    );
    // Plain text has no parsed field; a selection without records none.
    let (_, answer) = get(
        addr,
        "/loki/api/v1/detected_fields",
        &with(&[("query", r#"{service_name="nothing"}"#)]),
    );
    assert_eq!(answer, serde_json::json!({}));

    // A field's values, as its value picker asks (times in ns).
    let ns_range = [("start", start.to_string()), ("end", end.to_string())];
    let mut params = ns_range.to_vec();
    params.push(("query", pipeline.to_owned()));
    params.push(("limit", "1000".to_owned()));
    let (status, answer) = get(addr, "/loki/api/v1/detected_field/status/values", &params);
    assert_eq!(status, 200, "{answer}");
    let mut values: Vec<&str> = answer["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, ["200", "404", "500"], "{answer}");
    assert_eq!(answer["limit"], 1000);
    // The level filter's values.
    let (_, answer) = get(
        addr,
        "/loki/api/v1/detected_field/detected_level/values",
        &params,
    );
    assert_eq!(
        answer["values"],
        serde_json::json!(["error", "info"]),
        "{answer}"
    );

    // The patterns tab: each level's pattern of the plain-text lines,
    // counted per step.
    let (status, answer) = get(
        addr,
        "/loki/api/v1/patterns",
        &with(&[("query", r#"{service_name="web"}"#), ("step", "60s")]),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "success");
    let mut mined: Vec<(String, String, u64)> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let samples = p["samples"].as_array().unwrap();
            assert!(
                samples.iter().all(|s| s[0].is_i64() && s[1].is_u64()),
                "{p}"
            );
            let total = samples.iter().map(|s| s[1].as_u64().unwrap()).sum();
            (
                p["pattern"].as_str().unwrap().to_owned(),
                p["level"].as_str().unwrap().to_owned(),
                total,
            )
        })
        .collect();
    mined.sort();
    let web = |level: lode_engine::Level| {
        records
            .iter()
            .filter(|r| r.service == "web" && r.level == level)
            .count() as u64
    };
    let served = "served page <_> to a browser".to_owned();
    assert_eq!(
        mined,
        [
            (
                served.clone(),
                "error".to_owned(),
                web(lode_engine::Level::Error)
            ),
            (served, "info".to_owned(), web(lode_engine::Level::Info)),
        ]
    );

    // A field panel's count, grouped by an attribute (Loki's structured
    // metadata): one series per value.
    let (status, answer) = get(
        addr,
        "/loki/api/v1/query",
        &[
            (
                "query",
                r#"sum by (env) (count_over_time({service_name="api"} | env!="" [1h]))"#.to_owned(),
            ),
            ("time", end.to_string()),
        ],
    );
    assert_eq!(status, 200, "{answer}");
    let got: BTreeMap<String, f64> = answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["env"].as_str().unwrap_or("").to_owned(),
                s["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for r in records.iter().filter(|r| r.service == "api") {
        let env = r.attrs.iter().find(|(k, _)| k == "env").unwrap().1.clone();
        *want.entry(env).or_default() += 1.0;
    }
    assert_eq!(got, want, "{answer}");

    // Bad input is refused with Loki's error shape.
    let (status, answer) = get(
        addr,
        "/loki/api/v1/index/volume",
        &with(&[("aggregateBy", "streams")]),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errorType"], "bad_data");
}

/// Days since 1970-01-01 as a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
