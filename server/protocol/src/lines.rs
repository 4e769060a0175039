//! Log lines as files hold them: JSON lines, syslog, logfmt, a regex with
//! named groups, or `auto` (the layout that matches most of a sample:
//! log4j, Apache error log, syslog files, the loghub samples' layouts).
//!
//! A [`LineParser`] turns one line into a record, a continuation of the
//! previous record (when multi-line records are asked for), or a rejection
//! with its reason. A line without a usable timestamp takes the previous
//! record's (or `now` for the first) and is counted. Timestamps without a
//! year (syslog, Proxifier) take `now`'s year, or the year before when that
//! would put them more than a day ahead of `now`. Times without a zone are
//! UTC. Pure: `now` is passed in.

use chrono::NaiveDateTime;
use lode_codec::{Level, LogRecord, parse_rfc3339};
use regex::Regex;

use crate::json::{Shape, parse_record};
use crate::syslog;

/// How to read lines.
#[derive(Debug, Clone)]
pub enum Format {
    Jsonl(Shape),
    Syslog,
    Logfmt,
    /// A regex with named groups `ts`, `level`, `service`, `host`,
    /// `message`; other groups become attributes.
    Regex(Layout),
    /// Chosen from a sample with [`detect`].
    Auto,
}

/// A named regex layout.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
    regex: Regex,
}

impl Layout {
    pub fn new(name: &str, pattern: &str) -> Result<Layout, String> {
        let regex = Regex::new(pattern).map_err(|e| format!("regex: {e}"))?;
        if !regex.capture_names().flatten().any(|n| n == "message") {
            return Err("regex: a (?P<message>...) group is required".into());
        }
        Ok(Layout {
            name: name.to_owned(),
            regex,
        })
    }
}

/// The built-in layouts `auto` chooses among, besides JSON, syslog with a
/// priority, and logfmt.
const LAYOUTS: &[(&str, &str)] = &[
    (
        "apache-error",
        r"^\[(?P<ts>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}(?:\.\d+)? \d{4})\] \[(?:(?P<module>[\w-]+):)?(?P<level>[a-z]+\d?)\](?: \[pid (?P<pid>\d+)(?::tid \d+)?\])? (?P<message>.*)$",
    ),
    (
        "log4j",
        r"^(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+(?P<level>[A-Za-z]+)\s+(?:\[(?P<thread>[^\]]*)\]\s+)?(?P<service>[^\s:]+):(?: (?P<message>.*)|(?P<empty>))$",
    ),
    (
        "hdfs",
        r"^(?P<ts>\d{6} \d{6}) (?P<pid>\d+) (?P<level>[A-Z]+) (?P<service>[^\s:]+):(?: (?P<message>.*)|(?P<empty>))$",
    ),
    (
        "spark",
        r"^(?P<ts>\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}) (?P<level>[A-Z]+) (?P<service>[^\s:]+):(?: (?P<message>.*)|(?P<empty>))$",
    ),
    (
        "syslog-file",
        r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}) (?P<host>\S+) (?P<service>[^\[:]+?)(?:\[(?P<pid>\d+)\])?:(?: (?P<message>.*)|(?P<empty>))$",
    ),
    (
        "healthapp",
        r"^(?P<ts>\d{8}-\d{1,2}:\d{1,2}:\d{1,2}:\d{1,3})\|(?P<service>[^|]*)\|(?P<pid>[^|]*)\|(?P<message>.*)$",
    ),
    (
        "proxifier",
        r"^\[(?P<ts>\d{2}\.\d{2} \d{2}:\d{2}:\d{2})\] (?P<service>.+?) - (?P<message>.*)$",
    ),
];

/// The built-in layout called `name` (`log4j`, `apache-error`, ...).
pub fn layout(name: &str) -> Option<Layout> {
    LAYOUTS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(n, p)| Layout::new(n, p).ok())
}

/// Names of the layouts `auto` knows.
pub fn layout_names() -> impl Iterator<Item = &'static str> {
    LAYOUTS.iter().map(|(n, _)| *n)
}

impl Format {
    /// `jsonl`, `syslog`, `logfmt`, `auto`, `regex:PATTERN`, or a built-in
    /// layout's name.
    pub fn parse(text: &str, shape: Shape) -> Result<Format, String> {
        match text {
            "jsonl" | "json" => Ok(Format::Jsonl(shape)),
            "syslog" => Ok(Format::Syslog),
            "logfmt" => Ok(Format::Logfmt),
            "auto" => Ok(Format::Auto),
            other => match other.strip_prefix("regex:") {
                Some(pattern) => Layout::new("regex", pattern).map(Format::Regex),
                None => layout(other).map(Format::Regex).ok_or_else(|| {
                    format!(
                        "unknown format '{other}': expected jsonl, syslog, logfmt, auto, regex:PATTERN or one of {}",
                        layout_names().collect::<Vec<_>>().join(", ")
                    )
                }),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Format::Jsonl(_) => "jsonl".into(),
            Format::Syslog => "syslog".into(),
            Format::Logfmt => "logfmt".into(),
            Format::Regex(layout) => layout.name.clone(),
            Format::Auto => "auto".into(),
        }
    }
}

fn looks_like_logfmt(line: &str) -> bool {
    let pairs = logfmt_pairs(line);
    pairs.len() >= 2
        && pairs.iter().any(|(k, _)| {
            matches!(
                k.as_str(),
                "msg" | "message" | "level" | "lvl" | "ts" | "time"
            )
        })
}

fn looks_like_syslog(line: &str) -> bool {
    line.strip_prefix('<')
        .and_then(|rest| rest.find('>'))
        .is_some_and(|close| (1..=3).contains(&close))
}

/// The format most of `sample` is in: JSON, syslog with priorities,
/// logfmt, or the built-in layout matching the most lines. `None` when
/// nothing matches at least half of the non-empty lines.
pub fn detect(sample: &[&str], shape: &Shape) -> Option<Format> {
    let lines: Vec<&str> = sample
        .iter()
        .copied()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let mut candidates: Vec<(usize, Format)> = vec![
        (
            lines
                .iter()
                .filter(|l| l.trim_start().starts_with('{'))
                .count(),
            Format::Jsonl(shape.clone()),
        ),
        (
            lines.iter().filter(|l| looks_like_syslog(l)).count(),
            Format::Syslog,
        ),
        (
            lines.iter().filter(|l| looks_like_logfmt(l)).count(),
            Format::Logfmt,
        ),
    ];
    for (name, pattern) in LAYOUTS {
        if let Ok(layout) = Layout::new(name, pattern) {
            let hits = lines.iter().filter(|l| layout.regex.is_match(l)).count();
            candidates.push((hits, Format::Regex(layout)));
        }
    }
    // The most hits wins; on a tie the earlier (more specific) candidate.
    let best = candidates
        .into_iter()
        .enumerate()
        .max_by(|(ia, (a, _)), (ib, (b, _))| a.cmp(b).then(ib.cmp(ia)))
        .map(|(_, c)| c)?;
    (best.0 * 2 >= lines.len()).then_some(best.1)
}

/// What became of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Record(LogRecord),
    /// The line continues the previous record (multi-line mode).
    Continuation(String),
    Rejected(String),
    Empty,
}

/// A line read without the stream's state; see [`LineParser::parse_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    Record { record: LogRecord, has_ts: bool },
    NoMatch(String),
    Empty,
}

/// Options of a [`LineParser`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A strftime pattern for the timestamps (`%Y-%m-%d %H:%M:%S%.f`).
    pub ts_format: Option<String>,
    /// The service of records whose lines name none.
    pub service: Option<String>,
    /// Lines that do not start a record continue the previous one.
    pub multiline: bool,
}

/// Parses lines of one stream (timestamps carry over between lines).
#[derive(Debug, Clone)]
pub struct LineParser {
    format: Format,
    options: Options,
    now: i64,
    last_ts: Option<i64>,
    /// Records that took the previous record's timestamp (or `now`).
    pub defaulted_ts: u64,
}

impl LineParser {
    /// `format` must not be `Auto`: detect it first.
    pub fn new(format: Format, options: Options, now: i64) -> LineParser {
        LineParser {
            format,
            options,
            now,
            last_ts: None,
            defaulted_ts: 0,
        }
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Parses one line with this stream's state: a carried timestamp, the
    /// default service, continuations.
    pub fn parse(&mut self, line: &str) -> Line {
        let raw = self.parse_raw(line);
        self.settle(raw, line)
    }

    /// The part of [`LineParser::parse`] that needs no state of the
    /// stream, so lines can be read by several threads and settled in
    /// order after.
    pub fn parse_raw(&self, line: &str) -> Raw {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            return Raw::Empty;
        }
        let parsed = match &self.format {
            Format::Jsonl(shape) => {
                parse_record(line, shape, self.now).map(|(record, p)| (record, !p.defaulted_ts))
            }
            Format::Syslog => Ok(syslog::parse_with_ts(line.as_bytes(), self.now)),
            Format::Logfmt => self.logfmt(line),
            Format::Regex(layout) => self.regex(layout, line),
            Format::Auto => Err("format 'auto' must be detected first".into()),
        };
        match parsed {
            Ok((record, has_ts)) => Raw::Record { record, has_ts },
            Err(reason) => Raw::NoMatch(reason),
        }
    }

    /// Applies the stream's state to a line read by [`LineParser::parse_raw`].
    pub fn settle(&mut self, raw: Raw, line: &str) -> Line {
        match raw {
            Raw::Empty => Line::Empty,
            Raw::NoMatch(_) if self.options.multiline => {
                Line::Continuation(line.strip_suffix('\r').unwrap_or(line).to_owned())
            }
            Raw::NoMatch(reason) => Line::Rejected(reason),
            Raw::Record { mut record, has_ts } => {
                if !has_ts {
                    self.defaulted_ts += 1;
                    record.ts = self.last_ts.unwrap_or(self.now);
                }
                if record.service.is_empty()
                    && let Some(service) = &self.options.service
                {
                    record.service.clone_from(service);
                }
                self.last_ts = Some(record.ts);
                Line::Record(record)
            }
        }
    }

    fn ts(&self, text: &str) -> Option<i64> {
        match &self.options.ts_format {
            Some(pattern) => parse_with(text, pattern, self.now),
            None => parse_ts(text, self.now),
        }
    }

    fn regex(&self, layout: &Layout, line: &str) -> Result<(LogRecord, bool), String> {
        let caps = layout
            .regex
            .captures(line)
            .ok_or_else(|| format!("does not match the {} layout", layout.name))?;
        let mut record = LogRecord::default();
        let mut has_ts = false;
        for name in layout.regex.capture_names().flatten() {
            let Some(value) = caps.name(name).map(|m| m.as_str()) else {
                continue;
            };
            match name {
                "ts" => match self.ts(value) {
                    Some(ts) => (record.ts, has_ts) = (ts, true),
                    None => record.attrs.push(("ts".into(), value.to_owned())),
                },
                "level" => record.level = Level::parse(value),
                "service" => record.service = value.to_owned(),
                "host" => record.host = value.to_owned(),
                "message" => record.message = value.to_owned(),
                "empty" => {}
                other => record.attrs.push((other.to_owned(), value.to_owned())),
            }
        }
        Ok((record, has_ts))
    }

    fn logfmt(&self, line: &str) -> Result<(LogRecord, bool), String> {
        let pairs = logfmt_pairs(line);
        if pairs.is_empty() {
            return Err("no key=value pairs".into());
        }
        let mut record = LogRecord::default();
        let mut has_ts = false;
        for (key, value) in pairs {
            match key.as_str() {
                "ts" | "time" | "timestamp" => match self.ts(&value) {
                    Some(ts) => (record.ts, has_ts) = (ts, true),
                    None => return Err(format!("ts '{value}' is not a time")),
                },
                "level" | "lvl" | "severity" => record.level = Level::parse(&value),
                "msg" | "message" => record.message = value,
                "service" | "app" | "component" => record.service = value,
                "host" | "hostname" => record.host = value,
                _ => record.attrs.push((key, value)),
            }
        }
        Ok((record, has_ts))
    }
}

/// `key=value key2="quoted \" value"` pairs, in order; text that is not a
/// pair is skipped.
pub fn logfmt_pairs(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let key_end = rest.find(['=', ' ']).unwrap_or(rest.len());
        let (key, after) = rest.split_at(key_end);
        let Some(after) = after.strip_prefix('=') else {
            rest = after.trim_start();
            continue;
        };
        let (value, consumed) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut end = quoted.len();
                let mut chars = quoted.char_indices();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                value.push(e);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, 1 + end)
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (after.get(..end).unwrap_or_default().to_owned(), end)
            }
        };
        if !key.is_empty() {
            pairs.push((key.to_owned(), value));
        }
        rest = after.get(consumed..).unwrap_or_default().trim_start();
    }
    pairs
}

/// strftime patterns tried, in order, on timestamps of unknown layout.
const TS_PATTERNS: &[&str] = &[
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%a %b %d %H:%M:%S%.f %Y",
    "%y%m%d %H%M%S",
    "%y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M:%S%.f",
    "%Y%m%d-%H:%M:%S:%3f",
    "%d/%b/%Y:%H:%M:%S",
];

/// Year-less patterns: the year is inferred from `now`.
const TS_PATTERNS_NO_YEAR: &[&str] = &["%b %d %H:%M:%S", "%m.%d %H:%M:%S"];

/// A timestamp in any of the common layouts, or epoch seconds, ms, µs or ns
/// by its digit count; `None` when none fits.
pub fn parse_ts(text: &str, now: i64) -> Option<i64> {
    let text = text.trim();
    if let Some(ts) = parse_rfc3339(text) {
        return Some(ts);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = text.parse().ok()?;
        return match text.len() {
            9 | 10 => n.checked_mul(1_000_000_000),
            12 | 13 => n.checked_mul(1_000_000),
            15 | 16 => n.checked_mul(1_000),
            18 | 19 => Some(n),
            _ => None,
        };
    }
    let normal = text.replacen(',', ".", 1);
    if let Some(ts) = parse_rfc3339(&normal) {
        return Some(ts);
    }
    TS_PATTERNS
        .iter()
        .find_map(|p| naive(&normal, p))
        .or_else(|| {
            TS_PATTERNS_NO_YEAR
                .iter()
                .find_map(|p| without_year(text, p, now))
        })
}

/// `text` read with the strftime `pattern` (UTC unless it has a zone).
pub fn parse_with(text: &str, pattern: &str, now: i64) -> Option<i64> {
    let text = text.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_str(text, pattern) {
        return dt.timestamp_nanos_opt();
    }
    naive(text, pattern).or_else(|| without_year(text, pattern, now))
}

fn naive(text: &str, pattern: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text, pattern)
        .ok()?
        .and_utc()
        .timestamp_nanos_opt()
}

fn without_year(text: &str, pattern: &str, now: i64) -> Option<i64> {
    let year: i64 = lode_codec::format_rfc3339(now).get(..4)?.parse().ok()?;
    let at = |year: i64| naive(&format!("{year} {text}"), &format!("%Y {pattern}"));
    let ts = at(year)?;
    if ts > now.saturating_add(86_400_000_000_000) {
        return at(year - 1);
    }
    Some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

    fn ts(text: &str) -> i64 {
        parse_rfc3339(text).unwrap()
    }

    #[test]
    fn common_timestamps() {
        let cases = [
            ("2015-10-18 18:01:47,978", "2015-10-18T18:01:47.978Z"),
            ("Sun Dec 04 04:47:44 2005", "2005-12-04T04:47:44Z"),
            ("081109 203615", "2008-11-09T20:36:15Z"),
            ("17/06/09 20:10:40", "2017-06-09T20:10:40Z"),
            ("20171223-22:15:29:606", "2017-12-23T22:15:29.606Z"),
            ("Jun 14 15:16:01", "2025-06-14T15:16:01Z"),
            ("10.30 16:49:06", "2025-10-30T16:49:06Z"),
            ("1700000000", "2023-11-14T22:13:20Z"),
            ("1700000000123", "2023-11-14T22:13:20.123Z"),
            ("2026-01-01T10:00:00+02:00", "2026-01-01T08:00:00Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_ts(text, NOW), Some(ts(expected)), "{text}");
        }
        assert_eq!(parse_ts("yesterday", NOW), None);
        assert_eq!(
            parse_with("01/02/2026 03:04", "%d/%m/%Y %H:%M", NOW),
            Some(ts("2026-02-01T03:04:00Z"))
        );
    }

    #[test]
    fn layouts_and_detection() {
        let hadoop = "2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created MRAppMaster";
        let format = detect(&[hadoop, hadoop], &Shape::default()).unwrap();
        assert_eq!(format.name(), "log4j");
        let mut parser = LineParser::new(format, Options::default(), NOW);
        let Line::Record(r) = parser.parse(hadoop) else {
            panic!("no record");
        };
        assert_eq!(r.level, Level::Info);
        assert_eq!(r.service, "org.apache.hadoop.mapreduce.v2.app.MRAppMaster");
        assert_eq!(r.message, "Created MRAppMaster");
        assert!(r.attrs.contains(&("thread".into(), "main".into())));
        assert!(matches!(
            parser.parse("\tat Foo.bar(Foo.java:1)"),
            Line::Rejected(_)
        ));

        let linux = "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname=";
        let format = detect(&[linux], &Shape::default()).unwrap();
        assert_eq!(format.name(), "syslog-file");
        let mut parser = LineParser::new(format, Options::default(), NOW);
        let Line::Record(r) = parser.parse(linux) else {
            panic!("no record");
        };
        assert_eq!(
            (r.host.as_str(), r.service.as_str()),
            ("combo", "sshd(pam_unix)")
        );
        assert_eq!(r.message, "authentication failure; logname=");
        assert_eq!(
            detect(&["{\"message\":\"x\"}"], &Shape::default())
                .unwrap()
                .name(),
            "jsonl"
        );
        assert_eq!(
            detect(
                &["ts=2026-01-01T00:00:00Z level=warn msg=\"disk full\" dev=sda"],
                &Shape::default()
            )
            .unwrap()
            .name(),
            "logfmt"
        );
        assert!(detect(&["just words", "more words"], &Shape::default()).is_none());
    }

    #[test]
    fn multiline_and_carried_timestamps() {
        let format = Format::parse("log4j", Shape::default()).unwrap();
        let options = Options {
            multiline: true,
            service: Some("fallback".into()),
            ..Options::default()
        };
        let mut parser = LineParser::new(format, options, NOW);
        assert!(matches!(
            parser.parse("2015-10-18 18:01:47,978 ERROR [main] a.B: boom"),
            Line::Record(_)
        ));
        assert_eq!(
            parser.parse("\tat a.B.c(B.java:10)"),
            Line::Continuation("\tat a.B.c(B.java:10)".into())
        );
        let regex =
            Format::parse(r"regex:^(?P<level>\w+) (?P<message>.*)$", Shape::default()).unwrap();
        let mut parser = LineParser::new(regex, Options::default(), NOW);
        let Line::Record(r) = parser.parse("WARNING low disk") else {
            panic!("no record");
        };
        assert_eq!((r.level, r.ts, r.service.as_str()), (Level::Warn, NOW, ""));
        assert_eq!(parser.defaulted_ts, 1);
        assert!(Format::parse("regex:(", Shape::default()).is_err());
        assert!(Format::parse("regex:^(?P<x>.*)$", Shape::default()).is_err());
        assert!(
            Format::parse("cobol", Shape::default())
                .unwrap_err()
                .contains("log4j")
        );
    }

    #[test]
    fn syslog_lines_keep_their_own_timestamps() {
        let mut parser = LineParser::new(Format::Syslog, Options::default(), NOW);
        let Line::Record(r) = parser.parse("<34>Oct 11 22:14:15 host su: failed") else {
            panic!("no record");
        };
        assert_eq!(r.ts, ts("2025-10-11T22:14:15Z"));
        let Line::Record(r) = parser.parse("<34>no time here") else {
            panic!("no record");
        };
        assert_eq!((r.ts, parser.defaulted_ts), (ts("2025-10-11T22:14:15Z"), 1));
    }

    #[test]
    fn logfmt_pairs_with_quotes() {
        let mut parser = LineParser::new(Format::Logfmt, Options::default(), NOW);
        let Line::Record(r) = parser.parse(
            r#"time=2026-01-01T00:00:01Z lvl=error msg="db \"primary\" down" app=api retry=3"#,
        ) else {
            panic!("no record");
        };
        assert_eq!(r.ts, NOW + 1_000_000_000);
        assert_eq!(r.level, Level::Error);
        assert_eq!(r.message, "db \"primary\" down");
        assert_eq!(r.service, "api");
        assert_eq!(r.attrs, vec![("retry".into(), "3".into())]);
    }

    proptest! {
        #[test]
        fn any_line_in_any_format_is_an_outcome(line in ".{0,120}", pick in 0usize..4) {
            let format = match pick {
                0 => Format::Syslog,
                1 => Format::Logfmt,
                2 => Format::Jsonl(Shape::default()),
                _ => Format::parse("hdfs", Shape::default()).unwrap(),
            };
            let mut parser = LineParser::new(format, Options::default(), NOW);
            let _ = parser.parse(&line);
            let _ = parse_ts(&line, NOW);
            let _ = detect(&[line.as_str()], &Shape::default());
        }
    }
}
