//! The part of Loki's query API that Grafana's built-in Loki data source
//! calls, so that lode can be added to Grafana as a "Loki" data source:
//! instant and range queries in LogQL (`lode_logql`), labels
//! and their values, series, index stats, build info and live tail; and
//! what Grafana's Logs Drilldown asks for (`drilldown`): volumes,
//! detected labels and fields, a field's values, log patterns.
//!
//! Answers have the shapes of Loki's HTTP API (`{"status": "success",
//! "data": ...}`); errors are JSON with the reason in `message`, and
//! LogQL parse errors name the line and column.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lode_engine::{Fields, LogRecord, now_ns};
use lode_index::{FacetField, Search};
use lode_logql::{self, Entry, EvalError, Expr, Labels, LogQuery, Metric, Series, Source, Steps};
use lode_protocol::ErrorCode;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::scoped::Scoped;
use crate::service::{Failure, Service};

mod drilldown;
mod push;
mod tail;

type Shared = State<Arc<Service>>;
/// Who a request acts as (see the HTTP layer's authentication).
pub(crate) type Who = axum::Extension<Caller>;

/// Request parameters, query string or form body alike; a name may come
/// more than once (`match[]`).
type Params = Form<Vec<(String, String)>>;

/// Loki's default range: the last hour.
const DEFAULT_RANGE_NS: i64 = 3_600_000_000_000;

/// Most distinct values a label lists, and most series `/series` lists.
const MAX_VALUES: usize = 1000;

pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/loki/api/v1/push", post(push::loki_push))
        .route("/loki/api/v1/query", get(instant).post(instant))
        .route("/loki/api/v1/query_range", get(range).post(range))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route(
            "/loki/api/v1/label/{name}/values",
            get(label_values).post(label_values),
        )
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route("/loki/api/v1/index/volume", get(drilldown::volume))
        .route(
            "/loki/api/v1/index/volume_range",
            get(drilldown::volume_range),
        )
        .route(
            "/loki/api/v1/detected_labels",
            get(drilldown::detected_labels),
        )
        .route(
            "/loki/api/v1/detected_fields",
            get(drilldown::detected_fields),
        )
        .route(
            "/loki/api/v1/detected_field/{name}/values",
            get(drilldown::detected_field_values),
        )
        .route("/loki/api/v1/patterns", get(drilldown::patterns))
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route("/loki/api/v1/tail", get(tail::tail))
}

/// An error as Loki's API gives one, with the reason in `message`.
struct LokiError(Failure);

impl From<Failure> for LokiError {
    fn from(f: Failure) -> LokiError {
        LokiError(f)
    }
}

impl IntoResponse for LokiError {
    fn into_response(self) -> Response {
        let status = crate::http::status(self.0.code);
        let kind = if status == StatusCode::BAD_REQUEST {
            "bad_data"
        } else {
            "internal"
        };
        let body = json!({
            "status": "error",
            "errorType": kind,
            "error": self.0.message,
            "message": self.0.message,
        });
        (status, axum::Json(body)).into_response()
    }
}

type Answer = Result<Response, LokiError>;

fn bad(message: impl Into<String>) -> LokiError {
    LokiError(Failure::new(ErrorCode::BadQuery, message))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A time as Loki takes it: nanoseconds (more than 10 digits) or
/// seconds since the epoch, fractional seconds, or RFC 3339.
fn loki_time(text: &str, name: &str) -> Result<i64, LokiError> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Ok(if text.len() <= 10 {
            n.saturating_mul(1_000_000_000)
        } else {
            n
        });
    }
    if text.contains('.')
        && let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
    {
        return Ok((seconds * 1e9) as i64);
    }
    lode_index::parse_time(text, now_ns()).map_err(|e| {
        bad(format!(
            "{name}: '{text}' is not a time (ns or s since the epoch, or RFC 3339): {e}"
        ))
    })
}

/// `start`/`end` (default: the hour before now).
fn time_range(params: &[(String, String)]) -> Result<(i64, i64), LokiError> {
    let end = match param(params, "end") {
        Some(t) => loki_time(t, "end")?,
        None => now_ns(),
    };
    let start = match param(params, "start") {
        Some(t) => loki_time(t, "start")?,
        None => end.saturating_sub(DEFAULT_RANGE_NS),
    };
    if end < start {
        return Err(bad("end is before start"));
    }
    Ok((start, end))
}

/// A step as a duration (`30s`) or seconds (`30`, `0.5`); Loki's default
/// gives about 250 points.
fn step_ns(params: &[(String, String)], (start, end): (i64, i64)) -> Result<i64, LokiError> {
    let Some(text) = param(params, "step").or_else(|| param(params, "interval")) else {
        return Ok((end.saturating_sub(start) / 250 / 1_000_000_000).max(1) * 1_000_000_000);
    };
    let step = lode_logql::duration_ns(text).or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| (s * 1e9) as i64)
    });
    step.filter(|s| *s > 0).ok_or_else(|| {
        bad(format!(
            "step: '{text}' is not a positive duration or number of seconds"
        ))
    })
}

fn parse_query(params: &[(String, String)]) -> Result<Expr, LokiError> {
    let text = param(params, "query").ok_or_else(|| bad("query: missing"))?;
    lode_logql::parse(text).map_err(|e| bad(e.to_string()))
}

const TIMEOUT: &str = "the query ran past query_timeout_ms; narrow its time range or its selector";

/// lode's index as LogQL's source of records, within the query's time.
struct IndexSource<'a> {
    index: &'a Scoped<'a>,
    deadline: Instant,
    /// Records from this seq on are not visited (a tail sends them live).
    below_seq: u64,
}

impl IndexSource<'_> {
    fn in_time(&self) -> Result<(), Failure> {
        if Instant::now() > self.deadline {
            return Err(Failure::new(ErrorCode::Timeout, TIMEOUT));
        }
        Ok(())
    }
}

/// Stops a visit of records past the query's deadline, looked at every
/// 1024 records.
struct Clock {
    deadline: Instant,
    seen: u64,
    late: bool,
}

impl Clock {
    fn new(deadline: Instant) -> Clock {
        Clock {
            deadline,
            seen: 0,
            late: false,
        }
    }

    /// Whether the visit may go on.
    fn tick(&mut self) -> bool {
        self.seen += 1;
        if self.seen.is_multiple_of(1024) && Instant::now() > self.deadline {
            self.late = true;
        }
        !self.late
    }

    /// The visit's outcome: a timeout if it was stopped.
    fn after(&self) -> Result<(), Failure> {
        if self.late {
            return Err(Failure::new(ErrorCode::Timeout, TIMEOUT));
        }
        Ok(())
    }
}

impl Source for IndexSource<'_> {
    type Error = Failure;

    fn scan(
        &mut self,
        query: &str,
        since: i64,
        until: i64,
        visit: &mut dyn FnMut(&LogRecord) -> bool,
    ) -> Result<(), Failure> {
        self.in_time()?;
        let (mut clock, below_seq) = (Clock::new(self.deadline), self.below_seq);
        self.index
            .for_each_match(query, Some(since), Some(until), &mut |seq, record| {
                clock.tick() && (seq >= below_seq || visit(record))
            })?;
        clock.after()
    }

    fn visit(
        &mut self,
        query: &str,
        since: i64,
        until: i64,
        visit: &mut dyn FnMut(u64, &dyn Fields) -> bool,
    ) -> Result<(), Failure> {
        self.in_time()?;
        let (mut clock, below_seq) = (Clock::new(self.deadline), self.below_seq);
        self.index
            .visit_matches(query, Some(since), Some(until), &mut |seq, record| {
                clock.tick() && (seq >= below_seq || visit(seq, record.record))
            })?;
        clock.after()
    }

    fn histogram(
        &mut self,
        query: &str,
        origin: i64,
        width: i64,
        buckets: usize,
    ) -> Result<Vec<u64>, Failure> {
        self.in_time()?;
        Ok(self.index.histogram_at(query, origin, width, buckets)?)
    }

    fn levels(&mut self, query: &str, since: i64, until: i64) -> Result<Vec<String>, Failure> {
        self.in_time()?;
        let top = self.index.top_values(
            query,
            Some(since),
            Some(until),
            FacetField::Level,
            MAX_VALUES,
        )?;
        Ok(top.into_iter().map(|(value, _)| value).collect())
    }
}

fn evaluated<T>(result: Result<T, EvalError<Failure>>) -> Result<T, Failure> {
    result.map_err(|e| match e {
        EvalError::Query(message) => Failure::new(ErrorCode::BadQuery, message),
        EvalError::Source(failure) => failure,
    })
}

/// Runs `work` over the index on the blocking pool, within the query
/// time limit.
async fn over_index<T, F>(service: &Service, who: &Caller, work: F) -> Result<T, LokiError>
where
    T: Send + 'static,
    F: FnOnce(&mut IndexSource<'_>) -> Result<T, Failure> + Send + 'static,
{
    let deadline = Instant::now() + service.limits.query_timeout();
    Ok(service
        .timed(who, move |index| {
            work(&mut IndexSource {
                index,
                deadline,
                below_seq: u64::MAX,
            })
        })
        .await?)
}

fn success(data: Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// A sample's value as Prometheus writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn seconds(ns: i64) -> Value {
    if ns % 1_000_000_000 == 0 {
        json!(ns / 1_000_000_000)
    } else {
        json!(ns as f64 / 1e9)
    }
}

fn stats(started: Instant, lines: usize) -> Value {
    json!({"summary": {
        "execTime": started.elapsed().as_secs_f64(),
        "totalEntriesReturned": lines,
    }})
}

/// `GET|POST /loki/api/v1/query`: a metric query at one time (`time`,
/// default now); Grafana's health check is `vector(1)+vector(1)`.
async fn instant(State(service): Shared, who: Who, Form(params): Params) -> Answer {
    let started = Instant::now();
    let expr = parse_query(&params)?;
    let at = match param(&params, "time") {
        Some(t) => loki_time(t, "time")?,
        None => now_ns(),
    };
    if matches!(expr, Expr::Log(_)) {
        return Err(bad(
            "a log query is answered by query_range (with start, end and limit), not an instant query",
        ));
    }
    let steps = Steps {
        start: at,
        end: at,
        step: 0,
    };
    let metric = over_index(&service, &who, move |source| {
        evaluated(lode_logql::eval_metric(source, &expr, steps))
    })
    .await?;
    let (kind, result) = match metric {
        Metric::Scalar(v) => ("scalar", json!([seconds(at), number(v)])),
        Metric::Vector(series) => {
            let samples: Vec<Value> = series
                .iter()
                .filter_map(|s| {
                    let v = s.points.first().copied().flatten()?;
                    Some(json!({"metric": s.labels, "value": [seconds(at), number(v)]}))
                })
                .collect();
            ("vector", Value::Array(samples))
        }
    };
    Ok(success(
        json!({"resultType": kind, "result": result, "stats": stats(started, 0)}),
    ))
}

/// `GET|POST /loki/api/v1/query_range`: lines (`streams`) for a log
/// query, `limit` of them newest first (or oldest with
/// `direction=forward`); a `matrix` at each `step` for a metric query.
async fn range(State(service): Shared, who: Who, Form(params): Params) -> Answer {
    let started = Instant::now();
    let expr = parse_query(&params)?;
    let (start, end) = time_range(&params)?;
    match expr {
        Expr::Log(query) => {
            let limit = limit(&params, &service)?;
            let backward = match param(&params, "direction") {
                None | Some("backward" | "BACKWARD") => true,
                Some("forward" | "FORWARD") => false,
                Some(other) => {
                    return Err(bad(format!(
                        "direction: '{other}': expected backward or forward"
                    )));
                }
            };
            let entries = over_index(&service, &who, move |source| {
                evaluated(lode_logql::select_logs(
                    source,
                    &query,
                    (start, end),
                    limit,
                    backward,
                ))
            })
            .await?;
            let lines = entries.len();
            Ok(success(json!({
                "resultType": "streams",
                "result": streams(entries),
                "stats": stats(started, lines),
            })))
        }
        expr => {
            let steps = Steps {
                start,
                end,
                step: step_ns(&params, (start, end))?,
            };
            let metric = over_index(&service, &who, move |source| {
                evaluated(lode_logql::eval_metric(source, &expr, steps))
            })
            .await?;
            let series = match metric {
                Metric::Scalar(v) => vec![Series {
                    labels: Labels::new(),
                    points: vec![Some(v); steps.count()],
                }],
                Metric::Vector(series) => series,
            };
            let result: Vec<Value> = series.iter().map(|s| matrix_row(s, steps)).collect();
            Ok(success(json!({
                "resultType": "matrix",
                "result": result,
                "stats": stats(started, 0),
            })))
        }
    }
}

/// `limit` (default 100), at most the server's `max_result_records`.
fn limit(params: &[(String, String)], service: &Service) -> Result<usize, LokiError> {
    let limit = match param(params, "limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| bad(format!("limit: '{l}' is not a positive number")))?,
        None => 100,
    };
    let max = service.limits.max_result_records;
    if limit > max {
        return Err(LokiError(Failure::new(
            ErrorCode::TooLarge,
            format!("limit {limit} exceeds max_result_records = {max}"),
        )));
    }
    Ok(limit)
}

fn matrix_row(series: &Series, steps: Steps) -> Value {
    let values: Vec<Value> = series
        .points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some(json!([seconds(steps.at(i)), number((*p)?)])))
        .collect();
    json!({"metric": series.labels, "values": values})
}

/// Lines grouped by their labels, each stream in the lines' order.
fn streams(entries: Vec<Entry>) -> Vec<Value> {
    let mut order: Vec<Labels> = Vec::new();
    let mut by_labels: BTreeMap<Labels, Vec<Value>> = BTreeMap::new();
    for entry in entries {
        let values = by_labels.entry(entry.labels.clone()).or_insert_with(|| {
            order.push(entry.labels);
            Vec::new()
        });
        values.push(json!([entry.ts.to_string(), entry.line]));
    }
    order
        .into_iter()
        .filter_map(|labels| {
            let values = by_labels.remove(&labels)?;
            Some(json!({"stream": labels, "values": values}))
        })
        .collect()
}

/// The candidates of the `query` parameter when it is a log query (a
/// selector), `*` without one.
fn selector(params: &[(String, String)], name: &str) -> Result<String, LokiError> {
    match param(params, name) {
        None => Ok("*".into()),
        Some(text) if text.trim().is_empty() => Ok("*".into()),
        Some(text) => match lode_logql::parse(text).map_err(|e| bad(e.to_string()))? {
            Expr::Log(q) => Ok(q.candidates()),
            _ => Err(bad(format!(
                "{name}: expected a stream selector such as {{service_name=\"api\"}}"
            ))),
        },
    }
}

fn facet(name: &str) -> Option<FacetField> {
    match name {
        "service_name" | "service" | "app" | "job" => Some(FacetField::Service),
        "host" | "hostname" | "instance" => Some(FacetField::Host),
        "level" | "detected_level" | "severity" => Some(FacetField::Level),
        _ => None,
    }
}

/// The non-empty values of a field among the matches, most frequent
/// first (as lode's index holds them: lowercased).
fn values_of(
    index: &Scoped<'_>,
    query: &str,
    (start, end): (i64, i64),
    field: FacetField,
) -> Result<Vec<String>, Failure> {
    let top = index.top_values(
        query,
        Some(start),
        Some(end.saturating_add(1)),
        field,
        MAX_VALUES,
    )?;
    Ok(top
        .into_iter()
        .map(|(value, _)| value)
        .filter(|v| !v.is_empty())
        .collect())
}

/// `GET /loki/api/v1/labels`: the labels records in the range have.
async fn labels(State(service): Shared, who: Who, Form(params): Params) -> Answer {
    let range = time_range(&params)?;
    let query = selector(&params, "query")?;
    let names = service
        .timed(&who, move |index| {
            let mut names = Vec::new();
            for (name, field) in [
                ("host", FacetField::Host),
                ("level", FacetField::Level),
                ("service_name", FacetField::Service),
            ] {
                if !values_of(index, &query, range, field)?.is_empty() {
                    names.push(name);
                }
            }
            Ok(names)
        })
        .await?;
    Ok(success(json!(names)))
}

/// `GET /loki/api/v1/label/{name}/values`: a label's values in the
/// range (among the `query` selector's records when given).
async fn label_values(
    State(service): Shared,
    who: Who,
    Path(name): Path<String>,
    Form(params): Params,
) -> Answer {
    let range = time_range(&params)?;
    let query = selector(&params, "query")?;
    let Some(field) = facet(&name) else {
        // Attributes are not listed by value.
        return Ok(success(json!([])));
    };
    let values = service
        .timed(&who, move |index| values_of(index, &query, range, field))
        .await?;
    Ok(success(json!(values)))
}

/// The label sets (service, host, level) among the matches of `query`.
fn label_sets(index: &Scoped<'_>, query: &str, range: (i64, i64)) -> Result<Vec<Labels>, Failure> {
    let mut sets = vec![(query.to_owned(), Labels::new())];
    for (field, name, filter) in [
        (FacetField::Service, "service_name", "service"),
        (FacetField::Host, "host", "host"),
        (FacetField::Level, "level", "level"),
    ] {
        let mut next = Vec::new();
        for (query, labels) in sets {
            let values = values_of(index, &query, range, field)?;
            if values.is_empty() {
                next.push((query, labels));
                continue;
            }
            for value in values {
                if value.contains('"') || next.len() >= MAX_VALUES {
                    continue;
                }
                let mut labels = labels.clone();
                labels.insert(name.to_owned(), value.clone());
                let value = if field == FacetField::Level {
                    value
                } else {
                    format!("\"{value}\"")
                };
                next.push((format!("({query}) AND {filter}:{value}"), labels));
            }
        }
        sets = next;
    }
    Ok(sets.into_iter().map(|(_, labels)| labels).collect())
}

/// `GET|POST /loki/api/v1/series`: the label sets of the streams that
/// each `match[]` selects.
async fn series(State(service): Shared, who: Who, Form(params): Params) -> Answer {
    let range = time_range(&params)?;
    let mut queries = Vec::new();
    for (name, text) in &params {
        if name == "match[]" || name == "match" {
            match lode_logql::parse(text).map_err(|e| bad(e.to_string()))? {
                Expr::Log(q) => queries.push(q),
                _ => return Err(bad("match[]: expected a stream selector")),
            }
        }
    }
    if queries.is_empty() {
        queries.push(LogQuery {
            selector: Vec::new(),
            stages: Vec::new(),
        });
    }
    let sets = service
        .timed(&who, move |index| {
            let mut all = Vec::new();
            for q in &queries {
                for labels in label_sets(index, &q.candidates(), range)? {
                    if !all.contains(&labels) {
                        all.push(labels);
                    }
                }
            }
            Ok(all)
        })
        .await?;
    Ok(success(json!(sets)))
}

/// `GET /loki/api/v1/index/stats`: how much a selector would read:
/// its streams and entries, and the bytes of their messages estimated
/// from the newest 100. lode keeps no chunks; `chunks` is 0.
async fn index_stats(State(service): Shared, who: Who, Form(params): Params) -> Response {
    let answer = async {
        let (start, end) = time_range(&params)?;
        let query = selector(&params, "query")?;
        service
            .timed(&who, move |index| {
                let entries = index.count(&query, Some(start), Some(end.saturating_add(1)))?;
                let streams = label_sets(index, &query, (start, end))?.len();
                let sample = index.search(Search {
                    query: query.clone(),
                    since: Some(start),
                    until: Some(end.saturating_add(1)),
                    limit: Some(100),
                    ..Search::default()
                })?;
                let sampled: usize = sample.records.iter().map(|r| r.message.len()).sum();
                let bytes = match sample.records.len() {
                    0 => 0,
                    n => entries.saturating_mul(sampled as u64) / n as u64,
                };
                let streams = if entries == 0 { 0 } else { streams };
                Ok(json!({"streams": streams, "chunks": 0, "entries": entries, "bytes": bytes}))
            })
            .await
            .map_err(LokiError)
    };
    match answer.await {
        // Loki answers these bare, without the status wrapper.
        Ok(stats) => axum::Json(stats).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /loki/api/v1/status/buildinfo`: the Loki API version lode
/// answers as (Grafana picks its features by it), and lode's own.
async fn buildinfo() -> Response {
    axum::Json(json!({
        "version": "3.0.0",
        "revision": "lode",
        "branch": "lode",
        "buildUser": "lode",
        "buildDate": "",
        "goVersion": "",
        "lode_version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}
