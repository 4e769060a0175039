//! Running parsed LogQL over a [`Source`] of records: the pipeline on one
//! record, the candidates query, log selection by time windows, and
//! metric queries at each step.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use lode_codec::{Fields, Level, LogRecord};
use regex::Regex;
use serde_json::Value;

use super::{
    AggOp, BinOp, Binary, Conversion, Expr, Group, Grouping, LabelFilter, LabelFormat, LineOp,
    LogQuery, MatchOp, Matcher, Matching, NumOp, PathStep, PatternPart, RangeFn, Stage,
};

/// A set of labels, by name.
pub type Labels = BTreeMap<String, String>;

/// Most points a query answers per series (Loki's limit too).
pub const MAX_POINTS: usize = 11_000;

/// Most buckets one histogram of the fast path asks for.
const MAX_BUCKETS: usize = 100_000;

/// Where records come from: lode's index, or a test's brute force.
pub trait Source {
    type Error;
    /// Visits the records that lode's query `query` matches with `since
    /// <= ts < until`, newest first, until `visit` answers false.
    fn scan(
        &mut self,
        query: &str,
        since: i64,
        until: i64,
        visit: &mut dyn FnMut(&LogRecord) -> bool,
    ) -> Result<(), Self::Error>;
    /// Visits the same records as `scan`, with their seqs, read in place
    /// and in no particular order: for metric queries, which look at each
    /// once and keep little of it.
    fn visit(
        &mut self,
        query: &str,
        since: i64,
        until: i64,
        visit: &mut dyn FnMut(u64, &dyn Fields) -> bool,
    ) -> Result<(), Self::Error>;
    /// Matches of `query` per bucket `[origin + i * width, origin + (i +
    /// 1) * width)`, for `i < buckets`.
    fn histogram(
        &mut self,
        query: &str,
        origin: i64,
        width: i64,
        buckets: usize,
    ) -> Result<Vec<u64>, Self::Error>;
    /// The levels (as lode's index holds them, lowercased) among the
    /// matches of `query` with `since <= ts < until`.
    fn levels(&mut self, query: &str, since: i64, until: i64) -> Result<Vec<String>, Self::Error>;
}

/// Why an evaluation failed: the query asks too much, or the source
/// failed.
#[derive(Debug)]
pub enum EvalError<E> {
    Query(String),
    Source(E),
}

fn too_much<E>(message: impl Into<String>) -> EvalError<E> {
    EvalError::Query(message.into())
}

/// The label names of lode's fields, with their aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldLabel {
    Service,
    Host,
    Level,
}

fn field_label(name: &str) -> Option<FieldLabel> {
    match name {
        "service_name" | "service" | "app" | "job" => Some(FieldLabel::Service),
        "host" | "hostname" | "instance" => Some(FieldLabel::Host),
        "level" | "detected_level" | "severity" => Some(FieldLabel::Level),
        _ => None,
    }
}

fn field_value<R: Fields + ?Sized>(record: &R, field: FieldLabel) -> &str {
    match field {
        FieldLabel::Service => record.service(),
        FieldLabel::Host => record.host(),
        FieldLabel::Level => record.level_name(),
    }
}

/// A record's stream labels: `service_name`, `host` and `level`, those it
/// has.
pub fn stream_labels<R: Fields + ?Sized>(record: &R) -> Labels {
    let mut labels = Labels::new();
    for (name, value) in [
        ("service_name", record.service()),
        ("host", record.host()),
        ("level", record.level_name()),
    ] {
        if !value.is_empty() {
            labels.insert(name.to_owned(), value.to_owned());
        }
    }
    labels
}

/// A label's value for a record and what its pipeline extracted so far
/// (`""` when it has none), and whether it compares ignoring case (a
/// field's).
fn label_value<'a, R: Fields + ?Sized>(
    record: &'a R,
    extracted: &'a Labels,
    name: &str,
) -> (&'a str, bool) {
    if let Some(value) = extracted.get(name) {
        return (value, false);
    }
    if let Some(field) = field_label(name) {
        return (field_value(record, field), true);
    }
    (record.attr(name).unwrap_or_default(), true)
}

impl Matcher {
    /// Whether `value` passes; `fold` compares `=` and `!=` ignoring case.
    pub fn matches(&self, value: &str, fold: bool) -> bool {
        let equal = || {
            if fold {
                value
                    .chars()
                    .flat_map(char::to_lowercase)
                    .eq(self.value.chars().flat_map(char::to_lowercase))
            } else {
                value == self.value
            }
        };
        let regex = || self.regex.as_ref().is_some_and(|r| r.is_match(value));
        match self.op {
            MatchOp::Eq => equal(),
            MatchOp::Ne => !equal(),
            MatchOp::Re => regex(),
            MatchOp::Nre => !regex(),
        }
    }
}

/// Loki's rule for extracted label names: anything but letters, digits
/// and `_` becomes `_`, and a leading digit gets a `_` before it.
pub(super) fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn flatten_json(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    sanitize(key)
                } else {
                    format!("{prefix}_{}", sanitize(key))
                };
                flatten_json(&name, inner, out);
            }
        }
        // Loki skips arrays.
        Value::Array(_) => {}
        Value::String(text) => out.push((prefix.to_owned(), text.clone())),
        Value::Null => out.push((prefix.to_owned(), String::new())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

const ERROR_LABEL: &str = "__error__";

/// Adds parsed pairs to `extracted`; a name the record's stream labels
/// already hold gets `_extracted` after it, as in Loki.
fn extract(stream: &Labels, pairs: Vec<(String, String)>, extracted: &mut Labels) {
    for (name, value) in pairs {
        if name.is_empty() {
            continue;
        }
        let name = if stream.contains_key(&name) {
            format!("{name}_extracted")
        } else {
            name
        };
        extracted.insert(name, value);
    }
}

/// Running totals of a sequence: the sum of its items `from..to` in one
/// subtraction.
struct Prefix(Vec<u64>);

impl Prefix {
    fn new(values: impl IntoIterator<Item = u64>) -> Prefix {
        let mut totals = vec![0];
        let mut total = 0u64;
        for v in values {
            total = total.saturating_add(v);
            totals.push(total);
        }
        Prefix(totals)
    }

    fn sum(&self, from: usize, to: usize) -> u64 {
        let at = |i: usize| self.0.get(i).or(self.0.last()).copied().unwrap_or(0);
        at(to).saturating_sub(at(from))
    }
}

fn compare(op: NumOp, a: f64, b: f64) -> bool {
    match op {
        NumOp::Eq => a == b,
        NumOp::Ne => a != b,
        NumOp::Gt => a > b,
        NumOp::Ge => a >= b,
        NumOp::Lt => a < b,
        NumOp::Le => a <= b,
    }
}

/// `text` as a phrase of lode's query language, if it can be one.
fn quoted(text: &str) -> Option<String> {
    (!text.contains('"') && !text.trim().is_empty()).then(|| format!("\"{text}\""))
}

/// The field filter lode's language has for a selector matcher, and
/// whether it selects exactly what the matcher does.
fn field_filter(matcher: &Matcher) -> Option<String> {
    let negate = match matcher.op {
        MatchOp::Eq => false,
        MatchOp::Ne => true,
        MatchOp::Re | MatchOp::Nre => return None,
    };
    let filter = match field_label(&matcher.name) {
        Some(FieldLabel::Level) => {
            let value = &matcher.value;
            let canonical = Level::parse(value).as_str().to_lowercase() == value.to_lowercase();
            (canonical && !value.is_empty() && value.chars().all(char::is_alphanumeric))
                .then(|| format!("level:{value}"))?
        }
        Some(FieldLabel::Service) => format!("service:{}", quoted(&matcher.value)?),
        Some(FieldLabel::Host) => format!("host:{}", quoted(&matcher.value)?),
        None => format!("attrs.{}:{}", matcher.name, quoted(&matcher.value)?),
    };
    Some(if negate { format!("-{filter}") } else { filter })
}

/// A run of `text` lowercased, if it stays one token of the index:
/// lowercasing can make more than letters and digits (`İ` gives `i̇`,
/// with a combining dot), and such a run narrows nothing.
fn lowered_run(text: &str, (s, e): (usize, usize)) -> Option<String> {
    let run = lower(text.get(s..e)?);
    run.chars().all(char::is_alphanumeric).then_some(run)
}

/// The runs of letters and digits in `text`, as byte ranges.
fn runs(text: &str) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (c.is_alphanumeric() && i < text.len(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// The words a record's message must hold if it holds `text`, in lode's
/// query language: each run of letters and digits in `text` is a whole
/// token when `text` goes on past both its ends, and the start of one
/// (`run*`) when it ends `text`, unless it is digits only: the index
/// settles a prefix of digits by reading every record the rest leaves,
/// which the query's own check does anyway.
fn substring_words(text: &str) -> Vec<String> {
    runs(text)
        .into_iter()
        .filter_map(|(s, e)| {
            let run = lowered_run(text, (s, e))?;
            match (s == 0, e == text.len()) {
                (false, false) => Some(run),
                (false, true) if !only_digits(&run) => Some(format!("{run}*")),
                _ => None,
            }
        })
        .collect()
}

fn only_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

/// The run of letters and digits that starts `text`, as the end of a
/// token (`*run`), or as a part of one (`*run*`) when it is all of
/// `text`; if it has at least [`MIN_PART`] characters. The index finds
/// a part that holds a letter in a list of its terms that hold one (2.5
/// ms for a part no term holds at 1M records), so a filter whose other
/// words give nothing asks for it: at 10M records the newest 1,000 lines of
/// `{service_name="hdfs"} |= "xyzzy"` took 3.7-4.2 s and take 12-15
/// ms, those of `|= "block"` over a range whose last minutes are empty
/// 29-45 → 52-60 ms. A part of digits only may lie in any long number,
/// which the index keeps only as a bucket: it narrows nothing.
fn substring_part(text: &str) -> Option<String> {
    let &(s, e) = runs(text).first().filter(|&&(s, _)| s == 0)?;
    let run = lowered_run(text, (s, e))?;
    (run.chars().count() >= MIN_PART && !only_digits(&run)).then(|| match e == text.len() {
        true => format!("*{run}*"),
        false => format!("*{run}"),
    })
}

/// The fewest characters a token's start, end or part must have to
/// narrow a substring's candidates.
const MIN_PART: usize = 3;

fn lower(token: &str) -> String {
    token.chars().flat_map(char::to_lowercase).collect()
}

/// Most terms a candidates query holds.
const MAX_TERMS: usize = 24;

impl LogQuery {
    /// A query in lode's language whose matches include every record this
    /// one selects; `*` when nothing narrows it.
    pub fn candidates(&self) -> String {
        let mut terms: Vec<String> = self.selector.iter().filter_map(field_filter).collect();
        for stage in &self.stages {
            match stage {
                Stage::Line {
                    op: LineOp::Contains,
                    text,
                    or,
                    ..
                } if or.is_empty() => {
                    let words = substring_words(text);
                    if words.is_empty() {
                        terms.extend(substring_part(text));
                    } else {
                        terms.extend(words);
                    }
                }
                // Filters after a stage that changes the line look at
                // another line than the record's.
                Stage::LineFormat(_) | Stage::Decolorize | Stage::Unpack => break,
                // A parser changes no line; filters before it still hold.
                Stage::Json(_)
                | Stage::Unwrap(_)
                | Stage::Logfmt
                | Stage::LineIp { .. }
                | Stage::Regexp(_)
                | Stage::Pattern(_)
                | Stage::Drop(_)
                | Stage::Keep(_)
                | Stage::LabelFormat(_)
                | Stage::Label(_)
                | Stage::Line { .. } => {}
            }
        }
        terms.dedup();
        terms.truncate(MAX_TERMS);
        if terms.is_empty() {
            "*".to_owned()
        } else {
            terms.join(" AND ")
        }
    }

    /// Whether the candidates are exactly the records selected, with the
    /// labels of their streams: no record needs checking.
    pub fn exact(&self) -> bool {
        self.selector.iter().all(|m| field_filter(m).is_some())
            && self
                .stages
                .iter()
                .all(|stage| matches!(stage, Stage::Drop(picks) if drops_errors_only(picks)))
    }

    /// Whether `record` passes, and its labels then: its stream's and
    /// those the pipeline extracted.
    pub fn process<R: Fields + ?Sized>(&self, record: &R) -> Option<Labels> {
        self.sample(record).map(|s| s.labels)
    }

    /// Whether `record` passes, and what the pipeline made of it.
    pub fn sample<R: Fields + ?Sized>(&self, record: &R) -> Option<Sampled> {
        if !self.selects(record) {
            return None;
        }
        let mut run = Run {
            stream: stream_labels(record),
            extracted: Labels::new(),
            dropped: Vec::new(),
            kept: None,
            line: Cow::Borrowed(record.message()),
            value: None,
        };
        for stage in &self.stages {
            if !run.stage(stage, record) {
                return None;
            }
        }
        let Run {
            mut stream,
            extracted,
            dropped,
            kept,
            line,
            value,
        } = run;
        stream.retain(|name, _| {
            !dropped.contains(name) && kept.as_ref().is_none_or(|kept| kept.contains(name))
        });
        stream.extend(extracted);
        Some(Sampled {
            labels: stream,
            value,
            line: match line {
                Cow::Owned(line) => Some(line),
                Cow::Borrowed(_) => None,
            },
        })
    }
}

/// What a log pipeline made of a line it passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// Its stream's labels and those the pipeline extracted.
    pub labels: Labels,
    /// What `| unwrap` took (`None` without one, or when its text is no
    /// number of its kind: the line is then marked `__error__`).
    pub value: Option<f64>,
    /// The line, when a stage changed it (`line_format`, `decolorize`,
    /// `unpack`).
    pub line: Option<String>,
}

/// A line going through a pipeline.
struct Run<'a> {
    /// The record's stream labels.
    stream: Labels,
    /// Labels the stages made.
    extracted: Labels,
    /// Stream labels dropped (or renamed) since.
    dropped: Vec<String>,
    /// `| keep`'s names, the last one's.
    kept: Option<Vec<String>>,
    line: Cow<'a, str>,
    value: Option<f64>,
}

static ANSI: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // The escapes Loki's decolorize takes out (acarl005/stripansi's).
    Regex::new(
        r"[\x1b\x{9b}][\[\]()#;?]*(?:(?:(?:[a-zA-Z\d]*(?:;[a-zA-Z\d]*)*)?\x07)|(?:(?:\d{1,4}(?:;\d{0,4})*)?[\dA-PRZcf-ntqry=><~]))",
    )
    .ok()
});

impl<'a> Run<'a> {
    /// Runs one stage; false when the line is filtered out.
    fn stage<R: Fields + ?Sized>(&mut self, stage: &Stage, record: &'a R) -> bool {
        match stage {
            Stage::Line {
                op,
                text,
                regex,
                or,
            } => return line_passes(*op, (text, regex), or, &self.line),
            Stage::LineIp { negate, range } => return range.found_in(&self.line) != *negate,
            Stage::Json(fields) => self.json(fields),
            Stage::Logfmt => {
                let pairs = lode_protocol::lines::logfmt_pairs(&self.line)
                    .into_iter()
                    .map(|(k, v)| (sanitize(&k), v))
                    .collect();
                self.extract(pairs);
            }
            Stage::Regexp(regex) => {
                let pairs = regex.captures(&self.line).map(|found| {
                    regex
                        .capture_names()
                        .flatten()
                        .filter_map(|name| {
                            Some((name.to_owned(), found.name(name)?.as_str().to_owned()))
                        })
                        .collect()
                });
                self.extract(pairs.unwrap_or_default());
            }
            Stage::Pattern(parts) => {
                let pairs = pattern_captures(parts, &self.line);
                self.extract(pairs);
            }
            Stage::Unpack => self.unpack(),
            Stage::Label(filter) => return self.label_passes(record, filter),
            Stage::Drop(picks) => {
                for pick in picks {
                    let (value, fold) = self.value_of(record, &pick.name);
                    if pick.matcher.as_ref().is_none_or(|m| m.matches(value, fold)) {
                        self.extracted.remove(&pick.name);
                        self.dropped.push(pick.name.clone());
                    }
                }
            }
            Stage::Keep(picks) => {
                let kept: Vec<String> = picks
                    .iter()
                    .filter(|pick| {
                        let (value, fold) = self.value_of(record, &pick.name);
                        !value.is_empty()
                            && pick.matcher.as_ref().is_none_or(|m| m.matches(value, fold))
                    })
                    .map(|pick| pick.name.clone())
                    .collect();
                self.extracted
                    .retain(|name, _| kept.contains(name) || name == ERROR_LABEL);
                self.kept = Some(kept);
            }
            Stage::Decolorize => {
                if let Some(ansi) = ANSI.as_ref()
                    && let Cow::Owned(clean) = ansi.replace_all(&self.line, "")
                {
                    self.line = Cow::Owned(clean);
                }
            }
            Stage::LineFormat(template) => match self.render(template, record) {
                Ok(line) => self.line = Cow::Owned(line),
                Err(_) => self.error("TemplateFormatErr"),
            },
            Stage::LabelFormat(formats) => self.label_format(formats, record),
            Stage::Unwrap(unwrap) => {
                let (text, _) = self.value_of(record, &unwrap.label);
                self.value = unwrapped(unwrap.conversion, text);
                if self.value.is_none() {
                    self.error("SampleExtractionErr");
                }
                // The value, not a label, of the series.
                self.extracted.remove(&unwrap.label);
                self.dropped.push(unwrap.label.clone());
            }
        }
        true
    }

    /// A label's current value, as `label_value` reads it.
    /// (A label `| keep` left out, or `| drop` took, has none, until a
    /// later stage sets it again.)
    fn value_of<'r, R: Fields + ?Sized>(&'r self, record: &'r R, name: &str) -> (&'r str, bool) {
        let gone = self.dropped.iter().any(|d| d == name)
            || self
                .kept
                .as_ref()
                .is_some_and(|kept| !kept.iter().any(|k| k == name));
        if gone && !self.extracted.contains_key(name) {
            return ("", false);
        }
        label_value(record, &self.extracted, name)
    }

    fn error(&mut self, kind: &str) {
        self.extracted
            .insert(ERROR_LABEL.to_owned(), kind.to_owned());
    }

    fn extract(&mut self, pairs: Vec<(String, String)>) {
        extract(&self.stream, pairs, &mut self.extracted);
    }

    fn json(&mut self, fields: &[super::JsonField]) {
        let parsed = match serde_json::from_str::<Value>(&self.line) {
            Ok(value @ Value::Object(_)) => value,
            _ => return self.error("JSONParserErr"),
        };
        if fields.is_empty() {
            let mut pairs = Vec::new();
            flatten_json("", &parsed, &mut pairs);
            return self.extract(pairs);
        }
        for field in fields {
            let found = field.path.iter().try_fold(&parsed, |v, step| match step {
                PathStep::Key(key) => v.get(key),
                PathStep::Index(i) => v.get(i),
            });
            let text = match found {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            self.extract(vec![(field.label.clone(), text)]);
        }
    }

    /// Loki's `unpack`: string fields of a JSON object as labels, its
    /// `_entry` as the line.
    fn unpack(&mut self) {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&self.line) else {
            return self.error("JSONParserErr");
        };
        let mut pairs = Vec::new();
        let mut entry = None;
        for (key, value) in map {
            if let Value::String(text) = value {
                if key == "_entry" {
                    entry = Some(text);
                } else {
                    pairs.push((sanitize(&key), text));
                }
            }
        }
        self.extract(pairs);
        if let Some(entry) = entry {
            self.line = Cow::Owned(entry);
        }
    }

    /// Every label the line has now, for a template.
    fn render<R: Fields + ?Sized>(
        &self,
        template: &super::template::Template,
        record: &R,
    ) -> Result<String, String> {
        let label = |name: &str| self.value_of(record, name).0.to_owned();
        template.render(&super::template::Data {
            label: &label,
            line: &self.line,
            ts: record.ts(),
        })
    }

    fn label_format<R: Fields + ?Sized>(&mut self, formats: &[LabelFormat], record: &R) {
        let mut set = Vec::new();
        for format in formats {
            match format {
                LabelFormat::Rename { to, from } => {
                    // Renaming a label the line does not have does nothing.
                    let (value, _) = self.value_of(record, from);
                    if !value.is_empty() {
                        set.push((to.clone(), value.to_owned(), Some(from.clone())));
                    }
                }
                LabelFormat::Template { to, template } => match self.render(template, record) {
                    Ok(value) => set.push((to.clone(), value, None)),
                    Err(_) => self.error("TemplateFormatErr"),
                },
            }
        }
        for (to, value, from) in set {
            if let Some(from) = from.filter(|f| *f != to) {
                self.extracted.remove(&from);
                self.dropped.push(from);
            }
            self.dropped.retain(|d| *d != to);
            self.extracted.insert(to, value);
        }
    }
}

/// A `| pattern`'s captures in `line`, as Loki's pattern parser takes
/// them: a leading literal must start the line; each capture runs to the
/// first occurrence of the literal after it (to the end of the line when
/// that is missing, and the captures after it are not made).
fn pattern_captures(parts: &[PatternPart], line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if line.is_empty() {
        return out;
    }
    let mut rest = line;
    let mut parts = parts;
    if let Some((PatternPart::Literal(first), after)) = parts.split_first() {
        let Some(stripped) = rest.strip_prefix(first.as_str()) else {
            return out;
        };
        rest = stripped;
        parts = after;
    }
    while let Some((PatternPart::Capture(name), after)) = parts.split_first() {
        let Some((PatternPart::Literal(literal), more)) = after.split_first() else {
            if let Some(name) = name {
                out.push((name.clone(), rest.to_owned()));
            }
            break;
        };
        let Some(at) = rest.find(literal.as_str()) else {
            if let Some(name) = name {
                out.push((name.clone(), rest.to_owned()));
            }
            break;
        };
        if let Some(name) = name {
            out.push((name.clone(), rest[..at].to_owned()));
        }
        rest = &rest[at + literal.len()..];
        parts = more;
    }
    out
}

/// Whether `| drop` names only error labels (which a pipeline without
/// parsers never sets).
fn drops_errors_only(picks: &[super::LabelPick]) -> bool {
    picks.iter().all(|p| p.name.starts_with("__error"))
}

/// Whether a line passes a line filter: `first` or one of `or` found
/// in it (none, for a negative filter).
fn line_passes(
    op: LineOp,
    first: (&String, &Option<regex::Regex>),
    or: &[(String, Option<regex::Regex>)],
    line: &str,
) -> bool {
    let found = |text: &String, regex: &Option<regex::Regex>| match op {
        LineOp::Contains | LineOp::NotContains => line.contains(text.as_str()),
        _ => regex.as_ref().is_some_and(|r| r.is_match(line)),
    };
    let any = found(first.0, first.1) || or.iter().any(|(t, r)| found(t, r));
    let negative = matches!(
        op,
        LineOp::NotContains | LineOp::NotMatches | LineOp::NotPattern
    );
    any != negative
}

impl LogQuery {
    /// Whether the record's stream passes the selector.
    fn selects<R: Fields + ?Sized>(&self, record: &R) -> bool {
        let none = Labels::new();
        self.selector.iter().all(|matcher| {
            let (value, fold) = label_value(record, &none, &matcher.name);
            matcher.matches(value, fold)
        })
    }

    /// Whether the pipeline only filters whole lines (and drops errors it
    /// cannot raise): a selected line's labels are its stream's.
    fn filters_lines_only(&self) -> bool {
        self.stages.iter().all(|stage| match stage {
            Stage::Line { .. } => true,
            Stage::Drop(picks) => drops_errors_only(picks),
            _ => false,
        })
    }

    /// Whether a query that filters lines only selects the record.
    fn keeps<R: Fields + ?Sized>(&self, record: &R) -> bool {
        self.selects(record)
            && self.stages.iter().all(|stage| match stage {
                Stage::Line {
                    op,
                    text,
                    regex,
                    or,
                } => line_passes(*op, (text, regex), or, record.message()),
                _ => true,
            })
    }
}

/// A label's text as `| unwrap` reads it.
fn unwrapped(conversion: Conversion, text: &str) -> Option<f64> {
    let text = text.trim();
    let value = match conversion {
        Conversion::Number => text.parse::<f64>().ok(),
        Conversion::Duration => super::fields::duration_seconds(text),
        Conversion::Bytes => super::fields::bytes(text),
    };
    value.filter(|v| !v.is_nan())
}

impl Run<'_> {
    /// Whether a label filter passes, on the labels as the stages before
    /// it left them (`keep`, `drop` and renames included).
    fn label_passes<R: Fields + ?Sized>(&mut self, record: &R, filter: &LabelFilter) -> bool {
        let mut failed = false;
        let passes = self.judge(record, filter, &mut failed);
        if failed {
            // Loki keeps the line and marks it.
            self.error("LabelFilterErr");
        }
        passes
    }

    fn judge<R: Fields + ?Sized>(
        &self,
        record: &R,
        filter: &LabelFilter,
        failed: &mut bool,
    ) -> bool {
        match filter {
            LabelFilter::Text(matcher) => {
                let (value, fold) = self.value_of(record, &matcher.name);
                matcher.matches(value, fold)
            }
            LabelFilter::Number {
                name,
                op,
                value,
                conversion,
            } => {
                let (text, _) = self.value_of(record, name);
                if text.is_empty() {
                    return false;
                }
                match unwrapped(*conversion, text) {
                    Some(number) => compare(*op, number, *value),
                    None => {
                        *failed = true;
                        true
                    }
                }
            }
            LabelFilter::Ip {
                name,
                negate,
                range,
            } => {
                let (text, _) = self.value_of(record, name);
                let inside = text.trim().parse().is_ok_and(|addr| range.contains(addr));
                inside != *negate
            }
            LabelFilter::Any(filters) => filters.iter().any(|f| self.judge(record, f, failed)),
            LabelFilter::All(filters) => filters.iter().all(|f| self.judge(record, f, failed)),
        }
    }
}

/// One selected log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub ts: i64,
    pub line: String,
    pub labels: Labels,
}

/// The `limit` newest (`backward`) or oldest lines `query` selects with
/// `start <= ts < end`, in that order (ties newest record first).
///
/// Records are visited in time windows from the wanted end until `limit`
/// are found: every line of a later window is older (or newer) than all
/// those found, so the answer is exact without visiting the whole range.
/// The first window is a 256th of the range, at most
/// [`FIRST_WINDOW_MAX`] (dense logs fill a page there). If it falls
/// short, the index's histogram of the candidates over the rest
/// ([`WINDOW_BUCKETS`] buckets) sizes the next ones: as many buckets as
/// hold the lines still wanted at the share of candidates that passed so
/// far, a quarter more; a bucket holding [`SPLIT_FACTOR`] times that is
/// split into buckets of its own first. A histogram reads the
/// candidates' times only, about a hundredth of reading them. (Windows
/// that grew fourfold read every candidate of a range whose near end was
/// empty; a histogram first cost a dense range more than its first
/// window: 20 → 71 ms at 10M records.)
pub fn select_logs<S: Source>(
    source: &mut S,
    query: &LogQuery,
    (start, end): (i64, i64),
    limit: usize,
    backward: bool,
) -> Result<Vec<Entry>, EvalError<S::Error>> {
    let mut pages = Pages {
        query,
        candidates: query.candidates(),
        out: Vec::new(),
        limit,
        backward,
        read: 0,
        passed: 0,
    };
    if start >= end || limit == 0 {
        return Ok(pages.out);
    }
    let first =
        (end.saturating_sub(start) / WINDOW_BUCKETS as i64).clamp(1_000_000_000, FIRST_WINDOW_MAX);
    let (start, end) = if backward {
        let since = end.saturating_sub(first).max(start);
        pages.scan(source, since, end)?;
        (start, since)
    } else {
        let until = start.saturating_add(first).min(end);
        pages.scan(source, start, until)?;
        (until, end)
    };
    if start >= end || pages.out.len() >= limit {
        return Ok(pages.out);
    }
    // The rest as buckets of the index's histogram, in the order they
    // are read; a bucket holding far more candidates than a window wants
    // is split into buckets of its own first.
    let mut pending = buckets_of(source, &pages.candidates, (start, end), backward)?;
    while !pending.is_empty() && pages.out.len() < limit {
        let want = pages.candidates_wanted();
        let mut taken = 0u64;
        let (mut since, mut until) = (i64::MAX, i64::MIN);
        while taken < want
            && let Some(&(s, u, count)) = pending.first()
        {
            if count > want.saturating_mul(SPLIT_FACTOR)
                && u.saturating_sub(s) > WINDOW_BUCKETS as i64
            {
                if taken > 0 || since < until {
                    break; // read what is taken first
                }
                pending.remove(0);
                let inner = buckets_of(source, &pages.candidates, (s, u), backward)?;
                pending.splice(0..0, inner);
                continue;
            }
            pending.remove(0);
            (since, until) = (since.min(s), until.max(u));
            taken += count;
        }
        // Empty buckets are read too (the index finds nothing there at
        // once): the answer never rests on the histogram's counts.
        if since < until {
            pages.scan(source, since, until)?;
        }
    }
    Ok(pages.out)
}

/// [`select_logs`]'s lines so far, and how many candidates it read and
/// how many of them passed.
struct Pages<'q> {
    query: &'q LogQuery,
    candidates: String,
    out: Vec<Entry>,
    limit: usize,
    backward: bool,
    read: u64,
    passed: u64,
}

impl Pages<'_> {
    /// Candidates to read for the lines still wanted, at the share that
    /// passed so far, and a quarter more.
    fn candidates_wanted(&self) -> u64 {
        let need = self.limit.saturating_sub(self.out.len());
        let share = if self.read == 0 {
            1.0
        } else {
            self.passed.max(1) as f64 / self.read as f64
        };
        ((need as f64 / share) * 1.25).ceil() as u64
    }

    /// Adds the lines of `since <= ts < until` that come first in the
    /// wanted direction, up to the limit.
    fn scan<S: Source>(
        &mut self,
        source: &mut S,
        since: i64,
        until: i64,
    ) -> Result<(), EvalError<S::Error>> {
        let need = self.limit.saturating_sub(self.out.len());
        let (query, backward) = (self.query, self.backward);
        let (read, passed) = (&mut self.read, &mut self.passed);
        let mut window: Vec<Entry> = Vec::new();
        source
            .scan(&self.candidates, since, until, &mut |record| {
                *read += 1;
                if let Some(sampled) = query.sample(record) {
                    *passed += 1;
                    window.push(Entry {
                        ts: record.ts,
                        line: sampled.line.unwrap_or_else(|| record.message.clone()),
                        labels: sampled.labels,
                    });
                    if window.len() >= 2 * need.max(512) {
                        keep_first(&mut window, need, backward);
                    }
                }
                true
            })
            .map_err(EvalError::Source)?;
        keep_first(&mut window, need, backward);
        self.out.append(&mut window);
        Ok(())
    }
}

/// A time range and how many candidates it holds: `(since, until,
/// candidates)`.
type Bucket = (i64, i64, u64);

/// `(since, until, candidates)` of each bucket of the index's histogram
/// of `candidates` over `start..end` ([`WINDOW_BUCKETS`] of them, the
/// last reaching to `end`), newest first when `backward`. The buckets'
/// own span ends by `i64::MAX`: a range to the end of time is cut a few
/// ns short in the histogram, not in the buckets.
fn buckets_of<S: Source>(
    source: &mut S,
    candidates: &str,
    (start, end): (i64, i64),
    backward: bool,
) -> Result<Vec<Bucket>, EvalError<S::Error>> {
    let buckets = WINDOW_BUCKETS as i128;
    // Both the buckets' span and its end must fit in an i64.
    let room =
        ((i128::from(i64::MAX) - i128::from(start)) / buckets).min(i128::from(i64::MAX) / buckets);
    let width = ((i128::from(end) - i128::from(start)) / buckets + 1)
        .min(room)
        .max(1);
    let counts = source
        .histogram(
            candidates,
            start,
            i64::try_from(width).unwrap_or(i64::MAX),
            WINDOW_BUCKETS,
        )
        .map_err(EvalError::Source)?;
    let edge = |i: usize| -> i64 {
        if i >= counts.len() {
            return end;
        }
        let at = i128::from(start) + width * i as i128;
        i64::try_from(at.min(i128::from(end))).unwrap_or(end)
    };
    let mut out: Vec<Bucket> = counts
        .iter()
        .enumerate()
        .map(|(i, &count)| (edge(i), edge(i + 1), count))
        .filter(|(since, until, _)| since < until)
        .collect();
    if backward {
        out.reverse();
    }
    Ok(out)
}

/// The longest first window of [`select_logs`]: 10 s of dense logs
/// (10 million records an hour) fill a page of one service's.
const FIRST_WINDOW_MAX: i64 = 10_000_000_000;

/// A bucket holding this many times the candidates a window wants is
/// split before it is read.
const SPLIT_FACTOR: u64 = 8;

/// Buckets of the histogram that sizes [`select_logs`]'s windows.
const WINDOW_BUCKETS: usize = 256;

/// Orders entries (found newest record first) by time in the wanted
/// direction and keeps the first `n`.
fn keep_first(entries: &mut Vec<Entry>, n: usize, backward: bool) {
    if backward {
        entries.sort_by_key(|e| std::cmp::Reverse(e.ts));
    } else {
        entries.sort_by_key(|e| e.ts);
    }
    entries.truncate(n);
}

/// The times a metric query is evaluated at: `start`, `start + step`, ...
/// up to `end`; one time when `step` is 0 (an instant query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Steps {
    pub fn count(&self) -> usize {
        if self.step <= 0 || self.end < self.start {
            return 1;
        }
        usize::try_from(self.end.saturating_sub(self.start) / self.step + 1).unwrap_or(usize::MAX)
    }

    pub fn at(&self, i: usize) -> i64 {
        self.start
            .saturating_add(self.step.saturating_mul(i as i64))
    }
}

/// A series: its labels and a value (or none) at each step.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<Option<f64>>,
}

/// What a metric query gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    Scalar(f64),
    Vector(Vec<Series>),
}

/// Evaluates a metric query at `steps`.
pub fn eval_metric<S: Source>(
    source: &mut S,
    expr: &Expr,
    steps: Steps,
) -> Result<Metric, EvalError<S::Error>> {
    eval_grouped(source, expr, steps, &[])
}

/// `eval_metric`, where `by` names the labels an aggregation around
/// `expr` groups by: an attribute among them (Loki's structured
/// metadata, such as Drilldown's `sum by (env)`) is kept in the series'
/// labels, which otherwise hold only the stream's and extracted ones.
fn eval_grouped<S: Source>(
    source: &mut S,
    expr: &Expr,
    steps: Steps,
    by: &[String],
) -> Result<Metric, EvalError<S::Error>> {
    if steps.count() > MAX_POINTS {
        return Err(too_much(format!(
            "exceeded maximum resolution of {MAX_POINTS} points per timeseries; try decreasing the query resolution (?step=XX)"
        )));
    }
    match expr {
        Expr::Log(_) => Err(too_much(
            "a log query gives lines, not a metric: ask query_range for it, or wrap it in count_over_time",
        )),
        Expr::Number(n) => Ok(Metric::Scalar(*n)),
        Expr::Vector(n) => Ok(Metric::Vector(vec![Series {
            labels: Labels::new(),
            points: vec![Some(*n); steps.count()],
        }])),
        Expr::Range {
            func,
            query,
            range_ns,
            offset_ns,
            param,
            grouping,
        } => {
            let call = RangeCall {
                func: *func,
                query,
                range_ns: *range_ns,
                param: *param,
                grouping: grouping.as_ref(),
                by,
            };
            let steps = earlier(steps, *offset_ns);
            if *func == RangeFn::AbsentOverTime {
                let counted = RangeCall {
                    func: RangeFn::CountOverTime,
                    ..call
                };
                let present = range_series(source, counted, steps)?;
                return Ok(Metric::Vector(absent(query, &present, steps.count())));
            }
            range_series(source, call, steps).map(Metric::Vector)
        }
        Expr::TopK {
            bottom,
            k,
            grouping,
            inner,
        } => match eval_grouped(source, inner, steps, by)? {
            Metric::Scalar(_) => Err(too_much("topk and bottomk take a vector, not a number")),
            Metric::Vector(series) => Ok(Metric::Vector(top_k(
                series,
                *k,
                *bottom,
                grouping.as_ref(),
            ))),
        },
        Expr::LabelReplace {
            inner,
            dst,
            replacement,
            src,
            regex,
        } => match eval_grouped(source, inner, steps, by)? {
            Metric::Scalar(_) => Err(too_much("label_replace takes a vector, not a number")),
            Metric::Vector(mut series) => {
                for s in &mut series {
                    let value = s.labels.get(src).cloned().unwrap_or_default();
                    let Some(found) = regex.captures(&value) else {
                        continue;
                    };
                    let mut out = String::new();
                    found.expand(replacement, &mut out);
                    if out.is_empty() {
                        s.labels.remove(dst);
                    } else {
                        s.labels.insert(dst.clone(), out);
                    }
                }
                Ok(Metric::Vector(series))
            }
        },
        Expr::Sort { desc, inner } => match eval_grouped(source, inner, steps, by)? {
            Metric::Scalar(_) => Err(too_much("sort takes a vector, not a number")),
            Metric::Vector(mut series) => {
                let last = |s: &Series| s.points.iter().rev().find_map(|p| *p).unwrap_or(f64::NAN);
                series.sort_by(|a, b| {
                    let order = last(a).total_cmp(&last(b));
                    if *desc { order.reverse() } else { order }
                });
                Ok(Metric::Vector(series))
            }
        },
        Expr::Aggregate {
            op,
            grouping,
            inner,
        } => {
            if let Some(series) = fast_counts(source, *op, grouping.as_ref(), inner, steps)? {
                return Ok(Metric::Vector(series));
            }
            let mut by = by.to_vec();
            if let Some(Grouping::By(names)) = grouping {
                by.extend(names.iter().cloned());
            }
            match eval_grouped(source, inner, steps, &by)? {
                Metric::Scalar(_) => Err(too_much("an aggregation takes a vector, not a number")),
                Metric::Vector(series) => {
                    Ok(Metric::Vector(aggregate(*op, grouping.as_ref(), series)))
                }
            }
        }
        Expr::Binary(b) => {
            let lhs = eval_grouped(source, &b.lhs, steps, by)?;
            let rhs = eval_grouped(source, &b.rhs, steps, by)?;
            binary(b, lhs, rhs).map_err(too_much)
        }
    }
}

/// The steps `offset` earlier: a range with `offset 1h` looks at the
/// window an hour before each step (the points keep their steps).
fn earlier(steps: Steps, offset: i64) -> Steps {
    Steps {
        start: steps.start.saturating_sub(offset),
        end: steps.end.saturating_sub(offset),
        step: steps.step,
    }
}

/// Per series, the time, size and unwrapped value of each selected
/// line, in time order.
type Samples = Vec<(Labels, Vec<Sample>)>;

#[derive(Debug, Clone, Copy)]
struct Sample {
    ts: i64,
    /// Orders samples of one time as the log does.
    seq: u64,
    size: u64,
    value: f64,
}

/// A range aggregation, as written.
#[derive(Debug, Clone, Copy)]
struct RangeCall<'a> {
    func: RangeFn,
    query: &'a LogQuery,
    range_ns: i64,
    param: Option<f64>,
    grouping: Option<&'a Grouping>,
    /// Labels an aggregation around the call groups by (see
    /// `eval_grouped`).
    by: &'a [String],
}

/// The samples the call's query selects in the window the steps' ranges
/// cover: `(start - range, end]`; lines whose value could not be
/// unwrapped are left out (as `| __error__=""` would).
fn samples<S: Source>(
    source: &mut S,
    call: RangeCall<'_>,
    steps: Steps,
) -> Result<Samples, EvalError<S::Error>> {
    let since = steps.start.saturating_sub(call.range_ns).saturating_add(1);
    let until = steps.at(steps.count() - 1).saturating_add(1);
    let unwraps = call.func.unwraps();
    let mut by_labels: HashMap<Labels, Vec<Sample>> = HashMap::new();
    source
        .visit(
            &call.query.candidates(),
            since,
            until,
            &mut |seq, record| {
                let Some(Sampled {
                    mut labels,
                    value,
                    line,
                }) = call.query.sample(record)
                else {
                    return true;
                };
                if unwraps && value.is_none() {
                    return true;
                }
                for name in call.by.iter().chain(grouped_names(call.grouping)) {
                    if !labels.contains_key(name)
                        && field_label(name).is_none()
                        && let Some(v) = record.attr(name)
                    {
                        labels.insert(name.clone(), v.to_owned());
                    }
                }
                let labels = match call.grouping {
                    Some(grouping) => group_key(&labels, Some(grouping)),
                    None => labels,
                };
                by_labels.entry(labels).or_default().push(Sample {
                    ts: record.ts(),
                    seq,
                    size: line.as_deref().unwrap_or(record.message()).len() as u64,
                    value: value.unwrap_or(0.0),
                });
                true
            },
        )
        .map_err(EvalError::Source)?;
    let mut out: Samples = by_labels.into_iter().collect();
    for (_, samples) in &mut out {
        samples.sort_by_key(|s| (s.ts, s.seq));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The names a `by` grouping lists (none for `without`).
fn grouped_names(grouping: Option<&Grouping>) -> impl Iterator<Item = &String> {
    match grouping {
        Some(Grouping::By(names)) => names.iter(),
        _ => [].iter(),
    }
}

fn range_series<S: Source>(
    source: &mut S,
    call: RangeCall<'_>,
    steps: Steps,
) -> Result<Vec<Series>, EvalError<S::Error>> {
    let range_ns = call.range_ns;
    let seconds = range_ns as f64 / 1e9;
    let mut out = Vec::new();
    for (labels, samples) in samples(source, call, steps)? {
        let bytes = Prefix::new(samples.iter().map(|s| s.size));
        let points = (0..steps.count())
            .map(|i| {
                let t = steps.at(i);
                let first = samples.partition_point(|s| s.ts <= t.saturating_sub(range_ns));
                let past = samples.partition_point(|s| s.ts <= t);
                let count = past.saturating_sub(first);
                if count == 0 {
                    return None;
                }
                let size = bytes.sum(first, past);
                let window = samples.get(first..past).unwrap_or_default();
                let values = || window.iter().map(|s| s.value);
                Some(match call.func {
                    RangeFn::CountOverTime | RangeFn::AbsentOverTime => count as f64,
                    RangeFn::Rate => count as f64 / seconds,
                    RangeFn::BytesOverTime => size as f64,
                    RangeFn::BytesRate => size as f64 / seconds,
                    RangeFn::SumOverTime => values().sum(),
                    RangeFn::AvgOverTime => values().sum::<f64>() / count as f64,
                    RangeFn::MinOverTime => values().fold(f64::INFINITY, f64::min),
                    RangeFn::MaxOverTime => values().fold(f64::NEG_INFINITY, f64::max),
                    RangeFn::FirstOverTime => values().next()?,
                    RangeFn::LastOverTime => values().next_back()?,
                    RangeFn::StdvarOverTime => variance(values()),
                    RangeFn::StddevOverTime => variance(values()).sqrt(),
                    RangeFn::QuantileOverTime => {
                        quantile(call.param.unwrap_or(0.5), values().collect())
                    }
                    RangeFn::RateCounter => counter_rate(window, t, range_ns),
                })
            })
            .collect::<Vec<_>>();
        // Samples between steps shorter than them count at none.
        if points.iter().any(Option::is_some) {
            out.push(Series { labels, points });
        }
    }
    Ok(out)
}

/// Loki's `rate_counter` (Prometheus' extrapolated rate over a counter)
/// of the window of `range_ns` that ends at `end`: the increase from the
/// first sample to the last, each drop counted as a reset to 0, stretched
/// to the window's edges where the samples come near them (to within 1.1
/// of their mean spacing; otherwise half a spacing past each end sample,
/// never past the counter's zero), per second. 0 below two samples.
fn counter_rate(window: &[Sample], end: i64, range_ns: i64) -> f64 {
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return 0.0;
    };
    if window.len() < 2 {
        return 0.0;
    }
    let mut increase = last.value - first.value;
    for pair in window.windows(2) {
        if let [before, after] = pair
            && after.value < before.value
        {
            increase += before.value;
        }
    }
    let seconds = |ns: i64| ns as f64 / 1e9;
    let sampled = seconds(last.ts - first.ts);
    let spacing = sampled / (window.len() - 1) as f64;
    let threshold = spacing * 1.1;
    let mut to_start = seconds(first.ts - (end - range_ns));
    let mut to_end = seconds(end - last.ts);
    if to_start >= threshold {
        to_start = spacing / 2.0;
    }
    if increase > 0.0 && first.value >= 0.0 {
        to_start = to_start.min(sampled * (first.value / increase));
    }
    if to_end >= threshold {
        to_end = spacing / 2.0;
    }
    increase * ((sampled + to_start + to_end) / sampled) / seconds(range_ns)
}

/// The population variance (Prometheus' `stdvar_over_time`).
fn variance(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let n = values.clone().count() as f64;
    let mean = values.clone().sum::<f64>() / n;
    values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n
}

/// Prometheus' quantile: linear interpolation between the closest
/// ranks; below 0 is -Inf, above 1 +Inf.
fn quantile(phi: f64, mut values: Vec<f64>) -> f64 {
    if phi < 0.0 {
        return f64::NEG_INFINITY;
    }
    if phi > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(f64::total_cmp);
    let rank = phi * (values.len() - 1) as f64;
    let (lower, upper) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - rank.floor();
    let at = |i: usize| values.get(i).copied().unwrap_or(f64::NAN);
    at(lower) * (1.0 - weight) + at(upper) * weight
}

/// `sum [by (service, host, level)] (count_over_time(q[r]))` (or `rate`,
/// `bytes_over_time`, `bytes_rate`) when `q` only filters lines: counted
/// per bucket of time, without a series per stream. When no record needs checking (and lines
/// are counted, not their bytes), the index's histograms count them, one
/// per level, without reading a record; otherwise the candidates are read
/// in place once, each checked and counted. `None` when the query is not
/// of that shape.
fn fast_counts<S: Source>(
    source: &mut S,
    op: AggOp,
    grouping: Option<&Grouping>,
    inner: &Expr,
    steps: Steps,
) -> Result<Option<Vec<Series>>, EvalError<S::Error>> {
    let Expr::Range {
        func,
        query,
        range_ns,
        offset_ns,
        ..
    } = inner
    else {
        return Ok(None);
    };
    let steps = earlier(steps, *offset_ns);
    // The fields a `sum by` groups by: service, host or level (aliases
    // too); an attribute or `without` takes the general path.
    let by: Vec<(String, FieldLabel)> = match grouping {
        None => Vec::new(),
        Some(Grouping::By(names)) => {
            let fields: Option<Vec<_>> = names
                .iter()
                .map(|n| Some((n.clone(), field_label(n)?)))
                .collect();
            match fields {
                Some(fields) => fields,
                None => return Ok(None),
            }
        }
        Some(Grouping::Without(_)) => return Ok(None),
    };
    let lines = matches!(func, RangeFn::CountOverTime | RangeFn::Rate);
    let bytes = matches!(func, RangeFn::BytesOverTime | RangeFn::BytesRate);
    if op != AggOp::Sum || !(lines || bytes) || !query.filters_lines_only() {
        return Ok(None);
    }
    let range = *range_ns;
    let width = if steps.step > 0 {
        gcd(range, steps.step)
    } else {
        range
    };
    let per_step = usize::try_from(steps.step.max(0) / width).unwrap_or(usize::MAX);
    let per_range = usize::try_from(range / width).unwrap_or(usize::MAX);
    let buckets = (steps.count() - 1)
        .saturating_mul(per_step)
        .saturating_add(per_range);
    if buckets > MAX_BUCKETS {
        return Ok(None);
    }
    let buckets = Buckets {
        origin: steps.start.saturating_sub(range).saturating_add(1),
        width,
        count: buckets,
    };
    let by_level = by.iter().all(|(_, f)| *f == FieldLabel::Level);
    let counted = if lines && query.exact() && by_level {
        let names: Vec<String> = by.iter().map(|(n, _)| n.clone()).collect();
        counted_by_index(source, query, &names, buckets)?
    } else {
        None
    };
    let groups = match counted {
        Some(groups) => groups,
        None => counted_by_visiting(source, query, &by, buckets)?,
    };
    let mut groups = groups;
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let seconds = range as f64 / 1e9;
    let mut out = Vec::new();
    for (labels, counts) in groups {
        let lines = Prefix::new(counts.iter().map(|c| c.lines));
        let sizes = Prefix::new(counts.iter().map(|c| c.bytes));
        let points: Vec<Option<f64>> = (0..steps.count())
            .map(|i| {
                let (first, past) = (i * per_step, i * per_step + per_range);
                // A window with lines has a point, though they be empty.
                let n = if bytes {
                    sizes.sum(first, past)
                } else {
                    lines.sum(first, past)
                };
                (lines.sum(first, past) > 0).then(|| match func {
                    RangeFn::Rate | RangeFn::BytesRate => n as f64 / seconds,
                    _ => n as f64,
                })
            })
            .collect();
        if points.iter().any(Option::is_some) {
            out.push(Series { labels, points });
        }
    }
    Ok(Some(out))
}

/// Buckets of time: `[origin + i * width, origin + (i + 1) * width)` for
/// `i < count`.
#[derive(Debug, Clone, Copy)]
struct Buckets {
    origin: i64,
    width: i64,
    count: usize,
}

impl Buckets {
    fn end(&self) -> i64 {
        self.origin
            .saturating_add(self.width.saturating_mul(self.count as i64))
    }

    fn of(&self, ts: i64) -> Option<usize> {
        let since = ts.checked_sub(self.origin).filter(|d| *d >= 0)?;
        usize::try_from(since / self.width)
            .ok()
            .filter(|&i| i < self.count)
    }
}

/// Per group (the labels `by_level` names, set to a level), what falls in
/// each bucket.
type Counted = Vec<(Labels, Vec<Tally>)>;

/// Lines, and their bytes, in one bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    lines: u64,
    bytes: u64,
}

/// Lines per bucket from the index's histograms, one per level; `None`
/// when a level could be spelt otherwise in its records than the index
/// holds it.
fn counted_by_index<S: Source>(
    source: &mut S,
    query: &LogQuery,
    by_level: &[String],
    buckets: Buckets,
) -> Result<Option<Counted>, EvalError<S::Error>> {
    let candidates = query.candidates();
    let groups = if by_level.is_empty() {
        vec![(Labels::new(), candidates)]
    } else {
        let levels = source
            .levels(&candidates, buckets.origin, buckets.end())
            .map_err(EvalError::Source)?;
        let mut groups = Vec::new();
        for level in levels {
            if Level::parse(&level).as_str() != level {
                return Ok(None);
            }
            let query = format!("({candidates}) AND level:{level}");
            groups.push((level_labels(by_level, &level), query));
        }
        groups
    };
    let mut out = Vec::new();
    for (labels, lode_query) in groups {
        let counts = source
            .histogram(&lode_query, buckets.origin, buckets.width, buckets.count)
            .map_err(EvalError::Source)?;
        let counts = counts
            .into_iter()
            .map(|lines| Tally { lines, bytes: 0 })
            .collect();
        out.push((labels, counts));
    }
    Ok(Some(out))
}

/// Lines and their bytes per bucket and per group of `by`'s fields,
/// each candidate read in place once and checked.
fn counted_by_visiting<S: Source>(
    source: &mut S,
    query: &LogQuery,
    by: &[(String, FieldLabel)],
    buckets: Buckets,
) -> Result<Counted, EvalError<S::Error>> {
    let mut out: Counted = Vec::new();
    // A group's fields' values, and the groups by their hash.
    let mut keys: Vec<Vec<String>> = Vec::new();
    let mut slots: HashMap<u64, Vec<usize>> = HashMap::new();
    let candidates = query.candidates();
    source
        .visit(
            &candidates,
            buckets.origin,
            buckets.end(),
            &mut |_, record| {
                let Some(at) = buckets.of(record.ts()).filter(|_| query.keeps(record)) else {
                    return true;
                };
                let values = || by.iter().map(|(_, f)| field_value(record, *f));
                let hash = {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    values().for_each(|v| std::hash::Hash::hash(v, &mut h));
                    std::hash::Hasher::finish(&h)
                };
                let found = slots.get(&hash).and_then(|group| {
                    group.iter().copied().find(|&i| {
                        keys.get(i)
                            .is_some_and(|k| k.iter().map(String::as_str).eq(values()))
                    })
                });
                let slot = found.unwrap_or_else(|| {
                    let key: Vec<String> = values().map(str::to_owned).collect();
                    // A stream without a field has no such label.
                    let labels = by
                        .iter()
                        .zip(&key)
                        .filter(|(_, v)| !v.is_empty())
                        .map(|((n, _), v)| (n.clone(), v.clone()))
                        .collect();
                    out.push((labels, vec![Tally::default(); buckets.count]));
                    keys.push(key);
                    slots.entry(hash).or_default().push(out.len() - 1);
                    out.len() - 1
                });
                if let Some(tally) = out.get_mut(slot).and_then(|(_, c)| c.get_mut(at)) {
                    tally.lines += 1;
                    tally.bytes += record.message().len() as u64;
                }
                true
            },
        )
        .map_err(EvalError::Source)?;
    Ok(out)
}

/// Each of `names` set to `level` (none for an empty level, as a stream
/// without one has no such label).
fn level_labels(names: &[String], level: &str) -> Labels {
    if level.is_empty() {
        return Labels::new();
    }
    names
        .iter()
        .map(|n| (n.clone(), level.to_owned()))
        .collect()
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs().max(1)
    } else {
        gcd(b, a % b)
    }
}

/// The labels of `labels` that `grouping` keeps, resolving aliases for
/// `by` (`sum by (service)` groups by the service).
fn group_key(labels: &Labels, grouping: Option<&Grouping>) -> Labels {
    match grouping {
        None => Labels::new(),
        Some(Grouping::By(names)) => names
            .iter()
            .filter_map(|name| {
                let value = labels.get(name).or_else(|| {
                    let field = field_label(name)?;
                    labels
                        .iter()
                        .find(|(n, _)| field_label(n) == Some(field))
                        .map(|(_, v)| v)
                })?;
                Some((name.clone(), value.clone()))
            })
            .collect(),
        Some(Grouping::Without(names)) => labels
            .iter()
            .filter(|(name, _)| {
                !names.iter().any(|n| {
                    n == *name || (field_label(n).is_some() && field_label(n) == field_label(name))
                })
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    }
}

fn aggregate(op: AggOp, grouping: Option<&Grouping>, series: Vec<Series>) -> Vec<Series> {
    let steps = series.first().map_or(0, |s| s.points.len());
    let mut groups: BTreeMap<Labels, Vec<Vec<f64>>> = BTreeMap::new();
    for s in series {
        let values = groups
            .entry(group_key(&s.labels, grouping))
            .or_insert_with(|| vec![Vec::new(); steps]);
        for (slot, point) in values.iter_mut().zip(s.points) {
            slot.extend(point);
        }
    }
    groups
        .into_iter()
        .map(|(labels, values)| Series {
            labels,
            points: values.iter().map(|v| combine(op, v)).collect(),
        })
        .filter(|s| s.points.iter().any(Option::is_some))
        .collect()
}

fn combine(op: AggOp, values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let sum: f64 = values.iter().sum();
    Some(match op {
        AggOp::Sum => sum,
        AggOp::Avg => sum / values.len() as f64,
        AggOp::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        AggOp::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        AggOp::Count => values.len() as f64,
        AggOp::Stdvar => variance(values.iter().copied()),
        AggOp::Stddev => variance(values.iter().copied()).sqrt(),
    })
}

/// `a op b` at one step: arithmetic, or for a comparison the value of
/// `kept` (the vector's side) when it holds, and 1 or 0 with `bool`.
fn apply(op: BinOp, bool_result: bool, (a, b): (f64, f64), kept: f64) -> Option<f64> {
    let holds = match op {
        // Set operations pair series, not values (`set_operation`).
        BinOp::And | BinOp::Or | BinOp::Unless => return None,
        BinOp::Add => return Some(a + b),
        BinOp::Sub => return Some(a - b),
        BinOp::Mul => return Some(a * b),
        BinOp::Div => return Some(a / b),
        BinOp::Mod => return Some(a % b),
        BinOp::Pow => return Some(a.powf(b)),
        BinOp::Eq => a == b,
        BinOp::Ne => a != b,
        BinOp::Gt => a > b,
        BinOp::Ge => a >= b,
        BinOp::Lt => a < b,
        BinOp::Le => a <= b,
    };
    if bool_result {
        Some(if holds { 1.0 } else { 0.0 })
    } else {
        holds.then_some(kept)
    }
}

/// Series with a number, one point at a time; `None` points stay none,
/// and series left without a point go.
fn with_scalar(series: Vec<Series>, f: impl Fn(f64) -> Option<f64>) -> Vec<Series> {
    series
        .into_iter()
        .map(|s| Series {
            labels: s.labels,
            points: s.points.into_iter().map(|p| p.and_then(&f)).collect(),
        })
        .filter(|s| s.points.iter().any(Option::is_some))
        .collect()
}

/// Numbers with numbers, series with a number, and series with series
/// paired as `on`/`ignoring` and `group_left`/`group_right` say (by all
/// their labels, one to one, without them).
fn binary(b: &Binary, lhs: Metric, rhs: Metric) -> Result<Metric, String> {
    let (op, flag) = (b.op, b.bool_result);
    if op.is_set() {
        return match (lhs, rhs) {
            (Metric::Vector(left), Metric::Vector(right)) => {
                Ok(Metric::Vector(set_operation(b, left, right)))
            }
            _ => Err("and, or and unless take vectors on both sides, not numbers".into()),
        };
    }
    Ok(match (lhs, rhs) {
        (Metric::Scalar(x), Metric::Scalar(y)) => {
            if op.is_comparison() && !flag {
                return Err("comparisons between numbers must use bool, as 1 > bool 2".into());
            }
            Metric::Scalar(apply(op, true, (x, y), x).unwrap_or(0.0))
        }
        (Metric::Vector(v), Metric::Scalar(y)) => {
            Metric::Vector(with_scalar(v, |x| apply(op, flag, (x, y), x)))
        }
        (Metric::Scalar(x), Metric::Vector(v)) => {
            Metric::Vector(with_scalar(v, |y| apply(op, flag, (x, y), y)))
        }
        (Metric::Vector(left), Metric::Vector(right)) => {
            Metric::Vector(match_vectors(b, left, right)?)
        }
    })
}

/// `and`, `or`, `unless`, step by step: the left's points whose match
/// key the right has (has not) a point for at that step; `or` adds the
/// right's where the left has none.
fn set_operation(b: &Binary, left: Vec<Series>, right: Vec<Series>) -> Vec<Series> {
    let steps = left.first().or(right.first()).map_or(0, |s| s.points.len());
    let present = |series: &[Series]| {
        let mut at: HashMap<Labels, Vec<bool>> = HashMap::new();
        for s in series {
            let slots = at
                .entry(match_key(&s.labels, &b.matching))
                .or_insert_with(|| vec![false; steps]);
            for (slot, p) in slots.iter_mut().zip(&s.points) {
                *slot |= p.is_some();
            }
        }
        at
    };
    let on_right = present(&right);
    let keep = |s: Series, other: &HashMap<Labels, Vec<bool>>, want: bool| {
        let there = other.get(&match_key(&s.labels, &b.matching));
        let points = s
            .points
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let has = there.is_some_and(|t| t.get(i).copied().unwrap_or(false));
                p.filter(|_| has == want)
            })
            .collect();
        Series {
            labels: s.labels,
            points,
        }
    };
    let mut out: Vec<Series> = match b.op {
        BinOp::And => left.into_iter().map(|s| keep(s, &on_right, true)).collect(),
        BinOp::Unless => left
            .into_iter()
            .map(|s| keep(s, &on_right, false))
            .collect(),
        _ => {
            let on_left = present(&left);
            let mut all: Vec<Series> = Vec::new();
            let mut at: HashMap<Labels, usize> = HashMap::new();
            let added = right.into_iter().map(|s| keep(s, &on_left, false));
            // A right series with the left's labels fills its gaps: one
            // series, as Prometheus answers `sum(...) or vector(0)`.
            for s in left.into_iter().chain(added) {
                match at.get(&s.labels).and_then(|&i| all.get_mut(i)) {
                    Some(same) => {
                        for (slot, p) in same.points.iter_mut().zip(s.points) {
                            *slot = slot.or(p);
                        }
                    }
                    None => {
                        at.insert(s.labels.clone(), all.len());
                        all.push(s);
                    }
                }
            }
            all
        }
    };
    out.retain(|s| s.points.iter().any(Option::is_some));
    out
}

/// The labels two series are matched on.
fn match_key(labels: &Labels, matching: &Matching) -> Labels {
    labels
        .iter()
        .filter(|(name, _)| matching.labels.contains(name) == matching.on)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn match_vectors(b: &Binary, left: Vec<Series>, right: Vec<Series>) -> Result<Vec<Series>, String> {
    let m = &b.matching;
    // The side with one series per key, and whether it is the right.
    let (many, one, one_is_right) = match &m.group {
        Group::Right(_) => (right, left, false),
        _ => (left, right, true),
    };
    let mut ones: HashMap<Labels, Series> = HashMap::new();
    for s in one {
        let key = match_key(&s.labels, m);
        if ones.insert(key.clone(), s).is_some() {
            return Err(format!(
                "found duplicate series for the match group {key:?} on the {} side of the operation: use group_left or group_right, or on/ignoring to match on fewer labels",
                if one_is_right { "right" } else { "left" }
            ));
        }
    }
    let mut seen: HashMap<Labels, ()> = HashMap::new();
    let mut out = Vec::new();
    for s in many {
        let key = match_key(&s.labels, m);
        let Some(other) = ones.get(&key) else {
            continue;
        };
        if m.group == Group::OneToOne && seen.insert(key.clone(), ()).is_some() {
            return Err(format!(
                "multiple matches for labels {key:?}: many-to-one matching must be explicit (group_left/group_right)"
            ));
        }
        let points = s
            .points
            .iter()
            .zip(&other.points)
            .map(|(x, y)| {
                let (x, y) = ((*x)?, (*y)?);
                let (l, r) = if one_is_right { (x, y) } else { (y, x) };
                apply(b.op, b.bool_result, (l, r), l)
            })
            .collect::<Vec<_>>();
        if points.iter().all(Option::is_none) {
            continue;
        }
        let labels = match &m.group {
            Group::OneToOne if m.on => key,
            Group::OneToOne => s
                .labels
                .into_iter()
                .filter(|(n, _)| !m.labels.contains(n))
                .collect(),
            Group::Left(extra) | Group::Right(extra) => {
                let mut labels = s.labels;
                for name in extra {
                    match other.labels.get(name) {
                        Some(v) => labels.insert(name.clone(), v.clone()),
                        None => labels.remove(name),
                    };
                }
                labels
            }
        };
        out.push(Series { labels, points });
    }
    Ok(out)
}

/// `topk`/`bottomk`: at each step, the `k` series of each group with the
/// largest (smallest) values; the others have no point there.
fn top_k(series: Vec<Series>, k: usize, bottom: bool, grouping: Option<&Grouping>) -> Vec<Series> {
    let steps = series.first().map_or(0, |s| s.points.len());
    let keys: Vec<Labels> = series
        .iter()
        .map(|s| group_key(&s.labels, grouping))
        .collect();
    let mut keep = vec![vec![false; steps]; series.len()];
    for step in 0..steps {
        let mut at: Vec<(usize, f64)> = series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, (*s.points.get(step)?)?)))
            .collect();
        at.sort_by(|a, b| {
            let order = a.1.total_cmp(&b.1);
            if bottom { order } else { order.reverse() }
        });
        let mut taken: HashMap<&Labels, usize> = HashMap::new();
        for (i, _) in at {
            let Some(key) = keys.get(i) else { continue };
            let n = taken.entry(key).or_default();
            if *n < k {
                *n += 1;
                if let Some(slot) = keep.get_mut(i).and_then(|k| k.get_mut(step)) {
                    *slot = true;
                }
            }
        }
    }
    series
        .into_iter()
        .zip(keep)
        .map(|(s, keep)| Series {
            labels: s.labels,
            points: s
                .points
                .into_iter()
                .zip(keep)
                .map(|(p, k)| p.filter(|_| k))
                .collect(),
        })
        .filter(|s| s.points.iter().any(Option::is_some))
        .collect()
}

/// `absent_over_time`: one series, labelled with the selector's
/// equality matchers, with 1 at each step where `present` has no point.
fn absent(query: &LogQuery, present: &[Series], steps: usize) -> Vec<Series> {
    let points: Vec<Option<f64>> = (0..steps)
        .map(|i| {
            let any = present
                .iter()
                .any(|s| s.points.get(i).copied().flatten().is_some());
            (!any).then_some(1.0)
        })
        .collect();
    if points.iter().all(Option::is_none) {
        return Vec::new();
    }
    let labels = query
        .selector
        .iter()
        .filter(|m| m.op == MatchOp::Eq)
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    vec![Series { labels, points }]
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn log_query(text: &str) -> LogQuery {
        match parse(text).unwrap() {
            Expr::Log(q) => q,
            other => panic!("not a log query: {other:?}"),
        }
    }

    /// The times of the lines of `lines` that the log query `text` keeps.
    fn times_kept(lines: &[LogRecord], text: &str) -> Vec<i64> {
        let q = log_query(text);
        lines
            .iter()
            .filter(|r| q.process(*r).is_some())
            .map(|r| r.ts)
            .collect()
    }

    fn record(ts: i64, service: &str, level: Level, message: &str) -> LogRecord {
        LogRecord {
            ts,
            level,
            service: service.into(),
            host: "web-1".into(),
            attrs: vec![("env".into(), "prod".into())],
            message: message.into(),
            tenant: String::new(),
        }
    }

    /// Every record, through the query's candidates checked by lode's own
    /// matcher, as the index would.
    struct Records(Vec<LogRecord>);

    impl Source for Records {
        type Error = String;
        fn scan(
            &mut self,
            query: &str,
            since: i64,
            until: i64,
            visit: &mut dyn FnMut(&LogRecord) -> bool,
        ) -> Result<(), String> {
            let parsed = lode_query_parse(query)?;
            for r in self.0.iter().rev() {
                if r.ts >= since && r.ts < until && parsed(r) && !visit(r) {
                    break;
                }
            }
            Ok(())
        }
        /// Oldest first, unlike `scan`: callers must not rely on an order.
        fn visit(
            &mut self,
            query: &str,
            since: i64,
            until: i64,
            visit: &mut dyn FnMut(u64, &dyn Fields) -> bool,
        ) -> Result<(), String> {
            let parsed = lode_query_parse(query)?;
            for (seq, r) in (1..).zip(&self.0) {
                if r.ts >= since && r.ts < until && parsed(r) && !visit(seq, r) {
                    break;
                }
            }
            Ok(())
        }
        fn histogram(
            &mut self,
            query: &str,
            origin: i64,
            width: i64,
            buckets: usize,
        ) -> Result<Vec<u64>, String> {
            let parsed = lode_query_parse(query)?;
            let mut counts = vec![0; buckets];
            for r in &self.0 {
                if r.ts >= origin && parsed(r) {
                    let i = (i128::from(r.ts) - i128::from(origin)) / i128::from(width);
                    let i = usize::try_from(i).unwrap();
                    if let Some(c) = counts.get_mut(i) {
                        *c += 1;
                    }
                }
            }
            Ok(counts)
        }
        fn levels(&mut self, query: &str, since: i64, until: i64) -> Result<Vec<String>, String> {
            let parsed = lode_query_parse(query)?;
            let mut levels: Vec<String> = self
                .0
                .iter()
                .filter(|r| r.ts >= since && r.ts < until && parsed(r))
                .map(|r| r.level.as_str().to_lowercase())
                .collect();
            levels.sort();
            levels.dedup();
            Ok(levels)
        }
    }

    /// A tiny stand-in for lode's query language, enough for the
    /// candidates these tests make: ANDed field filters and words.
    fn lode_query_parse(query: &str) -> Result<impl Fn(&LogRecord) -> bool, String> {
        let terms: Vec<String> = if query == "*" {
            Vec::new()
        } else {
            query
                .replace(['(', ')'], "")
                .split(" AND ")
                .map(str::to_owned)
                .collect()
        };
        Ok(move |r: &LogRecord| {
            terms.iter().all(|t| {
                let (negate, t) = t
                    .strip_prefix('-')
                    .map_or((false, t.as_str()), |t| (true, t));
                let hit = if let Some(v) = t.strip_prefix("service:") {
                    r.service.to_lowercase() == v.trim_matches('"').to_lowercase()
                } else if let Some(v) = t.strip_prefix("level:") {
                    r.level.as_str() == v
                } else if let Some(p) = t.strip_prefix('*').and_then(|t| t.strip_suffix('*')) {
                    lode_query_words(&r.message).any(|w| w.contains(p))
                } else if let Some(p) = t.strip_prefix('*') {
                    lode_query_words(&r.message).any(|w| w.ends_with(p))
                } else if let Some(p) = t.strip_suffix('*') {
                    lode_query_words(&r.message).any(|w| w.starts_with(p))
                } else {
                    lode_query_words(&r.message).any(|w| w == t)
                };
                hit != negate
            })
        })
    }

    fn lode_query_words(text: &str) -> impl Iterator<Item = String> + '_ {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
    }

    #[test]
    fn substrings_give_the_words_they_surely_hold() {
        assert_eq!(substring_words("error"), Vec::<String>::new());
        assert_eq!(substring_words("connection reset by"), ["reset", "by*"]);
        assert_eq!(substring_words(" reset "), ["reset"]);
        assert_eq!(substring_words("a=b c"), ["b", "c*"]);
        assert_eq!(substring_words("Timeout: "), Vec::<String>::new());
        assert_eq!(substring_words(": TimeOut"), ["timeout*"]);
        assert_eq!(substring_part("error").as_deref(), Some("*error*"));
        assert_eq!(substring_part("Ünïcode").as_deref(), Some("*ünïcode*"));
        assert_eq!(substring_part("Timeout: ").as_deref(), Some("*timeout"));
        assert_eq!(substring_part("ok"), None);
        // Lowercased, `İ` is two characters, one a combining dot: no
        // token of the index, so no narrowing.
        assert_eq!(substring_part("İzmir"), None);
        assert_eq!(substring_words(" İzmir "), Vec::<String>::new());
        assert_eq!(substring_part(" reset"), None);
        // Prefixes and parts of digits only narrow nothing: the index
        // would read every record to settle them.
        let candidates = |q: &str| log_query(q).candidates();
        assert_eq!(candidates(r#"{a=~".+"} |= "Error""#), "*error*");
        assert_eq!(
            candidates(r#"{service_name="api"} |= "error""#),
            r#"service:"api" AND *error*"#
        );
        assert_eq!(
            candidates(r#"{a=~".+"} |= "Error" |= "GET /""#),
            "*error* AND *get"
        );
        assert_eq!(candidates(r#"{a=~".+"} |= "404" |= " GET /""#), "get");
        assert_eq!(candidates(r#"{a=~".+"} |= "404""#), "*");
        assert_eq!(candidates(r#"{a=~".+"} |= "port 80""#), "*port");
        assert_eq!(
            candidates(r#"{a=~".+"} |= "a 1608999687919 b""#),
            "1608999687919 AND b*"
        );
    }

    #[test]
    fn the_pipeline_filters_and_extracts() {
        let r = record(
            1,
            "API",
            Level::Warn,
            r#"{"status": 503, "user": {"name": "ann"}, "tags": [1]}"#,
        );
        let q = log_query(
            r#"{service_name="api", env="prod"} |= "503" | json | status >= 500 | user_name="ann""#,
        );
        let labels = q.process(&r).unwrap();
        assert_eq!(labels.get("user_name").map(String::as_str), Some("ann"));
        assert_eq!(labels.get("level").map(String::as_str), Some("warn"));
        assert!(!labels.contains_key("tags"));
        assert!(
            log_query(r#"{service_name="api"} | json | status < 500"#)
                .process(&r)
                .is_none()
        );
        assert!(
            log_query(r#"{service_name=~"api"}"#).process(&r).is_none(),
            "regexes keep case"
        );
        assert!(log_query(r#"{job="api"} != "503""#).process(&r).is_none());
        let plain = record(1, "api", Level::Info, "level=error took=12ms user=bob");
        let labels = log_query(r#"{app="api"} | logfmt | drop took"#)
            .process(&plain)
            .unwrap();
        assert_eq!(
            labels.get("level_extracted").map(String::as_str),
            Some("error")
        );
        assert!(!labels.contains_key("took"));
        let bad = log_query(r#"{app="api"} | json"#).process(&plain).unwrap();
        assert_eq!(
            bad.get("__error__").map(String::as_str),
            Some("JSONParserErr")
        );
        assert!(
            log_query(r#"{app="api"} | json | __error__="""#)
                .process(&plain)
                .is_none()
        );
    }

    #[test]
    fn candidates_and_exactness() {
        let q = log_query(r#"{service_name="api", host=~"web.*", level="warning"}"#);
        assert_eq!(q.candidates(), r#"service:"api""#);
        assert!(!q.exact());
        let q = log_query(r#"{service_name!="a\"b", level="error"} | drop __error__"#);
        assert_eq!(q.candidates(), "level:error");
        assert!(!q.exact());
        assert!(log_query(r#"{service_name="api", level!="info"} | drop __error__"#).exact());
        assert!(!log_query(r#"{service_name="api"} |= "x""#).exact());
    }

    fn corpus() -> Records {
        let levels = [Level::Info, Level::Warn, Level::Error];
        Records(
            (0..600)
                .map(|i: i64| {
                    let level = levels.get((i % 3) as usize).unwrap().clone();
                    // Out of time order now and then, as shippers send.
                    let ts = (i + if i % 7 == 0 { 5 } else { 0 }) * 1_000_000_000;
                    record(
                        ts,
                        if i % 2 == 0 { "api" } else { "db" },
                        level,
                        &format!("request {i} took {}ms", i % 50),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn logs_are_the_newest_or_oldest_by_time() {
        let mut source = corpus();
        let q = log_query(r#"{service_name="api"} |= "took 1""#);
        let all = times_kept(&source.0, r#"{service_name="api"} |= "took 1""#);
        let newest = select_logs(&mut source, &q, (0, 700_000_000_000), 7, true).unwrap();
        let mut expected = all.clone();
        expected.sort_by(|a, b| b.cmp(a));
        assert_eq!(
            newest.iter().map(|e| e.ts).collect::<Vec<_>>(),
            expected[..7]
        );
        let oldest = select_logs(&mut source, &q, (0, 700_000_000_000), 7, false).unwrap();
        expected.reverse();
        assert_eq!(
            oldest.iter().map(|e| e.ts).collect::<Vec<_>>(),
            expected[..7]
        );
    }

    /// [`Records`] counting the records its scans hand out.
    struct Counted(Records, usize);

    impl Source for Counted {
        type Error = String;
        fn scan(
            &mut self,
            query: &str,
            since: i64,
            until: i64,
            visit: &mut dyn FnMut(&LogRecord) -> bool,
        ) -> Result<(), String> {
            let seen = &mut self.1;
            self.0.scan(query, since, until, &mut |r| {
                *seen += 1;
                visit(r)
            })
        }
        fn visit(
            &mut self,
            query: &str,
            since: i64,
            until: i64,
            visit: &mut dyn FnMut(u64, &dyn Fields) -> bool,
        ) -> Result<(), String> {
            self.0.visit(query, since, until, visit)
        }
        fn histogram(
            &mut self,
            query: &str,
            origin: i64,
            width: i64,
            buckets: usize,
        ) -> Result<Vec<u64>, String> {
            self.0.histogram(query, origin, width, buckets)
        }
        fn levels(&mut self, query: &str, since: i64, until: i64) -> Result<Vec<String>, String> {
            self.0.levels(query, since, until)
        }
    }

    /// Lines that sit at one end of a long range are found by reading
    /// about one histogram bucket of them, not everything the range
    /// holds: 20,000 lines a second apart at the start of 1,000,000 s
    /// (buckets of 3,907 s). Windows that grew fourfold from the end
    /// read all 20,000 for the newest 100.
    #[test]
    fn a_page_of_lines_reads_about_a_bucket() {
        let lines = (0..20_000)
            .map(|i| record(i * 1_000_000_000, "api", Level::Info, &format!("line {i}")))
            .collect();
        let mut source = Counted(Records(lines), 0);
        let q = log_query(r#"{service_name="api"} |= "line""#);
        let range = (0, 1_000_000_000_000_000);
        for (backward, first) in [(true, 19_999), (false, 0)] {
            source.1 = 0;
            let page = select_logs(&mut source, &q, range, 100, backward).unwrap();
            let times: Vec<i64> = page.iter().map(|e| e.ts / 1_000_000_000).collect();
            let step = if backward { -1 } else { 1 };
            let want: Vec<i64> = (0..100).map(|i| first + step * i).collect();
            assert_eq!(times, want);
            assert!(source.1 <= 4_000, "{} lines read", source.1);
        }
        // A range from the start to the end of time, and one too short
        // for a ns per bucket: the same lines.
        for range in [
            (i64::MIN, i64::MAX),
            (19_999_000_000_000, 19_999_000_000_100),
        ] {
            for backward in [true, false] {
                let page = select_logs(&mut source, &q, range, 3, backward).unwrap();
                let want: Vec<i64> = source
                    .0
                    .0
                    .iter()
                    .filter(|r| r.ts >= range.0 && r.ts < range.1)
                    .map(|r| r.ts)
                    .collect();
                let mut want = want;
                if backward {
                    want.reverse();
                }
                want.truncate(3);
                let got: Vec<i64> = page.iter().map(|e| e.ts).collect();
                assert_eq!(got, want, "{range:?} {backward}");
            }
        }
    }

    #[test]
    fn the_fast_counts_equal_the_visited_ones() {
        let mut source = corpus();
        let steps = Steps {
            start: 30_000_000_000,
            end: 590_000_000_000,
            step: 20_000_000_000,
        };
        for text in [
            r#"sum by (level) (count_over_time({service_name="api"} | drop __error__ [30s]))"#,
            r#"sum(rate({service_name!="db"}[1m]))"#,
            r#"sum by (detected_level) (count_over_time({level="error"}[10s]))"#,
            // Read and checked, not counted by the index:
            r#"sum by (level, detected_level) (count_over_time({service_name="api"} |= "took 1" != "ms0" | drop __error__ [30s]))"#,
            r#"sum(bytes_over_time({service_name=~"a.*"} |~ "request [0-9]+ took" [1m]))"#,
            r#"sum by (level) (bytes_rate({service_name="db"}[30s]))"#,
            r#"sum(rate({service_name="db"} |= "took 4" or "took 7" [20s]))"#,
            // Grouped by other fields, read in place:
            r#"sum by (service_name) (rate({service_name=~".+"}[30s]))"#,
            r#"sum by (host, level) (count_over_time({service_name="api"} |= "took" [1m]))"#,
            r#"sum by (app) (bytes_over_time({job=~"a.*|d.*"}[1m]))"#,
        ] {
            let expr = parse(text).unwrap();
            let Expr::Aggregate {
                op,
                grouping,
                inner,
            } = &expr
            else {
                panic!()
            };
            let fast = fast_counts(&mut source, *op, grouping.as_ref(), inner, steps)
                .unwrap()
                .expect("fast path");
            let Metric::Vector(inner) = eval_metric(&mut source, inner, steps).unwrap() else {
                panic!()
            };
            let slow = aggregate(*op, grouping.as_ref(), inner);
            assert_eq!(fast.len(), slow.len(), "{text}");
            for (f, s) in fast.iter().zip(&slow) {
                assert_eq!(f.labels, s.labels, "{text}");
                // A sum of rates and a rate of sums differ in the last bit.
                let close = f.points.iter().zip(&s.points).all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                    (a, b) => a == b,
                });
                assert!(close, "{text}: {f:?} vs {s:?}");
            }
            assert!(!fast.is_empty());
        }
    }

    #[test]
    fn health_check_and_arithmetic() {
        let mut source = corpus();
        let at = Steps {
            start: 5,
            end: 5,
            step: 0,
        };
        let two = eval_metric(&mut source, &parse("vector(1)+vector(1)").unwrap(), at).unwrap();
        assert_eq!(
            two,
            Metric::Vector(vec![Series {
                labels: Labels::new(),
                points: vec![Some(2.0)]
            }])
        );
        assert_eq!(
            eval_metric(&mut source, &parse("2 * 3 + 1").unwrap(), at).unwrap(),
            Metric::Scalar(7.0)
        );
        let too_many = Steps {
            start: 0,
            end: 1_000_000,
            step: 1,
        };
        assert!(matches!(
            eval_metric(&mut source, &parse("vector(1)").unwrap(), too_many),
            Err(EvalError::Query(_))
        ));
    }

    /// ip(), durations and bytes in label filters, set operations and
    /// label_replace, as Loki's documentation shows them.
    #[test]
    fn ip_durations_set_operations_and_label_replace() {
        let lines = [
            record(1, "api", Level::Info, "from 10.0.3.7: took=1.5s size=20KB"),
            record(
                2,
                "api",
                Level::Info,
                "from 192.168.1.9. took=250ms size=2MB",
            ),
            record(3, "api", Level::Info, "addr=2001:db8::5 took=3m size=10B"),
        ];
        let kept = |text: &str| times_kept(&lines, text);
        assert_eq!(kept(r#"{app="api"} |= ip("10.0.0.0/8")"#), [1]);
        assert_eq!(kept(r#"{app="api"} != ip("10.0.0.0/8")"#), [2, 3]);
        assert_eq!(
            kept(r#"{app="api"} |= ip("192.168.1.1-192.168.1.10")"#),
            [2]
        );
        assert_eq!(kept(r#"{app="api"} |= ip("2001:db8::1-2001:db8::8")"#), [3]);
        assert_eq!(
            kept(r#"{app="api"} | logfmt | addr = ip("2001:db8::/32")"#),
            [3]
        );
        assert_eq!(kept(r#"{app="api"} | logfmt | took > 1s"#), [1, 3]);
        assert_eq!(
            kept(r#"{app="api"} | logfmt | took <= 250ms or size >= 1MB"#),
            [2]
        );
        assert_eq!(kept(r#"{app="api"} | logfmt | size < 1KiB"#), [3]);
        assert_eq!(
            kept(r#"{app="api"} | logfmt | took > 1d"#),
            Vec::<i64>::new()
        );
        assert_eq!(kept(r#"{app="api"} | logfmt | took < 1w"#), [1, 2, 3]);
        // Label filters see the labels keep, drop and renames left.
        assert_eq!(
            kept(r#"{app="api"} | keep host | level="info""#),
            Vec::<i64>::new()
        );
        assert_eq!(
            kept(r#"{app="api"} | drop level | level="info""#),
            Vec::<i64>::new()
        );
        assert_eq!(
            kept(r#"{app="api"} | label_format lvl=level | lvl="info""#),
            [1, 2, 3]
        );
        assert_eq!(
            kept(r#"{app="api"} | label_format level=nothing | level="info""#),
            [1, 2, 3]
        );

        let mut source = corpus();
        let steps = Steps {
            start: 120_000_000_000,
            end: 300_000_000_000,
            step: 60_000_000_000,
        };
        let mut eval = |text: &str| match eval_metric(&mut source, &parse(text).unwrap(), steps) {
            Ok(Metric::Vector(v)) => v,
            other => panic!("{text}: {other:?}"),
        };
        let names = |v: &[Series]| -> Vec<String> {
            v.iter()
                .map(|s| format!("{:?}", s.labels.values().collect::<Vec<_>>()))
                .collect()
        };
        let api = r#"sum by (service_name) (count_over_time({service_name="api"}[1m]))"#;
        let both = r#"sum by (service_name) (count_over_time({service_name=~".+"}[1m]))"#;
        assert_eq!(
            names(&eval(&format!("{both} and {api}"))),
            names(&eval(api))
        );
        assert_eq!(names(&eval(&format!("{both} unless {api}"))), [r#"["db"]"#]);
        assert_eq!(eval(&format!("{api} or {both}")).len(), 2);
        // `or` fills the left's gaps in one series, not two of one name.
        let filled = eval(r#"sum(count_over_time({service_name="nope"}[1m])) or vector(0)"#);
        assert_eq!(filled.len(), 1);
        assert!(filled[0].points.iter().all(|p| *p == Some(0.0)));
        let replaced = eval(&format!(
            r#"label_replace({both}, "short", "$1", "service_name", "(.)b")"#
        ));
        let shorts: Vec<Option<&String>> = replaced.iter().map(|s| s.labels.get("short")).collect();
        assert_eq!(shorts, [None, Some(&"d".to_owned())]);
        // A log query in parentheses inside a range.
        assert_eq!(
            eval(r#"count_over_time(({service_name="api"} |= "took")[1m])"#),
            eval(r#"count_over_time({service_name="api"} |= "took" [1m])"#)
        );
    }

    /// topk/bottomk/sort, comparisons (filtering and bool), vector
    /// matching, offset and absent_over_time, each checked against the
    /// series it is made from.
    #[test]
    fn vector_operators_agree_with_their_operands() {
        let mut source = corpus();
        let steps = Steps {
            start: 120_000_000_000,
            end: 480_000_000_000,
            step: 60_000_000_000,
        };
        let mut eval = |text: &str| match eval_metric(&mut source, &parse(text).unwrap(), steps) {
            Ok(Metric::Vector(v)) => v,
            other => panic!("{text}: {other:?}"),
        };
        let by_ls = r#"sum by (level, service_name) (count_over_time({service_name=~".+"} |~ "took [0-3]" [90s]))"#;
        let base = eval(by_ls);
        assert!(base.len() == 6, "{base:?}");
        let at = |series: &[Series], step: usize| -> Vec<f64> {
            let mut v: Vec<f64> = series.iter().filter_map(|s| s.points[step]).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let top = eval(&format!("topk(2, {by_ls})"));
        let bottom = eval(&format!("bottomk by (level) (1, {by_ls})"));
        for step in 0..steps.count() {
            let all = at(&base, step);
            assert_eq!(at(&top, step), all[all.len() - 2..].to_vec(), "step {step}");
            // One per level.
            assert_eq!(at(&bottom, step).len(), 3, "step {step}");
        }
        let sorted = eval(&format!("sort_desc({by_ls})"));
        let lasts: Vec<f64> = sorted
            .iter()
            .map(|s| s.points.last().unwrap().unwrap())
            .collect();
        assert!(lasts.windows(2).all(|w| w[0] >= w[1]), "{lasts:?}");
        // Comparisons: a filter keeps the value, bool gives 1 or 0.
        let over = eval(&format!("{by_ls} > 6"));
        let flags = eval(&format!("{by_ls} > bool 6"));
        for (s, f) in base.iter().zip(&flags) {
            assert_eq!(s.labels, f.labels);
            for (p, q) in s.points.iter().zip(&f.points) {
                assert_eq!(q.unwrap(), if p.unwrap() > 6.0 { 1.0 } else { 0.0 });
            }
            let kept = over.iter().find(|o| o.labels == s.labels);
            for (i, p) in s.points.iter().enumerate() {
                let got = kept.and_then(|k| k.points[i]);
                assert_eq!(got, p.filter(|v| *v > 6.0), "{:?} at {i}", s.labels);
            }
        }
        // Each service's share of its level: many-to-one on level.
        let by_l =
            r#"sum by (level) (count_over_time({service_name=~".+"} |~ "took [0-3]" [90s]))"#;
        let share = eval(&format!(
            "{by_ls} / ignoring(service_name) group_left {by_l}"
        ));
        let levels = eval(by_l);
        assert_eq!(share.len(), 6);
        for s in &share {
            let part = base.iter().find(|b| b.labels == s.labels).unwrap();
            let whole = levels
                .iter()
                .find(|l| l.labels.get("level") == s.labels.get("level"))
                .unwrap();
            for i in 0..steps.count() {
                let want = part.points[i].unwrap() / whole.points[i].unwrap();
                assert!((s.points[i].unwrap() - want).abs() < 1e-12);
            }
        }
        let on = eval(&format!("{by_ls} / on(level) group_left {by_l}"));
        assert_eq!(on.len(), 6);
        let plain = parse(&format!("{by_ls} / {by_l}")).unwrap();
        assert!(eval_metric(&mut corpus(), &plain, steps).unwrap() == Metric::Vector(vec![]));
        let clash = parse(&format!("{by_l} / ignoring(service_name) {by_ls}")).unwrap();
        assert!(
            matches!(eval_metric(&mut corpus(), &clash, steps), Err(EvalError::Query(m)) if m.contains("group_"))
        );
        // offset: the window a minute earlier.
        let now = eval(r#"count_over_time({service_name="api"}[60s])"#);
        let before = eval(r#"count_over_time({service_name="api"}[60s] offset 1m)"#);
        for (n, b) in now.iter().zip(&before) {
            assert_eq!(n.labels, b.labels);
            assert_eq!(n.points[..steps.count() - 1], b.points[1..]);
        }
        // absent_over_time: 1 where nothing is selected.
        let none = eval(r#"absent_over_time({service_name="nope", host=~".+"}[1m])"#);
        assert_eq!(none.len(), 1);
        assert_eq!(
            none[0].labels.get("service_name").map(String::as_str),
            Some("nope")
        );
        assert!(none[0].points.iter().all(|p| *p == Some(1.0)));
        assert!(eval(r#"absent_over_time({service_name="api"}[1m])"#).is_empty());
        let spread = eval(&format!("stddev by (level) ({by_ls})"));
        assert_eq!(spread.len(), 3);
        // Precedence and numbers.
        let at0 = Steps {
            start: 5,
            end: 5,
            step: 0,
        };
        for (text, want) in [
            ("2 + 3 * 2 ^ 2", 14.0),
            ("2 ^ 3 ^ 2", 512.0),
            ("1 < bool 2", 1.0),
            ("(1 + 2) * 3 == bool 9", 1.0),
        ] {
            let got = eval_metric(&mut corpus(), &parse(text).unwrap(), at0).unwrap();
            assert_eq!(got, Metric::Scalar(want), "{text}");
        }
        assert!(eval_metric(&mut corpus(), &parse("1 > 2").unwrap(), at0).is_err());
    }

    /// Drilldown's level filter (`or`), `and` and `,` with parentheses,
    /// and its pattern filters: each as the brute force decides.
    #[test]
    fn label_filter_expressions_and_pattern_filters() {
        let lines = [
            record(1, "api", Level::Error, "GET /items/1 200 in 5ms"),
            record(2, "api", Level::Warn, "GET /health 200 in 1ms"),
            record(3, "api", Level::Info, "POST /items 500 in 9ms"),
            record(4, "db", Level::Error, "GET /items/2 404 in 2ms"),
        ];
        let passing = |text: &str| times_kept(&lines, text);
        assert_eq!(
            passing(r#"{service_name=~".+"} | detected_level="error" or detected_level="warn""#),
            [1, 2, 4]
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} | level="error" or level="warn", service_name="db""#),
            [1, 4]
        );
        assert_eq!(
            passing(
                r#"{service_name=~".+"} | (level="error" or level="warn") and service_name="api""#
            ),
            [1, 2]
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} |> "GET <_> 200 in <_>""#),
            [1, 2]
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} !> "<_> /health <_>" |> "<_> in <_>ms""#),
            [1, 3, 4]
        );
        // `or` between texts: a positive filter takes any, a negative
        // one none (as Loki, where `!= "a" or "b"` is `!= "a" != "b"`).
        assert_eq!(
            passing(r#"{service_name=~".+"} |> "<_> /health <_>" or "POST <_>""#),
            [2, 3]
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} |= "health" or "500" or "404""#),
            [2, 3, 4]
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} != "health" or "500""#),
            [1, 4]
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} !~ "^GET" or "500""#),
            Vec::<i64>::new()
        );
        // `<_>` stands for some text, not none; the rest is literal.
        assert_eq!(
            passing(r#"{service_name=~".+"} |> "GET /items/<_>2 404 in 2ms""#),
            Vec::<i64>::new()
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} |> "GET /items/<_> 404 in 2ms""#),
            [4]
        );
        assert_eq!(
            passing(r#"{service_name=~".+"} |> "GET (.*) 200 in 5ms""#),
            Vec::<i64>::new()
        );
    }

    /// Loki's parsers and formatters on one line each: what labels and
    /// line come out, and filters after a formatter see the new line.
    #[test]
    fn parsers_and_formatters_give_lokis_labels_and_lines() {
        let access = r#"10.0.0.1 - - [10/Oct/2000:13:55:36] "GET /api/v1/users HTTP/1.1" 404 2326"#;
        let r = record(7_000_000_000, "api", Level::Info, access);
        let sampled = |text: &str, r: &LogRecord| log_query(text).sample(r);
        let get = |s: &Option<Sampled>, k: &str| {
            s.as_ref()
                .and_then(|s| s.labels.get(k).cloned())
                .unwrap_or_default()
        };
        let s = sampled(
            r#"{app="api"} | pattern `<ip> - - [<_>] "<method> <path> <_>" <status> <size>`"#,
            &r,
        );
        assert_eq!(
            [
                get(&s, "ip"),
                get(&s, "method"),
                get(&s, "path"),
                get(&s, "status"),
                get(&s, "size")
            ],
            ["10.0.0.1", "GET", "/api/v1/users", "404", "2326"]
        );
        // A missing literal ends the captures there.
        // A `<` that is no capture is text.
        let s = sampled(r#"{app="api"} | pattern "<ip> <- <rest>""#, &r);
        assert_eq!(get(&s, "ip"), access);
        let arrow = record(1, "api", Level::Info, "a <- b");
        let s = sampled(r#"{app="api"} | pattern "<ip> <- <rest>""#, &arrow);
        assert_eq!([get(&s, "ip"), get(&s, "rest")], ["a", "b"]);
        let s = sampled(r#"{app="api"} | pattern "<ip> - <who> ! <rest>""#, &r);
        assert_eq!(get(&s, "who"), access.split_once(" - ").unwrap().1);
        assert!(!s.as_ref().unwrap().labels.contains_key("rest"));
        let s = sampled(
            r#"{app="api"} | regexp `"(?P<method>\w+) (?P<path>[^ ]+)` | status="""#,
            &r,
        );
        assert_eq!(
            [get(&s, "method"), get(&s, "path")],
            ["GET", "/api/v1/users"]
        );
        // keep and drop, with matchers; __error__ is kept.
        let s = sampled(
            r#"{app="api"} | regexp `" (?P<status>\d+) (?P<size>\d+)$` | keep status, level="error", host"#,
            &r,
        )
        .unwrap();
        assert_eq!(
            s.labels.keys().collect::<Vec<_>>(),
            ["host", "status"],
            "{:?}",
            s.labels
        );
        let s = sampled(r#"{app="api"} | drop host="web-1", level="error""#, &r).unwrap();
        assert_eq!(
            s.labels.keys().collect::<Vec<_>>(),
            ["level", "service_name"]
        );
        // line_format: the new line, filtered after it.
        let q = r#"{app="api"} | regexp `"(?P<method>\w+) ` | line_format "{{.method | ToLower}} {{.service_name}} {{ __line__ | trunc 8 }}""#;
        let s = sampled(q, &r).unwrap();
        assert_eq!(s.line.as_deref(), Some("get api 10.0.0.1"));
        assert!(sampled(&format!("{q} |= \"get api\""), &r).is_some());
        assert!(sampled(&format!("{q} |= \"GET\""), &r).is_none());
        assert_eq!(
            log_query(&format!("{q} |= \"get api\"")).candidates(),
            r#"service:"api""#
        );
        // label_format: renamed, templated.
        let s = sampled(
            r#"{app="api"} | label_format svc=service_name, where="{{.host}}/{{.env}}""#,
            &r,
        )
        .unwrap();
        assert_eq!(get(&Some(s.clone()), "svc"), "api");
        assert_eq!(get(&Some(s.clone()), "where"), "web-1/prod");
        assert!(!s.labels.contains_key("service_name"));
        // decolorize, unpack.
        let colored = record(1, "api", Level::Info, "\u{1b}[31merror\u{1b}[0m disk full");
        let s = sampled(r#"{app="api"} | decolorize |= "error disk""#, &colored).unwrap();
        assert_eq!(s.line.as_deref(), Some("error disk full"));
        let packed = record(
            1,
            "api",
            Level::Info,
            r#"{"_entry":"the line","pod":"p-1","n":3}"#,
        );
        let s = sampled(r#"{app="api"} | unpack"#, &packed).unwrap();
        assert_eq!(s.line.as_deref(), Some("the line"));
        assert_eq!(get(&Some(s), "pod"), "p-1");
        // A template that fails at run time marks the line.
        let s = sampled(r#"{app="api"} | line_format "{{ div 1 }}""#, &r).unwrap();
        assert_eq!(get(&Some(s), "__error__"), "TemplateFormatErr");
    }

    /// `| json label="path"` takes only what the paths name: nested keys,
    /// array items, quoted keys; a missing path gives an empty label.
    #[test]
    fn json_paths_extract_the_values_they_name() {
        let line = r#"{"status":404,"user":{"id":"u7"},"servers":["a","b"],"headers":{"User-Agent":"curl"},"ok":true}"#;
        let q = log_query(
            r#"{service_name="api"} | json status="[\"status\"]", user="user.id", second="servers[1]", ua="headers[\"User-Agent\"]", gone="user.name", ok"#,
        );
        let labels = q.process(&record(1, "api", Level::Info, line)).unwrap();
        for (name, value) in [
            ("status", "404"),
            ("user", "u7"),
            ("second", "b"),
            ("ua", "curl"),
            ("gone", ""),
            ("ok", "true"),
        ] {
            assert_eq!(labels.get(name).map(String::as_str), Some(value), "{name}");
        }
        assert!(!labels.contains_key("servers") && !labels.contains_key("user_id"));
        // The fields tab's count: lines whose field is set.
        let q = log_query(r#"{service_name="api"} | json status="[\"status\"]" | status!="""#);
        assert!(q.process(&record(1, "api", Level::Info, line)).is_some());
        assert!(
            q.process(&record(2, "api", Level::Info, r#"{"other":1}"#))
                .is_none()
        );
    }

    /// Range aggregations over unwrapped values: each function over the
    /// values of its window, by the series' own labels or a grouping;
    /// `duration()` and `bytes()` convert, and lines whose value is not
    /// a number are left out.
    #[test]
    fn unwrapped_values_are_aggregated_over_their_window() {
        let lines: Vec<LogRecord> = [
            (1, Level::Info, "took=1s size=1KiB"),
            (2, Level::Info, "took=500ms size=512B"),
            (3, Level::Error, "took=2m size=2kB"),
            (4, Level::Info, "took=soon size=1MB"),
            (5, Level::Error, "took=3s size=3B"),
        ]
        .into_iter()
        .map(|(s, level, m)| record(s * 1_000_000_000, "api", level, m))
        .collect();
        let mut source = Records(lines);
        let at = Steps {
            start: 5_000_000_000,
            end: 5_000_000_000,
            step: 0,
        };
        let mut value = |text: &str| -> Vec<(Labels, f64)> {
            let Metric::Vector(series) = eval_metric(&mut source, &parse(text).unwrap(), at)
                .unwrap_or_else(|e| panic!("{text}: {e:?}"))
            else {
                panic!("{text}")
            };
            series
                .into_iter()
                .map(|s| (s.labels, s.points[0].unwrap()))
                .collect()
        };
        let one = |v: Vec<(Labels, f64)>| -> f64 {
            assert_eq!(v.len(), 1, "{v:?}");
            v[0].1
        };
        let q = |f: &str, unwrap: &str, by: &str| {
            format!(
                r#"{f}({{service_name="api"}} | logfmt | unwrap {unwrap} | __error__="" [10s]){by}"#
            )
        };
        // Durations in seconds: 1, 0.5, 120, 3 (soon is no duration).
        let d = "duration(took)";
        assert_eq!(one(value(&q("sum_over_time", d, " by ()"))), 124.5);
        assert_eq!(one(value(&q("avg_over_time", d, " by ()"))), 124.5 / 4.0);
        assert_eq!(one(value(&q("min_over_time", d, " by ()"))), 0.5);
        assert_eq!(one(value(&q("max_over_time", d, " by ()"))), 120.0);
        let median = r#"quantile_over_time(0.5, {service_name="api"} | logfmt | unwrap duration(took) | __error__="" [10s]) by ()"#;
        // 0.5, 1, 3, 120: halfway between the second and third.
        assert_eq!(one(value(median)), 2.0);
        let var = one(value(&q("stdvar_over_time", d, " by ()")));
        let mean = 124.5 / 4.0;
        let want: f64 = [1.0, 0.5, 120.0, 3.0]
            .iter()
            .map(|v: &f64| (v - mean).powi(2))
            .sum::<f64>()
            / 4.0;
        assert!((var - want).abs() < 1e-9, "{var} vs {want}");
        assert!((one(value(&q("stddev_over_time", d, " by ()"))) - want.sqrt()).abs() < 1e-9);
        // Bytes, by level: info 1024 + 512 + 1e6, error 2000 + 3.
        let by_level = value(&q("sum_over_time", "bytes(size)", " by (level)"));
        let got: Vec<(&str, f64)> = by_level
            .iter()
            .map(|(l, v)| (l["level"].as_str(), *v))
            .collect();
        assert_eq!(got, [("error", 2003.0), ("info", 1_001_536.0)]);
        // Without a grouping, each series keeps its labels (here each
        // line's own `size`), not the unwrapped one.
        let series = value(&q("max_over_time", d, ""));
        assert_eq!(series.len(), 4, "{series:?}");
        assert!(
            series
                .iter()
                .all(|(l, _)| !l.contains_key("took") && l.contains_key("size"))
        );
        // A counter sampled each second at 2..=5 s: 10, 20, a reset to
        // 5, then 15: an increase of 15 - 10 + 20 = 25 over the 3 s
        // sampled. The last sample is on the window's end (5 s); the
        // first is 2 s past its start, more than 1.1 spacings, so half a
        // spacing is added there: 25 stretched to 3.5 s, per 5 s.
        let counter: Vec<LogRecord> = [(2, 10), (3, 20), (4, 5), (5, 15)]
            .into_iter()
            .map(|(s, n)| record(s * 1_000_000_000, "api", Level::Info, &format!("n={n}")))
            .collect();
        let mut counter = Records(counter);
        let text = r#"sum(rate_counter({service_name="api"} | logfmt | unwrap n [5s]))"#;
        let Metric::Vector(series) = eval_metric(&mut counter, &parse(text).unwrap(), at).unwrap()
        else {
            panic!("{text}")
        };
        let got = series[0].points[0].unwrap();
        let want = 25.0 * (3.5 / 3.0) / 5.0;
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // The counter's zero bounds the stretch back: 1 then 5 at 4 and
        // 5 s reach 0 a quarter second before 4 s, short of a spacing's half.
        let zero: Vec<LogRecord> = [(4, 1), (5, 5)]
            .into_iter()
            .map(|(s, n)| record(s * 1_000_000_000, "api", Level::Info, &format!("n={n}")))
            .collect();
        let Metric::Vector(series) =
            eval_metric(&mut Records(zero), &parse(text).unwrap(), at).unwrap()
        else {
            panic!("{text}")
        };
        let got = series[0].points[0].unwrap();
        assert!((got - 4.0 * (1.25 / 1.0) / 5.0).abs() < 1e-9, "{got}");
        // A counting function takes no unwrap; a value one needs it.
        assert!(parse(r#"count_over_time({a="b"} | unwrap x [1m])"#).is_err());
        assert!(parse(r#"avg_over_time({a="b"} [1m])"#).is_err());
        assert!(parse(r#"quantile_over_time({a="b"} | unwrap x [1m])"#).is_err());
    }
}
