//! lode's query API: a page of matches, counts, histograms, top values
//! and a live tail.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use lode_engine::now_ns;
use lode_protocol::json::{JsonRecord, to_json_line};
use lode_protocol::wire::Filter;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Shared, Who, bad_request};
use crate::service::{Failure, Service};

#[derive(Debug, Deserialize)]
pub(super) struct Params {
    #[serde(default)]
    q: String,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Histogram bucket width: `30s`, `5m`, `1h` or ns.
    width: Option<String>,
    field: Option<String>,
    k: Option<usize>,
    /// Tail: start at this seq instead of the next record.
    from_seq: Option<u64>,
    /// `linearizable`: the answer reflects every write acknowledged
    /// before the request, by any node; default `local` (what this node
    /// has applied and indexed).
    consistency: Option<String>,
}

pub(super) fn time(text: Option<&str>, name: &str) -> Result<Option<i64>, Failure> {
    text.map(|t| {
        lode_index::parse_time(t, now_ns()).map_err(|e| bad_request(format!("{name}: {e}")))
    })
    .transpose()
}

impl Params {
    /// The filter, once the read may start: after a read barrier when the
    /// request asks for a linearizable read.
    async fn read(&self, service: &Service) -> Result<Filter, Failure> {
        match self.consistency.as_deref() {
            None | Some("local") => {}
            Some("linearizable") => service.linearize().await?,
            Some(other) => {
                return Err(bad_request(format!(
                    "consistency '{other}': expected local or linearizable"
                )));
            }
        }
        self.filter()
    }

    fn filter(&self) -> Result<Filter, Failure> {
        Ok(Filter {
            query: self.q.clone(),
            since: time(self.since.as_deref(), "since")?,
            until: time(self.until.as_deref(), "until")?,
        })
    }
}

/// `1h` or `5m` or a number of ns.
pub(super) fn width(text: &str) -> Result<i64, Failure> {
    if let Ok(ns) = text.parse::<i64>() {
        return Ok(ns);
    }
    // A relative time is that long before 0: its negation is the duration.
    lode_index::parse_time(text, 0).map(|t| -t).map_err(|_| {
        bad_request(format!(
            "width '{text}': expected a duration like 30s, 5m, 1h or ns"
        ))
    })
}

pub(super) async fn query(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let page = service
        .query(
            &who,
            params.read(&service).await?,
            params.limit.unwrap_or(100),
            params.cursor.clone(),
        )
        .await?;
    let records: Vec<JsonRecord<'_>> = page
        .records
        .iter()
        .map(|r| JsonRecord::new(Some(r.seq), &r.log))
        .collect();
    Ok(axum::Json(json!({"records": records, "next_cursor": page.next_cursor})).into_response())
}

pub(super) async fn count(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let count = service.count(&who, params.read(&service).await?).await?;
    Ok(axum::Json(json!({ "count": count })).into_response())
}

pub(super) async fn histogram(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let width = params.width.as_deref().map(width).transpose()?;
    let h = service
        .histogram(&who, params.read(&service).await?, width)
        .await?;
    let buckets: Vec<Value> = h
        .buckets
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let start = h.start + i as i64 * h.width;
            json!({"start": lode_engine::format_rfc3339(start), "count": count})
        })
        .collect();
    Ok(axum::Json(json!({"width_ns": h.width, "buckets": buckets})).into_response())
}

pub(super) async fn top(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let field = params.field.as_deref().unwrap_or("service");
    let values = service
        .top(
            &who,
            params.read(&service).await?,
            field,
            params.k.unwrap_or(10),
        )
        .await?;
    let values: Vec<Value> = values
        .into_iter()
        .map(|(value, count)| json!({"value": value, "count": count}))
        .collect();
    Ok(axum::Json(json!({"field": field, "values": values})).into_response())
}

/// A body made of lines sent by a blocking tail thread.
pub(super) struct Lines(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Lines {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|line| line.map(Ok))
    }
}

/// `GET /api/v1/tail?q=`: matching records as JSON lines, as they arrive,
/// until the client goes away.
pub(super) async fn tail(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let mut tail = service.tail(&who, &params.q, params.from_seq)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::task::spawn_blocking(move || {
        while !tx.is_closed() {
            match tail.next_timeout(Duration::from_millis(200)) {
                Ok(Some(record)) => {
                    let mut line = Vec::new();
                    to_json_line(Some(record.seq), &record.log, &mut line);
                    if tx.blocking_send(Bytes::from(line)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let line = json!({"error": e.to_string()}).to_string() + "\n";
                    let _ = tx.blocking_send(Bytes::from(line));
                    return;
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(Lines(rx)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_and_times() {
        assert_eq!(width("5m").unwrap(), 300_000_000_000);
        assert_eq!(width("1000").unwrap(), 1000);
        assert!(width("fortnight").is_err());
        assert!(
            time(Some("yesterday"), "since")
                .unwrap_err()
                .message
                .contains("since")
        );
        assert!(time(Some("2h"), "until").unwrap().is_some());
    }
}
