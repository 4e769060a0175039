//! lode's own ingest (JSON lines), OTLP logs and journald uploads, and
//! what every push path shares: bodies unpacked by their encoding,
//! parsing on the blocking pool, idempotency keys.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lode_engine::{LogRecord, now_ns};
use lode_protocol::ErrorCode;
use lode_protocol::json::{Shape, parse_record};
use serde_json::{Value, json};

use super::{MAX_LISTED_ERRORS, Shared, Who, bad_request, status};
use crate::auth::{Caller, Scope};
use crate::metrics::Source;
use crate::service::{Failure, Service};

/// Records parsed from a body, and what was wrong with the other lines.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    records: Vec<LogRecord>,
    rejected: usize,
    errors: Vec<Value>,
}

impl Parsed {
    fn reject(&mut self, line: usize, error: String) {
        self.rejected += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(json!({"line": line, "error": error}));
        }
    }
}

pub(super) fn parse_lines(body: &[u8], now: i64) -> Parsed {
    let shape = Shape::default();
    let mut parsed = Parsed::default();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let outcome = std::str::from_utf8(line)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|text| parse_record(text, &shape, now));
        match outcome {
            Ok((record, _)) => parsed.records.push(record),
            Err(error) => parsed.reject(i + 1, error),
        }
    }
    parsed
}

pub(crate) async fn on_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))
}

/// `POST /api/v1/ingest`: JSON lines; answers once the accepted records
/// are durable.
pub(super) async fn ingest(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let parsed = parse_pushed(&service, &headers, body, |body| {
        Ok(parse_lines(body, now_ns()))
    })
    .await?;
    let total = parsed.records.len() + parsed.rejected;
    service.metrics.received(Source::Http, total as u64);
    service
        .metrics
        .rejected(Source::Http, parsed.rejected as u64);
    let accepted = parsed.records.len();
    if accepted > 0 {
        service
            .append_records(&who, parsed.records, idempotency_key(&headers))
            .await?;
    }
    Ok(axum::Json(json!({
        "accepted": accepted,
        "rejected": parsed.rejected,
        "errors": parsed.errors,
    }))
    .into_response())
}

/// Whether a request's body is protobuf (`application/x-protobuf`).
/// A push's `Idempotency-Key`: its retries land once (see
/// [`Service::append_records`]).
pub(crate) fn idempotency_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

pub(crate) fn is_protobuf(headers: &axum::http::HeaderMap) -> bool {
    header_lower(headers, axum::http::header::CONTENT_TYPE).contains("protobuf")
}

/// `POST /v1/logs` (and `/otlp/v1/logs`): OTLP logs in protobuf or
/// JSON, gzipped or not. 200 with an `ExportLogsServiceResponse` in the
/// request's encoding once the records are durable (`partialSuccess`
/// counts the records that could not be read); 400 for a body that is
/// no request; 429 or 503 with `Retry-After` when the server is busy.
/// A protobuf request's error is a `google.rpc.Status`, as the OTLP
/// spec asks.
pub(super) async fn otlp_logs(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let protobuf = is_protobuf(&headers);
    match otlp_write(&service, &who, &headers, body, protobuf).await {
        Ok(response) => response,
        Err(failure) => {
            let retry = matches!(failure.code, ErrorCode::Busy | ErrorCode::Unavailable)
                .then(|| failure.retry_after_s.unwrap_or(1).to_string());
            let mut response = if protobuf {
                let grpc = match failure.code {
                    ErrorCode::Busy | ErrorCode::NoSpace => 8,
                    ErrorCode::Unavailable => 14,
                    ErrorCode::TooLarge | ErrorCode::BadRequest => 3,
                    _ => 13,
                };
                let body = lode_protocol::otlp::status_proto(grpc, &failure.message);
                protobuf_response(status(failure.code), body)
            } else {
                failure.into_response()
            };
            if let Some(value) = retry.and_then(|r| HeaderValue::from_str(&r).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

pub(super) fn protobuf_response(code: StatusCode, body: Vec<u8>) -> Response {
    let content_type = [(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    )];
    (code, content_type, body).into_response()
}

pub(super) async fn otlp_write(
    service: &Arc<Service>,
    who: &Caller,
    headers: &axum::http::HeaderMap,
    body: Bytes,
    protobuf: bool,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let parsed = parse_pushed(service, headers, body, move |body| {
        let now = now_ns();
        if protobuf {
            lode_protocol::otlp::parse_logs_proto(body, now)
        } else {
            lode_protocol::otlp::parse_logs_json(body, now)
        }
        .map_err(|e| bad_request(format!("OTLP logs: {e}")))
    })
    .await?;
    let total = parsed.records.len() as u64 + parsed.rejected;
    service.metrics.received(Source::Otlp, total);
    service.metrics.rejected(Source::Otlp, parsed.rejected);
    service
        .append_records(who, parsed.records, idempotency_key(headers))
        .await?;
    if protobuf {
        let body =
            lode_protocol::otlp::response_proto(parsed.rejected, parsed.first_error.as_ref());
        return Ok(protobuf_response(StatusCode::OK, body));
    }
    let answer = match parsed.first_error {
        Some(e) => json!({"partialSuccess": {
            "rejectedLogRecords": parsed.rejected.to_string(),
            "errorMessage": e.to_string(),
        }}),
        None => json!({}),
    };
    Ok(axum::Json(answer).into_response())
}

/// `POST /upload`: what `systemd-journal-upload` sends, the journal
/// export format (chunked); 200 once every entry is durable, 400 naming
/// the offset of a damaged export (nothing is written).
pub(super) async fn journal_upload(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let records = parse_pushed(&service, &headers, body, |body| {
        lode_protocol::journal::parse_export(body, now_ns()).map_err(|e| bad_request(e.to_string()))
    })
    .await?;
    service
        .metrics
        .received(Source::Journal, records.len() as u64);
    service
        .append_records(&who, records, idempotency_key(&headers))
        .await?;
    Ok((StatusCode::OK, "OK.\n").into_response())
}

/// Parses a pushed body on the blocking pool, unpacked first when its
/// `Content-Encoding` says so (see [`unpack`]).
pub(crate) async fn parse_pushed<T: Send + 'static>(
    service: &Service,
    headers: &axum::http::HeaderMap,
    body: Bytes,
    parse: impl FnOnce(&[u8]) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let encoding = header_lower(headers, axum::http::header::CONTENT_ENCODING);
    let limit = service.limits.max_unpacked_bytes;
    on_blocking(move || parse(&unpack(&encoding, body, limit)?)).await?
}

/// A request header's value, lower case ("" when absent).
pub(crate) fn header_lower(
    headers: &axum::http::HeaderMap,
    name: axum::http::HeaderName,
) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// A body as its `Content-Encoding` packed it: none (or `identity`),
/// `gzip` or `zstd`, unpacked up to `limit` bytes (`max_unpacked_bytes`;
/// 413 as soon as the unpacking passes it, so a small bomb never fills
/// memory). Another encoding is 415.
pub(crate) fn unpack(encoding: &str, body: Bytes, limit: usize) -> Result<Bytes, Failure> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match encoding.trim() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| bad_request(format!("zstd body: {e}")))?,
        ),
        other => {
            return Err(Failure::new(
                ErrorCode::Unsupported,
                format!("Content-Encoding '{other}': expected gzip, zstd or none"),
            ));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad_request(format!("{encoding} body: {e}")))?;
    if out.len() > limit {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("the {encoding} body unpacks to over limits.max_unpacked_bytes = {limit}"),
        ));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_lines_are_kept_or_rejected_one_by_one() {
        let body = b"{\"message\":\"a\"}\n\nnot json\r\n{\"ts\":\"bad\"}\n{\"message\":\"b\",\"level\":\"W\"}";
        let parsed = parse_lines(body, 5);
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(parsed.rejected, 2);
        assert_eq!(parsed.errors[0]["line"], 3);
        assert_eq!(parsed.errors[1]["line"], 4);
        assert_eq!(parsed.records[1].level, lode_engine::Level::Warn);
    }

    #[test]
    fn bodies_unpack_by_their_encoding_within_the_limit() {
        use std::io::Write as _;
        let plain = Bytes::from_static(b"{\"message\":\"a\"}\n");
        assert_eq!(unpack("", plain.clone(), 10).unwrap(), plain);
        assert_eq!(unpack("identity", plain.clone(), 10).unwrap(), plain);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        assert_eq!(unpack("gzip", gz.clone(), 100).unwrap(), plain);
        let over = unpack("gzip", gz, 5).unwrap_err();
        assert_eq!(over.code, ErrorCode::TooLarge);
        assert!(
            over.message.contains("max_unpacked_bytes = 5"),
            "{}",
            over.message
        );
        let zstd = Bytes::from(zstd::encode_all(&plain[..], 1).unwrap());
        assert_eq!(unpack("zstd", zstd, 100).unwrap(), plain);
        let odd = unpack("br", plain.clone(), 100).unwrap_err();
        assert_eq!(
            (odd.code, status(odd.code)),
            (ErrorCode::Unsupported, StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            unpack("gzip", plain, 100).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }
}
