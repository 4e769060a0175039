//! Loki's push API: JSON and snappy-compressed protobuf streams.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lode_protocol::ErrorCode;

use crate::auth::Scope;
use crate::http::ingest::{idempotency_key, is_protobuf, parse_pushed};
use crate::http::{Shared, Who, bad_request};
use crate::metrics::Source;
use crate::service::Failure;

/// `POST /loki/api/v1/push`: Loki's push, in protobuf compressed with
/// snappy's block format (`Content-Type: application/x-protobuf`, what
/// Promtail, Alloy and Vector send) or JSON, either gzipped or not; 204
/// once every record is durable (committed, in a cluster), 400 naming
/// the place of the first malformed stream or value (nothing is
/// written).
pub(crate) async fn loki_push(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let protobuf = is_protobuf(&headers);
    let limit = service.limits.max_unpacked_bytes;
    let parsed = parse_pushed(&service, &headers, body, move |body| {
        let push = |e| bad_request(format!("Loki push: {e}"));
        if !protobuf {
            return lode_protocol::loki::parse_push_json(body).map_err(push);
        }
        let len = lode_protocol::loki::snappy_len(body).map_err(push)?;
        if len > limit {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "the snappy body unpacks to {len} bytes, over limits.max_unpacked_bytes = {limit}"
                ),
            ));
        }
        lode_protocol::loki::unsnappy(body, limit)
            .and_then(|body| lode_protocol::loki::parse_push_proto(&body))
            .map_err(push)
    })
    .await?;
    service.metrics.received(Source::Loki, parsed.len() as u64);
    service
        .append_records(&who, parsed, idempotency_key(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
