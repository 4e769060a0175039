//! `lode bench`'s HTTP ingest, in the formats shippers send: lode's JSON
//! lines, Loki's push in protobuf compressed with snappy (Promtail, Alloy,
//! Vector), and OTLP logs in protobuf (OpenTelemetry SDKs and
//! collectors). The same records in each; every body is encoded before
//! the clock starts, so the figures are the server's (reading, decoding,
//! appending until durable), not the shipper's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lode_engine::LogRecord;
use lode_protocol::{loki, otlp};
use lode_tools::to_json_line;

use crate::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    JsonLines,
    LokiProtobuf,
    OtlpProtobuf,
}

impl Format {
    pub(crate) const ALL: [Format; 3] = [
        Format::JsonLines,
        Format::LokiProtobuf,
        Format::OtlpProtobuf,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::JsonLines => "http json lines",
            Format::LokiProtobuf => "loki push, protobuf + snappy",
            Format::OtlpProtobuf => "otlp logs, protobuf",
        }
    }

    fn head(self, length: usize) -> String {
        let (path, kind) = match self {
            Format::JsonLines => ("/api/v1/ingest", "application/x-ndjson"),
            Format::LokiProtobuf => ("/loki/api/v1/push", "application/x-protobuf"),
            Format::OtlpProtobuf => ("/v1/logs", "application/x-protobuf"),
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: lode\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n"
        )
    }

    fn encode(self, records: &[LogRecord]) -> Vec<u8> {
        match self {
            Format::JsonLines => {
                let mut body = Vec::with_capacity(records.len() * 256);
                for record in records {
                    to_json_line(None, record, &mut body);
                }
                body
            }
            Format::LokiProtobuf => loki_body(records),
            Format::OtlpProtobuf => otlp_body(records),
        }
    }

    /// The records a request's answer acknowledges, or why it did not.
    fn accepted(self, status: u16, body: &[u8], sent: usize) -> Result<u64, String> {
        let text = || String::from_utf8_lossy(body).into_owned();
        match (self, status) {
            (Format::JsonLines, 200) => {
                let answer = text();
                answer
                    .split("\"accepted\":")
                    .nth(1)
                    .and_then(|rest| rest.split([',', '}']).next())
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .ok_or_else(|| format!("unexpected answer: {answer}"))
            }
            (Format::LokiProtobuf, 204) => Ok(sent as u64),
            (Format::OtlpProtobuf, 200) => {
                let answer: otlp::pb::ExportLogsServiceResponse =
                    prost::Message::decode(body).map_err(|e| format!("answer: {e}"))?;
                let rejected = answer.partial_success.map_or(0, |p| p.rejected_log_records);
                Ok((sent as u64).saturating_sub(rejected.max(0) as u64))
            }
            (_, status) => Err(format!("http status {status}: {}", text())),
        }
    }
}

/// A Loki push as a shipper makes one: a stream per label set (service,
/// host, level), attributes as structured metadata.
fn loki_body(records: &[LogRecord]) -> Vec<u8> {
    use loki::pb;
    let mut streams: Vec<pb::StreamAdapter> = Vec::new();
    for record in records {
        let labels = format!(
            "{{service_name={:?}, host={:?}, level={:?}}}",
            record.service,
            record.host,
            record.level.as_str()
        );
        let entry = pb::EntryAdapter {
            timestamp: Some(pb::Timestamp {
                seconds: record.ts.div_euclid(1_000_000_000),
                nanos: record.ts.rem_euclid(1_000_000_000) as i32,
            }),
            line: record.message.clone().into_bytes(),
            structured_metadata: record
                .attrs
                .iter()
                .map(|(name, value)| pb::LabelPairAdapter {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        };
        match streams.iter_mut().find(|s| s.labels == labels) {
            Some(stream) => stream.entries.push(entry),
            None => streams.push(pb::StreamAdapter {
                labels,
                entries: vec![entry],
                hash: 0,
            }),
        }
    }
    let message = prost::Message::encode_to_vec(&pb::PushRequest { streams });
    snap::raw::Encoder::new()
        .compress_vec(&message)
        .unwrap_or_default()
}

fn text(value: &str) -> Option<otlp::pb::AnyValue> {
    Some(otlp::pb::AnyValue {
        value: Some(otlp::pb::any_value::Value::StringValue(value.to_owned())),
    })
}

fn key_value(key: &str, value: &str) -> otlp::pb::KeyValue {
    otlp::pb::KeyValue {
        key: key.to_owned(),
        value: text(value),
    }
}

/// An OTLP export as an SDK makes one: a resource per service and host.
fn otlp_body(records: &[LogRecord]) -> Vec<u8> {
    use otlp::pb;
    let mut resources: Vec<((String, String), Vec<pb::LogRecord>)> = Vec::new();
    for record in records {
        let log = pb::LogRecord {
            time_unix_nano: record.ts.max(0) as u64,
            severity_text: record.level.as_str().to_owned(),
            body: text(&record.message),
            attributes: record.attrs.iter().map(|(k, v)| key_value(k, v)).collect(),
            ..Default::default()
        };
        let key = (record.service.clone(), record.host.clone());
        match resources.iter_mut().find(|(k, _)| *k == key) {
            Some((_, logs)) => logs.push(log),
            None => resources.push((key, vec![log])),
        }
    }
    let resource_logs = resources
        .into_iter()
        .map(|((service, host), log_records)| pb::ResourceLogs {
            resource: Some(pb::Resource {
                attributes: vec![
                    key_value("service.name", &service),
                    key_value("host.name", &host),
                ],
            }),
            scope_logs: vec![pb::ScopeLogs { log_records }],
        })
        .collect();
    prost::Message::encode_to_vec(&pb::ExportLogsServiceRequest { resource_logs })
}

/// POSTs `records` in `format`, `batch` per request, over `connections`
/// keep-alive connections, each waiting for an answer before its next
/// request; records acknowledged per second.
pub(crate) fn ingest(
    format: Format,
    addr: &str,
    records: &[LogRecord],
    batch: usize,
    connections: usize,
) -> Result<f64, CliError> {
    let requests: Vec<(usize, Vec<u8>)> = records
        .chunks(batch.max(1))
        .map(|chunk| (chunk.len(), format.encode(chunk)))
        .collect();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (requests, next, addr) =
                (Arc::clone(&requests), Arc::clone(&next), addr.to_owned());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut stream = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
                let _ = stream.set_nodelay(true);
                let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
                let mut accepted = 0;
                while let Some((sent, body)) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                    stream
                        .write_all(format.head(body.len()).as_bytes())
                        .and_then(|()| stream.write_all(body))
                        .map_err(|e| e.to_string())?;
                    let (status, answer) = read_response(&mut reader)?;
                    accepted += format.accepted(status, &answer, *sent)?;
                }
                Ok(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for worker in workers {
        accepted += worker
            .join()
            .map_err(|_| CliError::new("an http worker panicked"))?
            .map_err(|e| CliError::new(format!("{}: {e}", format.name())))?;
    }
    if accepted != records.len() as u64 {
        return Err(CliError::new(format!(
            "{}: {accepted} of {} records acknowledged",
            format.name(),
            records.len()
        )));
    }
    Ok(accepted as f64 / started.elapsed().as_secs_f64())
}

/// An HTTP/1.1 answer with a `Content-Length` (or none): status and body.
pub(crate) fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, Vec<u8>), String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an http answer: {}", line.trim()))?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(|e| e.to_string())?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value
                .trim()
                .parse()
                .map_err(|_| "content-length".to_owned())?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each encoder's body reads back, through lode's own decoders, as the
    /// records it was made of.
    #[test]
    fn bodies_decode_to_their_records() {
        let records = lode_tools::Corpus::new(3).take_records(50);
        let loki = loki_body(&records);
        let loki = loki::unsnappy(&loki, 1 << 24).unwrap();
        let parsed = loki::parse_push_proto(&loki).unwrap();
        assert_eq!(parsed.len(), records.len());
        let otlp = otlp::parse_logs_proto(&otlp_body(&records), 0).unwrap();
        assert_eq!(otlp.records.len(), records.len());
        for got in [&parsed, &otlp.records] {
            for record in &records {
                assert!(
                    got.iter().any(|r| r.message == record.message
                        && r.service == record.service
                        && r.host == record.host
                        && r.level == record.level
                        && r.ts == record.ts),
                    "{record:?}"
                );
            }
        }
    }
}
