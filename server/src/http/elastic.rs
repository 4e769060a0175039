//! Enough of Elasticsearch's API for the shippers that speak it:
//! `_bulk` and single documents.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lode_engine::{LogRecord, now_ns};
use lode_protocol::json::{Shape, parse_record};
use serde_json::{Map, Value, json};

use super::ingest::{idempotency_key, parse_pushed};
use super::{Shared, Who, bad_request, status};
use crate::auth::Scope;
use crate::metrics::Source;
use crate::service::{Failure, Service};

/// One `_bulk` action and the record it carries, if any.
#[derive(Debug)]
pub(super) enum Item {
    Record {
        op: String,
        index: String,
        at: usize,
    },
    Refused {
        op: String,
        index: String,
        status: u16,
        kind: &'static str,
        reason: String,
    },
}

pub(super) fn bulk_error(reason: String) -> Response {
    let body = json!({
        "error": {"type": "illegal_argument_exception", "reason": reason},
        "status": 400,
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// Reads `_bulk` NDJSON: action lines, each `index`/`create` followed by
/// its document. `update` and `delete` are refused per item: lode is
/// append-only.
pub(super) fn parse_bulk(
    body: &[u8],
    default_index: Option<&str>,
    now: i64,
) -> Result<(Vec<Item>, Vec<LogRecord>), String> {
    let shape = Shape::default();
    let mut lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let (mut items, mut records) = (Vec::new(), Vec::new());
    while let Some((n, line)) = lines.next() {
        let action: Map<String, Value> = serde_json::from_slice(line)
            .map_err(|e| format!("line {}: the action is not a JSON object: {e}", n + 1))?;
        let Some((op, meta)) = action.into_iter().next() else {
            return Err(format!("line {}: empty action", n + 1));
        };
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .or(default_index)
            .unwrap_or("")
            .to_owned();
        match op.as_str() {
            "index" | "create" => {
                let Some((_, doc)) = lines.next() else {
                    return Err(format!("line {}: '{op}' without a document", n + 1));
                };
                let parsed = std::str::from_utf8(doc)
                    .map_err(|e| format!("the document is not UTF-8: {e}"))
                    .and_then(|text| parse_record(text, &shape, now));
                match parsed {
                    Ok((mut record, _)) => {
                        if record.service.is_empty() {
                            record.service = index.clone();
                        }
                        items.push(Item::Record {
                            op,
                            index,
                            at: records.len(),
                        });
                        records.push(record);
                    }
                    Err(reason) => items.push(Item::Refused {
                        op,
                        index,
                        status: 400,
                        kind: "document_parsing_exception",
                        reason,
                    }),
                }
            }
            "update" | "delete" => {
                if op == "update" {
                    lines.next();
                }
                items.push(Item::Refused {
                    reason: format!("lode is append-only: '{op}' is not supported"),
                    op,
                    index,
                    status: 400,
                    kind: "illegal_argument_exception",
                });
            }
            other => return Err(format!("line {}: unknown action '{other}'", n + 1)),
        }
    }
    Ok((items, records))
}

pub(super) async fn bulk(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    bulk_body(service, who, None, headers, body).await
}

pub(super) async fn bulk_into(
    State(service): Shared,
    who: Who,
    Path(index): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    bulk_body(service, who, Some(index), headers, body).await
}

/// `POST /{index}/_bulk` and `/_bulk`: answers per item, in request order,
/// once the accepted documents are durable.
pub(super) async fn bulk_body(
    service: Arc<Service>,
    who: Who,
    index: Option<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(failure) = who.require(Scope::Ingest) {
        return failure.into_response();
    }
    let started = Instant::now();
    let parsed = parse_pushed(&service, &headers, body, move |body| {
        Ok(parse_bulk(body, index.as_deref(), now_ns()))
    })
    .await;
    let (items, records) = match parsed {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(reason)) => return bulk_error(reason),
        Err(failure) => return failure.into_response(),
    };
    service.metrics.received(Source::Bulk, items.len() as u64);
    let refused = items
        .iter()
        .filter(|i| matches!(i, Item::Refused { .. }))
        .count();
    service.metrics.rejected(Source::Bulk, refused as u64);
    let appended = if records.is_empty() {
        Ok(crate::service::Appended::default())
    } else {
        service
            .append_records(&who, records, idempotency_key(&headers))
            .await
    };
    let mut errors = refused > 0;
    let answers: Vec<Value> = items
        .into_iter()
        .map(|item| match (item, &appended) {
            (Item::Record { op, index, at }, Ok(appended)) => {
                let seq = appended.seq_of(at as u64).unwrap_or_default();
                json!({ op: {
                    "_index": index, "_id": seq.to_string(), "_version": 1,
                    "result": "created", "status": 201, "_seq_no": seq, "_primary_term": 1,
                    "_shards": {"total": 1, "successful": 1, "failed": 0},
                }})
            }
            (Item::Record { op, index, .. }, Err(failure)) => {
                errors = true;
                json!({ op: {
                    "_index": index, "status": status(failure.code).as_u16(),
                    "error": {"type": failure.code.name(), "reason": failure.message},
                }})
            }
            (
                Item::Refused {
                    op,
                    index,
                    status,
                    kind,
                    reason,
                },
                _,
            ) => json!({ op: {
                "_index": index, "status": status,
                "error": {"type": kind, "reason": reason},
            }}),
        })
        .collect();
    let took = started.elapsed().as_millis() as u64;
    axum::Json(json!({"took": took, "errors": errors, "items": answers})).into_response()
}

/// `PUT /{index}/_doc/{id}`: one document; the id is not kept (lode gives
/// each record its seq).
pub(super) async fn doc_with_id(
    state: Shared,
    who: Who,
    Path((index, _id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Failure> {
    doc_into(state, who, Path(index), body).await
}

/// `POST /{index}/_doc`: one document.
pub(super) async fn doc_into(
    State(service): Shared,
    who: Who,
    Path(index): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| bad_request(format!("the document is not UTF-8: {e}")))?;
    let (mut record, _) = parse_record(text, &Shape::default(), now_ns()).map_err(bad_request)?;
    if record.service.is_empty() {
        record.service = index.clone();
    }
    service.metrics.received(Source::Bulk, 1);
    let seq = service
        .append_records(&who, vec![record], None)
        .await?
        .seq_of(0)
        .unwrap_or_default();
    let body = json!({
        "_index": index, "_id": seq.to_string(), "_version": 1, "result": "created",
        "_seq_no": seq, "_primary_term": 1,
        "_shards": {"total": 1, "successful": 1, "failed": 0},
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_keep_request_order() {
        let body = b"{\"index\":{\"_index\":\"web\"}}\n{\"message\":\"one\"}\n\
{\"delete\":{\"_index\":\"web\",\"_id\":\"1\"}}\n\
{\"create\":{}}\n[1]\n\
{\"index\":{}}\n{\"message\":\"two\",\"service\":\"api\"}\n";
        let (items, records) = parse_bulk(body, Some("logs"), 0).unwrap();
        assert_eq!(items.len(), 4);
        assert!(matches!(&items[0], Item::Record { at: 0, index, .. } if index == "web"));
        assert!(matches!(&items[1], Item::Refused { op, .. } if op == "delete"));
        assert!(matches!(&items[2], Item::Refused { status: 400, .. }));
        assert!(matches!(&items[3], Item::Record { at: 1, index, .. } if index == "logs"));
        assert_eq!(records[0].service, "web");
        assert_eq!(records[1].service, "api");
        assert!(parse_bulk(b"{\"frobnicate\":{}}\n", None, 0).is_err());
        assert!(parse_bulk(b"{\"index\":{}}\n", None, 0).is_err());
    }
}
