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
use std::time::{Duration, Instant};

use lode_engine::LogRecord;
use lode_protocol::{loki, otlp};
use lode_tools::{to_json_line, url_encode};
use serde_json::Value;

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

    /// The path a body of this format is posted to, and its type.
    fn route(self) -> (&'static str, &'static str) {
        match self {
            Format::JsonLines => ("/api/v1/ingest", "application/x-ndjson"),
            Format::LokiProtobuf => ("/loki/api/v1/push", "application/x-protobuf"),
            Format::OtlpProtobuf => ("/v1/logs", "application/x-protobuf"),
        }
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

/// Where the benchmark's HTTP requests go, and how: plain, or over TLS
/// trusting `tls`'s roots, with a bearer token or without.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) addr: String,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) token: Option<String>,
}

/// A byte stream a session runs over: TCP, or TLS over TCP.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Session {
    reader: BufReader<Box<dyn Stream>>,
    /// Headers every request carries: the host, the credential.
    common: String,
}

impl Endpoint {
    pub(crate) fn plain(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_owned(),
            tls: None,
            token: None,
        }
    }

    pub(crate) fn connect(&self) -> Result<Session, String> {
        let tcp = TcpStream::connect(&self.addr).map_err(|e| format!("{}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                // The servers' self-signed certificates name localhost.
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(|e| e.to_string())?;
                let connection = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| e.to_string())?;
                Box::new(rustls::StreamOwned::new(connection, tcp))
            }
        };
        let mut common = "Host: lode\r\n".to_owned();
        if let Some(token) = &self.token {
            common.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        Ok(Session {
            reader: BufReader::new(stream),
            common,
        })
    }
}

impl Session {
    /// One request and its answer: status and body.
    pub(crate) fn send(
        &mut self,
        method: &str,
        target: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let head = format!(
            "{method} {target} HTTP/1.1\r\n{}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.common,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .and_then(|()| stream.flush())
            .map_err(|e| e.to_string())?;
        read_response(&mut self.reader)
    }

    /// `GET path?params`, answered 200 with JSON.
    pub(crate) fn get_json(
        &mut self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        let target = format!("{path}?{}", query.join("&"));
        let (status, body) = self
            .send("GET", &target, "application/json", b"")
            .map_err(CliError::new)?;
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| CliError::new(format!("{path}: {e}")))?;
        if status != 200 {
            return Err(CliError::new(format!("{path}: {status} {value}")));
        }
        Ok(value)
    }
}

/// POSTs `records` in `format`, `batch` per request, over `connections`
/// keep-alive connections to `endpoint`, each waiting for an answer
/// before its next request; records acknowledged per second.
pub(crate) fn ingest(
    format: Format,
    endpoint: &Endpoint,
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
    let (path, kind) = format.route();
    let started = Instant::now();
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (requests, next, endpoint) =
                (Arc::clone(&requests), Arc::clone(&next), endpoint.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut session = endpoint.connect()?;
                let mut accepted = 0;
                while let Some((sent, body)) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (status, answer) = session.send("POST", path, kind, body)?;
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

/// Polls `/metrics` until the server's index lag is 0: every record
/// acknowledged so far is searchable.
pub(crate) fn wait_searchable(endpoint: &Endpoint, within: Duration) -> Result<(), CliError> {
    let mut session = endpoint.connect().map_err(CliError::new)?;
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = session
            .send("GET", "/metrics", "text/plain", b"")
            .map_err(CliError::new)?;
        let text = String::from_utf8_lossy(&body);
        let lag = text
            .lines()
            .find_map(|line| line.strip_prefix("lode_index_lag "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        match lag {
            Some(0.0) => return Ok(()),
            None => {
                return Err(CliError::new(format!(
                    "/metrics ({status}) has no lode_index_lag"
                )));
            }
            Some(_) if Instant::now() > deadline => {
                return Err(CliError::new("the index did not catch up"));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// An HTTP/1.1 answer with a `Content-Length` (or none): status and body.
fn read_response(reader: &mut impl BufRead) -> Result<(u16, Vec<u8>), String> {
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
