//! `GET /loki/api/v1/tail`: Loki's live tail over a WebSocket, as
//! Grafana's Explore (live mode) and `logcli query --tail` use it.
//!
//! The socket first gets the newest `limit` lines since `start` (default:
//! the last hour), oldest first, then every new matching line as it is
//! appended, each frame `{"streams": [...]}` as Loki sends them. The
//! subscription starts at the engine's next seq before the backfill is
//! read, and the backfill skips records from that seq on, so no line is
//! sent twice or missed between the two. `delay_for` is accepted and
//! ignored: lines are sent as soon as they are durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Form, State};
use lode_engine::now_ns;
use lode_index::Tail;
use lode_logql::{Entry, Expr, LogQuery};
use lode_protocol::ErrorCode;
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    Answer, DEFAULT_RANGE_NS, LokiError, Params, Shared, Who, bad, evaluated, limit, loki_time,
    over_index, param, parse_query, streams,
};
use crate::auth::Caller;
use crate::service::{Failure, Service};

/// Most lines one frame carries.
const MAX_FRAME_LINES: usize = 1000;

/// How often the follower checks that the socket is still wanted.
const POLL: Duration = Duration::from_millis(200);

/// What a tail starts from.
struct Start {
    query: LogQuery,
    since: i64,
    limit: usize,
    /// The first seq sent live; the backfill reads those before it.
    live_from: u64,
}

pub(super) async fn tail(
    State(service): Shared,
    who: Who,
    upgrade: WebSocketUpgrade,
    Form(params): Params,
) -> Answer {
    let query = match parse_query(&params)? {
        Expr::Log(query) => query,
        _ => {
            return Err(bad(
                "tail: expected a log query such as {service_name=\"api\"} |= \"error\", not a metric query",
            ));
        }
    };
    let limit = limit(&params, &service)?;
    let since = match param(&params, "start") {
        Some(t) => loki_time(t, "start")?,
        None => now_ns().saturating_sub(DEFAULT_RANGE_NS),
    };
    let live_from = service.engine().next_seq();
    let live = service.tail(&who, &query.candidates(), Some(live_from))?;
    let start = Start {
        query,
        since,
        limit,
        live_from,
    };
    let who = who.0;
    Ok(upgrade.on_upgrade(move |socket| stream(service, who, start, live, socket)))
}

/// Sends the backfill, then new lines, until the client goes away or the
/// subscription fails (the socket is then closed with the reason).
async fn stream(
    service: Arc<Service>,
    who: Caller,
    start: Start,
    live: Tail,
    mut socket: WebSocket,
) {
    let query = start.query.clone();
    match backfill(&service, &who, start).await {
        Ok(entries) if entries.is_empty() => {}
        Ok(entries) => {
            if send(&mut socket, entries).await.is_err() {
                return;
            }
        }
        Err(LokiError(failure)) => return close(socket, &failure.message).await,
    }
    let (tx, mut rx) = mpsc::channel(MAX_FRAME_LINES);
    tokio::task::spawn_blocking(move || follow(live, &query, &tx));
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(Ok(entry)) => {
                    let mut frame = vec![entry];
                    while frame.len() < MAX_FRAME_LINES {
                        match rx.try_recv() {
                            Ok(Ok(entry)) => frame.push(entry),
                            _ => break,
                        }
                    }
                    if send(&mut socket, frame).await.is_err() {
                        return;
                    }
                }
                Some(Err(reason)) => return close(socket, &reason).await,
                None => return,
            },
            message = socket.recv() => match message {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The newest `limit` matching lines since `since` among the records
/// before `live_from`, oldest first, once those are all searchable.
async fn backfill(service: &Service, who: &Caller, start: Start) -> Result<Vec<Entry>, LokiError> {
    let mut entries = over_index(service, who, move |source| {
        let wait = source.deadline.saturating_duration_since(Instant::now());
        let last = start.live_from.saturating_sub(1);
        if !source.index.wait_indexed(last, wait) {
            return Err(Failure::new(
                ErrorCode::Timeout,
                format!("the index did not reach seq {last} within query_timeout_ms"),
            ));
        }
        source.below_seq = start.live_from;
        let range = (start.since, now_ns().saturating_add(1));
        evaluated(lode_logql::select_logs(
            source,
            &start.query,
            range,
            start.limit,
            true,
        ))
    })
    .await?;
    entries.reverse();
    Ok(entries)
}

/// Runs on the blocking pool: passes on each new record the query keeps,
/// until the receiver is gone; a failure is passed on as its reason.
fn follow(mut live: Tail, query: &LogQuery, tx: &mpsc::Sender<Result<Entry, String>>) {
    while !tx.is_closed() {
        match live.next_timeout(POLL) {
            Ok(Some(record)) => {
                let Some(sampled) = query.sample(&record.log) else {
                    continue;
                };
                let entry = Entry {
                    ts: record.log.ts,
                    line: sampled.line.unwrap_or(record.log.message),
                    labels: sampled.labels,
                };
                if tx.blocking_send(Ok(entry)).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        }
    }
}

async fn send(socket: &mut WebSocket, entries: Vec<Entry>) -> Result<(), axum::Error> {
    let frame = json!({ "streams": streams(entries) });
    socket.send(Message::Text(frame.to_string().into())).await
}

/// Closes the socket with `reason` (cut to the 123 bytes a close frame
/// holds).
async fn close(mut socket: WebSocket, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code: close_code::ERROR,
        reason: reason.get(..end).unwrap_or_default().into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}
