//! What Grafana's Logs Drilldown asks of Loki beyond Explore's queries:
//! volumes by label (its service list), the labels and fields a
//! selection has, a field's values, its log patterns. Shapes are Loki's.
//!
//! Patterns are mined when asked (lode keeps no pattern ingester): Drain
//! (`lode_logql::drain`) over the selection's newest 100,000 lines
//! in the range, one miner per level, counted per `step` (10 s at
//! least); as Loki, a pattern needs 30 lines and 300 at most are listed.
//!
//! Volumes are bytes of messages, as Loki's. Where every label a volume
//! groups by is one lode indexes (service, host, level), each group is
//! counted from the index and its bytes estimated from the newest 100
//! messages of the selection (as `index/stats` does); other labels are
//! counted by reading the records, within the query time limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Response};
use lode_engine::LogRecord;
use lode_index::{FacetField, Search};
use lode_logql::drain::Drain;
use lode_logql::fields::{self, Parser};
use lode_logql::{Expr, Labels, LogQuery, MatchOp, Source, Steps};
use serde_json::{Value, json};

use super::{
    Answer, IndexSource, LokiError, MAX_VALUES, Params, Shared, Who, bad, facet, number,
    over_index, param, seconds, success, time_range, values_of,
};
use crate::service::Failure;

/// The stream labels lode indexes, by the name Loki's API gives them.
const STREAM_LABELS: [(&str, FacetField); 3] = [
    ("service_name", FacetField::Service),
    ("host", FacetField::Host),
    ("level", FacetField::Level),
];

/// Lines `detected_fields` and field values look at unless told.
const LINE_LIMIT: usize = 100;
/// Fields or values they list unless told.
const FIELD_LIMIT: usize = 1000;

/// A positive count parameter, `default` when absent.
fn count(params: &[(String, String)], name: &str, default: usize) -> Result<usize, LokiError> {
    match param(params, name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(format!("{name}: '{text}' is not a positive number"))),
    }
}

/// The `query` parameter as a log query (a selector, perhaps with a
/// pipeline); empty, `{}` or absent selects everything.
fn log_query(params: &[(String, String)]) -> Result<LogQuery, LokiError> {
    let text = param(params, "query").unwrap_or("").trim();
    let matches_all = text
        .strip_prefix('{')
        .and_then(|rest| rest.trim_start().strip_prefix('}'))
        .is_some_and(|rest| rest.trim().is_empty());
    if text.is_empty() || matches_all {
        return Ok(LogQuery {
            selector: Vec::new(),
            stages: Vec::new(),
        });
    }
    match lode_logql::parse(text).map_err(|e| bad(e.to_string()))? {
        Expr::Log(query) => Ok(query),
        _ => Err(bad(
            "query: expected a stream selector such as {service_name=\"api\"}",
        )),
    }
}

/// A record's value of label `name`: a stream label, else an attribute.
fn label_of<'a>(record: &'a LogRecord, name: &str) -> Option<&'a str> {
    let value = match facet(name) {
        Some(FacetField::Service) => record.service.as_str(),
        Some(FacetField::Host) => record.host.as_str(),
        Some(FacetField::Level) => record.level.as_str(),
        _ => record
            .attrs
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str()),
    };
    (!value.is_empty()).then_some(value)
}

/// Visits the records of the range that pass `query` (its selector and
/// pipeline), newest first, `max` of them at most, while `visit` says
/// go on.
fn each_passing(
    source: &mut IndexSource<'_>,
    query: &LogQuery,
    (start, end): (i64, i64),
    max: usize,
    visit: &mut dyn FnMut(&LogRecord) -> bool,
) -> Result<(), Failure> {
    let mut seen = 0;
    source.scan(
        &query.candidates(),
        start,
        end.saturating_add(1),
        &mut |record| {
            if query.process(record).is_none() {
                return true;
            }
            seen += 1;
            visit(record) && seen < max
        },
    )
}

/// What a volume groups by (Loki's `aggregateBy` and `targetLabels`).
struct Grouping {
    /// Label names whose values make a group's key.
    names: Vec<String>,
    /// `aggregateBy=labels`: one group per label name, not per value.
    by_name: bool,
    /// `targetLabels`: a record counts only if it has every one.
    targets: bool,
}

impl Grouping {
    fn of(params: &[(String, String)], query: &LogQuery) -> Result<Grouping, LokiError> {
        let by_name = match param(params, "aggregateBy") {
            None | Some("" | "series") => false,
            Some("labels") => true,
            Some(other) => {
                return Err(bad(format!(
                    "aggregateBy: '{other}': expected series or labels"
                )));
            }
        };
        let targets: Vec<String> = param(params, "targetLabels")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        let given = !targets.is_empty();
        let mut names = if targets.is_empty() {
            query.selector.iter().map(|m| m.name.clone()).collect()
        } else {
            targets
        };
        if names.is_empty() {
            names = STREAM_LABELS.iter().map(|(n, _)| (*n).to_owned()).collect();
        }
        let mut seen = BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));
        Ok(Grouping {
            names,
            by_name,
            targets: given,
        })
    }

    /// The keys a record counts under.
    fn keys(&self, record: &LogRecord) -> Vec<Labels> {
        if self.targets && self.names.iter().any(|n| label_of(record, n).is_none()) {
            return Vec::new();
        }
        if self.by_name {
            return self
                .names
                .iter()
                .filter(|n| label_of(record, n).is_some())
                .map(|n| Labels::from([(n.clone(), String::new())]))
                .collect();
        }
        let key: Labels = self
            .names
            .iter()
            .filter_map(|n| Some((n.clone(), label_of(record, n)?.to_owned())))
            .collect();
        if key.is_empty() {
            Vec::new()
        } else {
            vec![key]
        }
    }
}

/// Groups a volume lists at most before it is refused: each is a series
/// of the answer.
const MAX_GROUPS: usize = 10_000;

fn too_many_groups() -> Failure {
    Failure::new(
        lode_protocol::ErrorCode::BadQuery,
        format!(
            "more than {MAX_GROUPS} groups of streams: narrow the selector, or group by fewer labels (targetLabels)"
        ),
    )
}

/// The buckets a volume counts in: `count` of `width` from `start`, the
/// last one cut at the range's end.
#[derive(Debug, Clone, Copy)]
struct Buckets {
    start: i64,
    end: i64,
    width: i64,
    count: usize,
}

impl Buckets {
    fn over((start, end): (i64, i64), width: i64) -> Buckets {
        let width = width.max(1);
        let span = end.saturating_sub(start).saturating_add(1);
        let count = usize::try_from(span.saturating_add(width - 1) / width).unwrap_or(1);
        Buckets {
            start,
            end,
            width,
            count: count.max(1),
        }
    }

    fn of(&self, ts: i64) -> usize {
        usize::try_from(ts.saturating_sub(self.start) / self.width)
            .unwrap_or(0)
            .min(self.count - 1)
    }

    /// Where bucket `i` ends (its point's time), at most the range's end.
    fn end_of(&self, i: usize) -> i64 {
        let i = i64::try_from(i).unwrap_or(i64::MAX);
        self.start
            .saturating_add(i.saturating_add(1).saturating_mul(self.width))
            .saturating_sub(1)
            .min(self.end)
    }
}

/// Per group, bytes per bucket (only buckets that hold some).
type Volumes = BTreeMap<Labels, BTreeMap<usize, u64>>;

/// Adds `bytes` to `key`'s bucket `i`, refusing a group past the bound.
fn add(volumes: &mut Volumes, key: Labels, i: usize, bytes: u64) -> bool {
    if !volumes.contains_key(&key) && volumes.len() >= MAX_GROUPS {
        return false;
    }
    *volumes.entry(key).or_default().entry(i).or_default() += bytes;
    true
}

/// Volumes read record by record: any label, exact bytes.
fn scanned_volumes(
    source: &mut IndexSource<'_>,
    query: &LogQuery,
    grouping: &Grouping,
    buckets: Buckets,
) -> Result<Volumes, Failure> {
    let mut volumes = Volumes::new();
    let mut bounded = true;
    let range = (buckets.start, buckets.end);
    each_passing(source, query, range, usize::MAX, &mut |record| {
        let i = buckets.of(record.ts);
        for key in grouping.keys(record) {
            bounded &= add(&mut volumes, key, i, record.message.len() as u64);
        }
        bounded
    })?;
    if !bounded {
        return Err(too_many_groups());
    }
    Ok(volumes)
}

/// Volumes from the index: groups of indexed labels counted per bucket,
/// bytes estimated from the selection's newest messages.
fn indexed_volumes(
    source: &mut IndexSource<'_>,
    query: &LogQuery,
    grouping: &Grouping,
    buckets: Buckets,
    limit: usize,
) -> Result<Volumes, Failure> {
    let index = source.index;
    let candidates = query.candidates();
    let (since, until) = (Some(buckets.start), Some(buckets.end.saturating_add(1)));
    let sample = index.search(Search {
        query: candidates.clone(),
        since,
        until,
        limit: Some(100),
        ..Search::default()
    })?;
    let sampled: u64 = sample.records.iter().map(|r| r.message.len() as u64).sum();
    let per_record = |n: u64| match sample.records.len() {
        0 => 0,
        len => n.saturating_mul(sampled) / len as u64,
    };
    // Each group: its index query and its key. A label no record of a
    // group has leaves the group as it is.
    let mut groups = vec![(candidates, Labels::new())];
    for name in &grouping.names {
        let Some(field) = facet(name) else { continue };
        let matchers: Vec<_> = query.selector.iter().filter(|m| &m.name == name).collect();
        let mut next = Vec::new();
        for (q, key) in groups {
            source.in_time()?;
            let values = index.top_values(&q, since, until, field, limit.max(MAX_VALUES))?;
            if values.iter().all(|(v, _)| v.is_empty()) {
                next.push((q, key));
                continue;
            }
            for (value, _) in values {
                if value.is_empty()
                    || value.contains('"')
                    || !matchers.iter().all(|m| m.matches(&value, true))
                {
                    continue;
                }
                if next.len() >= MAX_GROUPS {
                    return Err(too_many_groups());
                }
                let mut key = key.clone();
                key.insert(name.clone(), value.clone());
                let term = match field {
                    FacetField::Level => format!("level:{value}"),
                    FacetField::Host => format!("host:\"{value}\""),
                    _ => format!("service:\"{value}\""),
                };
                next.push((format!("({q}) AND {term}"), key));
            }
        }
        groups = next;
    }
    let mut volumes = Volumes::new();
    for (q, key) in groups {
        source.in_time()?;
        let counts = index.histogram_at(&q, buckets.start, buckets.width, buckets.count)?;
        let keys = if grouping.by_name {
            key.into_keys()
                .map(|name| Labels::from([(name, String::new())]))
                .collect()
        } else {
            vec![key]
        };
        for key in keys {
            for (i, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                if !add(&mut volumes, key.clone(), i, per_record(*n)) {
                    return Err(too_many_groups());
                }
            }
        }
    }
    Ok(volumes)
}

/// Whether the index alone can answer: every label grouped or matched is
/// an indexed one, the query has no stage, a matcher on a label not
/// grouped is one the index decides exactly, and a regex on a grouped
/// label can be tried on the index's lowercased values.
fn indexed(query: &LogQuery, grouping: &Grouping) -> bool {
    let (grouped, other): (Vec<_>, Vec<_>) = query
        .selector
        .iter()
        .cloned()
        .partition(|m| grouping.names.contains(&m.name));
    let lowercase = |m: &lode_logql::Matcher| {
        !matches!(m.op, MatchOp::Re | MatchOp::Nre)
            || m.value.starts_with("(?i)")
            || !m.value.chars().any(char::is_uppercase)
    };
    grouping.names.iter().all(|n| facet(n).is_some())
        && query.stages.is_empty()
        && grouped.iter().all(lowercase)
        && LogQuery {
            selector: other,
            stages: Vec::new(),
        }
        .exact()
}

/// The groups with the most bytes first (ties by key), `limit` of them.
fn largest(volumes: Volumes, limit: usize) -> Vec<(Labels, BTreeMap<usize, u64>)> {
    let mut groups: Vec<(u64, Labels, BTreeMap<usize, u64>)> = volumes
        .into_iter()
        .map(|(key, bytes)| (bytes.values().sum(), key, bytes))
        .filter(|(total, _, _)| *total > 0)
        .collect();
    groups.sort_by(|(a, ka, _), (b, kb, _)| b.cmp(a).then_with(|| ka.cmp(kb)));
    groups.truncate(limit);
    groups
        .into_iter()
        .map(|(_, key, bytes)| (key, bytes))
        .collect()
}

async fn volumes(
    service: &Shared,
    who: &Who,
    params: &[(String, String)],
    buckets: Buckets,
) -> Result<Vec<(Labels, BTreeMap<usize, u64>)>, LokiError> {
    let query = log_query(params)?;
    let grouping = Grouping::of(params, &query)?;
    // Loki reads 0 as its default.
    let limit = match count(params, "limit", 100) {
        Err(_) if param(params, "limit") == Some("0") => 100,
        other => other?,
    };
    let volumes = over_index(&service.0, who, move |source| {
        if indexed(&query, &grouping) {
            indexed_volumes(source, &query, &grouping, buckets, limit)
        } else {
            scanned_volumes(source, &query, &grouping, buckets)
        }
    })
    .await?;
    Ok(largest(volumes, limit))
}

/// `GET /loki/api/v1/index/volume`: bytes per group of streams over the
/// range, as a vector at `end` (Drilldown's service list).
pub(super) async fn volume(service: Shared, who: Who, Form(params): Params) -> Answer {
    let (start, end) = time_range(&params)?;
    let width = end.saturating_sub(start).saturating_add(1);
    let groups = volumes(&service, &who, &params, Buckets::over((start, end), width)).await?;
    let result: Vec<Value> = groups
        .iter()
        .map(|(key, bytes)| {
            let total: u64 = bytes.values().sum();
            json!({"metric": key, "value": [seconds(end), number(total as f64)]})
        })
        .collect();
    Ok(success(json!({"resultType": "vector", "result": result})))
}

/// The range's steps (`step`, at least `min`), refused past the points
/// a query may return.
fn stepped(params: &[(String, String)], range: (i64, i64), min: i64) -> Result<Steps, LokiError> {
    let steps = Steps {
        start: range.0,
        end: range.1,
        step: super::step_ns(params, range)?.max(min),
    };
    if steps.count() > lode_logql::MAX_POINTS {
        return Err(bad(format!(
            "step: {} points exceed the {} a query may return; widen the step",
            steps.count(),
            lode_logql::MAX_POINTS
        )));
    }
    Ok(steps)
}

/// `GET /loki/api/v1/index/volume_range`: the same per `step`, as a
/// matrix (each point the bytes of the step that ends there).
pub(super) async fn volume_range(service: Shared, who: Who, Form(params): Params) -> Answer {
    let range = time_range(&params)?;
    let buckets = Buckets::over(range, stepped(&params, range, 1)?.step);
    let groups = volumes(&service, &who, &params, buckets).await?;
    let result: Vec<Value> = groups
        .iter()
        .map(|(key, bytes)| {
            let values: Vec<Value> = bytes
                .iter()
                .map(|(i, b)| json!([seconds(buckets.end_of(*i)), number(*b as f64)]))
                .collect();
            json!({"metric": key, "values": values})
        })
        .collect();
    Ok(success(json!({"resultType": "matrix", "result": result})))
}

/// Loki drops a label whose every value looks like an id (a number or a
/// UUID), unless it is a 0/1 flag or one of the labels always kept.
fn looks_like_ids(name: &str, values: &[String]) -> bool {
    if matches!(name, "cluster" | "namespace" | "instance" | "pod") {
        return false;
    }
    if values.len() <= 2 && values.iter().all(|v| v == "0" || v == "1") {
        return false;
    }
    values
        .iter()
        .all(|v| v.parse::<f64>().is_ok() || is_uuid(v))
}

fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A bare JSON answer (Drilldown's endpoints have no status wrapper).
fn bare(body: Value) -> Response {
    axum::Json(body).into_response()
}

/// `GET /loki/api/v1/detected_labels`: the stream labels of the
/// selection with their number of values.
pub(super) async fn detected_labels(
    State(service): Shared,
    who: Who,
    Form(params): Params,
) -> Answer {
    let range = time_range(&params)?;
    let candidates = log_query(&params)?.candidates();
    let labels = service
        .timed(&who, move |index| {
            let mut labels = Vec::new();
            for (name, field) in STREAM_LABELS {
                let values = values_of(index, &candidates, range, field)?;
                if !values.is_empty() && !looks_like_ids(name, &values) {
                    labels.push(json!({"label": name, "cardinality": values.len()}));
                }
            }
            Ok(labels)
        })
        .await?;
    Ok(bare(if labels.is_empty() {
        json!({})
    } else {
        json!({"detectedLabels": labels})
    }))
}

/// One detected field: its type (of the newest value), values seen,
/// parsers, JSON path.
struct Detected {
    kind: &'static str,
    values: BTreeSet<String>,
    parsers: BTreeSet<Parser>,
    json_path: Option<Vec<String>>,
    /// An attribute (structured metadata), not parsed from the line.
    attribute: bool,
}

/// The fields of the newest `lines` records of the selection (after its
/// pipeline): attributes, and what JSON or logfmt finds in each line.
fn detect(
    source: &mut IndexSource<'_>,
    query: &LogQuery,
    range: (i64, i64),
    lines: usize,
    limit: usize,
) -> Result<Vec<(String, Detected)>, Failure> {
    let mut found: Vec<(String, Detected)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    each_passing(source, query, range, lines, &mut |record| {
        // The level as Loki's `detected_level` (structured metadata, for
        // Drilldown's level filter), the attributes, then what the line
        // holds: a parsed name taken already gets `_extracted`, as
        // LogQL's parsers name it.
        let level = (!record.level.as_str().is_empty()).then(|| {
            let level = record.level.as_str().to_owned();
            ("detected_level".to_owned(), level, None, None)
        });
        let attrs = record
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None, None));
        let taken =
            |name: &str| facet(name).is_some() || record.attrs.iter().any(|(k, _)| k == name);
        let parsed = fields::line_fields(&record.message)
            .into_iter()
            .flat_map(|(parser, fields)| fields.into_iter().map(move |f| (parser, f)))
            .map(|(parser, f)| {
                let name = if taken(&f.name) {
                    format!("{}_extracted", f.name)
                } else {
                    f.name
                };
                (name, f.value, Some(parser), f.json_path)
            });
        for (name, value, parser, json_path) in level.into_iter().chain(attrs).chain(parsed) {
            if name.starts_with("__") {
                continue;
            }
            let i = match at.get(&name) {
                Some(i) => *i,
                None if found.len() < limit => {
                    at.insert(name.clone(), found.len());
                    found.push((
                        name,
                        Detected {
                            kind: fields::value_type(&value),
                            values: BTreeSet::new(),
                            parsers: BTreeSet::new(),
                            json_path: None,
                            attribute: parser.is_none(),
                        },
                    ));
                    found.len() - 1
                }
                None => continue,
            };
            let Some((_, field)) = found.get_mut(i) else {
                continue;
            };
            field.values.insert(value);
            if let Some(parser) = parser {
                field.parsers.insert(parser);
                field.json_path = field.json_path.take().or(json_path);
            }
        }
        true
    })?;
    Ok(found)
}

/// `GET /loki/api/v1/detected_fields`: the fields of the newest
/// `line_limit` (100) lines of the selection, `limit` (1000) at most.
pub(super) async fn detected_fields(
    State(service): Shared,
    who: Who,
    Form(params): Params,
) -> Answer {
    let range = time_range(&params)?;
    let query = log_query(&params)?;
    let lines = count(&params, "line_limit", LINE_LIMIT)?.min(service.limits.max_result_records);
    let limit = match param(&params, "limit") {
        Some(_) => count(&params, "limit", FIELD_LIMIT)?,
        None => count(&params, "field_limit", FIELD_LIMIT)?,
    };
    let found = over_index(&service, &who, move |source| {
        detect(source, &query, range, lines, limit)
    })
    .await?;
    if found.is_empty() {
        return Ok(bare(json!({})));
    }
    let fields: Vec<Value> = found
        .into_iter()
        .map(|(name, field)| {
            let parsers = (!field.attribute)
                .then(|| field.parsers.iter().map(|p| p.name()).collect::<Vec<_>>());
            let mut value = serde_json::Map::new();
            value.insert("label".into(), json!(name));
            value.insert("type".into(), json!(field.kind));
            value.insert("cardinality".into(), json!(field.values.len()));
            value.insert("parsers".into(), json!(parsers));
            if let Some(path) = field.json_path {
                value.insert("jsonPath".into(), json!(path));
            }
            Value::Object(value)
        })
        .collect();
    Ok(bare(json!({"fields": fields, "limit": limit})))
}

/// `GET /loki/api/v1/detected_field/{name}/values`: the values a field
/// takes in the newest `line_limit` lines, `limit` at most.
pub(super) async fn detected_field_values(
    State(service): Shared,
    who: Who,
    Path(name): Path<String>,
    Form(params): Params,
) -> Answer {
    let range = time_range(&params)?;
    let query = log_query(&params)?;
    let lines = count(&params, "line_limit", LINE_LIMIT)?.min(service.limits.max_result_records);
    let limit = count(&params, "limit", FIELD_LIMIT)?;
    let found = over_index(&service, &who, move |source| {
        detect(source, &query, range, lines, MAX_VALUES)
    })
    .await?;
    let values: Vec<String> = found
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, field)| field.values.into_iter().take(limit).collect())
        .unwrap_or_default();
    Ok(bare(if values.is_empty() {
        json!({})
    } else {
        json!({"values": values, "limit": limit})
    }))
}

/// Lines `patterns` mines at most: the newest of the range.
const PATTERN_LINES: usize = 100_000;
/// Loki's pruning: lines a pattern needs in the range, patterns listed.
const MIN_PATTERN_LINES: u64 = 30;
const MAX_PATTERNS: usize = 300;
/// The finest step patterns are counted at (Loki's sample interval).
const MIN_PATTERN_STEP: i64 = 10_000_000_000;

/// The level a pattern is listed under: one Loki knows, else `unknown`.
fn pattern_level(record: &LogRecord) -> &'static str {
    match record.level.as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" => "warn",
        "error" => "error",
        "fatal" => "fatal",
        _ => "unknown",
    }
}

/// Mines the selection's lines into patterns, the most frequent first,
/// each with its count per step (zeros between its first and last).
fn mine(
    source: &mut IndexSource<'_>,
    query: &LogQuery,
    range: (i64, i64),
    step: i64,
) -> Result<Vec<Value>, Failure> {
    let mut miners: BTreeMap<&'static str, Drain> = BTreeMap::new();
    each_passing(source, query, range, PATTERN_LINES, &mut |record| {
        miners
            .entry(pattern_level(record))
            .or_default()
            .train(&record.message, record.ts.div_euclid(step));
        true
    })?;
    let mut found: Vec<(u64, String, Value)> = Vec::new();
    for (level, miner) in &miners {
        for cluster in miner.clusters() {
            let total = cluster.total();
            let (Some(first), Some(last)) = (
                cluster.counts.keys().min().copied(),
                cluster.counts.keys().max().copied(),
            ) else {
                continue;
            };
            if total < MIN_PATTERN_LINES {
                continue;
            }
            let samples: Vec<Value> = (first..=last)
                .map(|b| {
                    let count = cluster.counts.get(&b).copied().unwrap_or(0);
                    json!([b.saturating_mul(step) / 1_000_000_000, count])
                })
                .collect();
            let pattern = cluster.pattern();
            let value = json!({"pattern": pattern, "level": level, "samples": samples});
            found.push((total, pattern, value));
        }
    }
    found.sort_by(|(a, pa, _), (b, pb, _)| b.cmp(a).then_with(|| pa.cmp(pb)));
    found.truncate(MAX_PATTERNS);
    Ok(found.into_iter().map(|(_, _, v)| v).collect())
}

/// `GET /loki/api/v1/patterns`: the selection's log patterns with their
/// counts over time.
pub(super) async fn patterns(State(service): Shared, who: Who, Form(params): Params) -> Answer {
    let range = time_range(&params)?;
    let step = stepped(&params, range, MIN_PATTERN_STEP)?.step;
    let query = log_query(&params)?;
    let found = over_index(&service, &who, move |source| {
        mine(source, &query, range, step)
    })
    .await?;
    Ok(success(Value::Array(found)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_offered_as_labels() {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(looks_like_ids("req", &strings(&["12", "13.5"])));
        assert!(looks_like_ids(
            "trace",
            &strings(&["0b8f7a0e-9c1d-4e2f-8a3b-1c2d3e4f5a6b"])
        ));
        assert!(!looks_like_ids("flag", &strings(&["0", "1"])));
        assert!(!looks_like_ids("pod", &strings(&["12"])));
        assert!(!looks_like_ids("service_name", &strings(&["api", "12"])));
    }
}
