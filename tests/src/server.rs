//! The server over loopback: every operation over TCP and QUIC, bad input
//! that must close only its own connection, the HTTP API and
//! Elasticsearch `_bulk`, syslog, and SIGKILL of the server during binary
//! and HTTP ingest.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lode_client::{Batcher, Client, ClientError, ClientOptions, ErrorCode, Filter};
use lode_engine::{Engine, Level, LogRecord, Options};
use lode_protocol::wire::{self, FRAME_HEADER, HELLO_LEN, HelloStatus, Kind};
use lode_protocol::{loki, otlp};
use lode_server::{Addresses, Config, Server};
use lode_tools::SplitMix64;
use serde_json::Value;

use crate::record_for;

fn loopback() -> Option<SocketAddr> {
    "127.0.0.1:0".parse().ok()
}

fn config(data: &Path) -> Config {
    Config {
        data: data.to_owned(),
        listen: loopback(),
        quic: loopback(),
        http: loopback(),
        syslog: loopback(),
        ..Config::default()
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Bounds every async step of a test: long enough for a 2-core machine
/// that also runs a browser and SIGKILL tests beside it (a step of
/// `every_operation_over_tcp_and_quic` once took over 30 s so), short
/// enough that a hang fails.
async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), work)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than 90 s"))
}

fn filter(query: &str) -> Filter {
    Filter {
        query: query.into(),
        ..Filter::default()
    }
}

async fn clients(addresses: &Addresses) -> Vec<(&'static str, Client)> {
    let tcp = Client::connect_tcp(&addresses.tcp.unwrap().to_string())
        .await
        .unwrap();
    let quic = Client::connect_quic(
        addresses.quic.unwrap(),
        addresses.cert.as_deref().unwrap(),
        "localhost",
    )
    .await
    .unwrap();
    vec![("tcp", tcp), ("quic", quic)]
}

async fn wait_indexed(server: &Server) {
    let service = std::sync::Arc::clone(server.service());
    tokio::task::spawn_blocking(move || assert!(service.wait_indexed(Duration::from_secs(20))))
        .await
        .unwrap();
}

#[test]
fn every_operation_over_tcp_and_quic() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let server = Server::start(config(dir.path())).await.unwrap();
        for (name, client) in clients(server.addresses()).await {
            within(name, async {
                assert!(client.ping().await.unwrap().starts_with("lode "));
                let service = format!("svc-{name}");
                let batch: Vec<LogRecord> = (0..250)
                    .map(|i| LogRecord {
                        ts: 1_800_000_000_000_000_000 + i * 1_000_000_000,
                        level: if i % 5 == 0 { Level::Error } else { Level::Info },
                        service: service.clone(),
                        host: format!("h{}", i % 3),
                        attrs: vec![("i".into(), i.to_string())],
                        message: format!("request {i} served over {name}"), tenant: String::new(), })
                    .collect();
                let first = client.append(&batch[..100]).await.unwrap();
                let second = client.append(&batch[100..]).await.unwrap();
                assert_eq!(first.end, second.start, "{name}: seqs are dense");
                wait_indexed(&server).await;

                // Paging with the cursor walks all 250, newest first.
                let query = format!("service:{service}");
                let mut seen = Vec::new();
                let mut cursor = None;
                loop {
                    let page = client.query(filter(&query), 70, cursor).await.unwrap();
                    seen.extend(page.records.iter().map(|r| r.seq));
                    match page.next_cursor {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                let expected: Vec<u64> = (first.start..second.end).rev().collect();
                assert_eq!(seen, expected, "{name}: pages");

                let errors = format!("{query} level:error");
                assert_eq!(client.count(filter(&errors)).await.unwrap(), 50);
                let hist = client.histogram(filter(&query), Some(100_000_000_000)).await.unwrap();
                assert_eq!(hist.buckets.iter().sum::<u64>(), 250);
                assert_eq!(hist.buckets.len(), 3);
                let top = client.top(filter(&query), "host", 2).await.unwrap();
                assert_eq!(top, vec![("h0".into(), 84), ("h1".into(), 83)]);
                let stats = client.stats().await.unwrap();
                assert!(stats.iter().any(|(k, v)| k == "records" && *v >= 250));

                // A tail sees what is appended after it starts.
                let mut tail = client.tail(&format!("{query} live"), None).await.unwrap();
                let live = LogRecord {
                    ts: 1_800_000_000_000_000_000,
                    service: service.clone(),
                    message: "live one".into(),
                    ..LogRecord::default()
                };
                let noise = LogRecord {
                    ts: 1_800_000_000_000_000_000,
                    service: service.clone(),
                    message: "not for the tail".into(),
                    ..LogRecord::default()
                };
                client.append(&[noise, live]).await.unwrap();
                let got = tail.next().await.unwrap().unwrap();
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].record.message, "live one");
                drop(tail);

                // A frame larger than the payload memory reserved up front
                // (1 MiB) arrives whole.
                let big_service = format!("{service}-big");
                let big_batch: Vec<LogRecord> = (0..3000)
                    .map(|i| LogRecord {
                        ts: 1_800_000_000_000_000_000 + i,
                        service: big_service.clone(),
                        message: format!("bulky {i} {}", "x".repeat(600)),
                        ..LogRecord::default()
                    })
                    .collect();
                let appended = client.append(&big_batch).await.unwrap();
                assert_eq!(appended.end - appended.start, 3000);
                wait_indexed(&server).await;
                let bulky = filter(&format!("service:{big_service} bulky"));
                assert_eq!(client.count(bulky).await.unwrap(), 3000);

                // Typed errors, and the connection goes on after them.
                let bad = client.count(filter("level:>=")).await.unwrap_err();
                assert!(
                    matches!(&bad, ClientError::Server { code: Some(ErrorCode::BadQuery), message } if message.contains("column")),
                    "{bad}"
                );
                let big = client.query(filter(""), 1_000_000, None).await.unwrap_err();
                assert!(big.to_string().contains("max_result_records"), "{big}");
                let top = client.top(filter(""), "colour", 3).await.unwrap_err();
                assert!(matches!(top, ClientError::Server { code: Some(ErrorCode::BadRequest), .. }));
                assert!(client.ping().await.is_ok());
            })
            .await;
        }
        server.shutdown().await.unwrap();
    });
}

/// A single server takes keyed appends (what a [`ClusterClient`] sends)
/// as batches, stores the key with them, and recovers them after a
/// restart.
#[test]
fn a_single_server_stores_keyed_batches() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let server = Server::start(config(dir.path())).await.unwrap();
        let addr = server.addresses().tcp.unwrap().to_string();
        let client = lode_client::ClusterClient::new(&[addr]).unwrap();
        let mut last = None;
        for b in 0..3u64 {
            let batch: Vec<LogRecord> = (b * 10..b * 10 + 10).map(record_for).collect();
            let appended = within("keyed append", client.append(&batch)).await.unwrap();
            assert_eq!(appended.end - appended.start, 10);
            last = Some(appended.end);
        }
        assert_eq!(client.retries(), 0);
        drop(client);
        server.shutdown().await.unwrap();
        let engine = Engine::open(dir.path(), Options::default()).unwrap();
        let records: Vec<LogRecord> = engine.scan(..).map(|r| r.unwrap().log).collect();
        let want: Vec<LogRecord> = (0..30).map(record_for).collect();
        assert_eq!(records, want);
        assert_eq!(engine.stats().next_seq, last.unwrap());
    });
}

#[test]
fn many_requests_in_flight_and_a_batcher() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let server = Server::start(config(dir.path())).await.unwrap();
        let client = Client::connect_tcp(&server.addresses().tcp.unwrap().to_string())
            .await
            .unwrap();
        within("batcher", async {
            let mut batcher = Batcher::new(client.clone(), 100, 8);
            for seq in 1..=5000 {
                batcher.push(record_for(seq)).await.unwrap();
            }
            assert_eq!(batcher.finish().await.unwrap(), 5000);
            // A window wider than the connection's in-flight slots is
            // narrowed to them (it used to wait forever for a slot).
            let narrow = Client::connect_tcp_with(
                &server.addresses().tcp.unwrap().to_string(),
                ClientOptions {
                    max_in_flight: 2,
                    ..ClientOptions::default()
                },
            )
            .await
            .unwrap();
            let mut batcher = Batcher::new(narrow, 10, 16);
            for seq in 5001..=5100 {
                batcher.push(record_for(seq)).await.unwrap();
            }
            assert_eq!(batcher.finish().await.unwrap(), 100);
            // A page of more than one frame's records (1,000) arrives whole.
            wait_indexed(&server).await;
            let page = client.query(filter("*"), 2500, None).await.unwrap();
            let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (2601..=5100).rev().collect::<Vec<_>>());
            assert!(page.next_cursor.is_some());
            // 200 pings at once on one connection, answered by id.
            let pings: Vec<_> = (0..200)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move { client.ping().await })
                })
                .collect();
            for ping in pings {
                assert!(ping.await.unwrap().is_ok());
            }
        })
        .await;
        let engine = server.service().engine();
        assert_eq!(engine.stats().records, 5100);
        for seq in [1, 777, 5000, 5100] {
            assert_eq!(engine.get(seq).unwrap().unwrap().log, record_for(seq));
        }
        server.shutdown().await.unwrap();
    });
}

/// Writes a hello and returns the server's answer.
fn raw_hello(addr: SocketAddr, version: u16) -> (TcpStream, [u8; HELLO_LEN]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut hello = wire::encode_hello(version, HelloStatus::Ok).to_vec();
    if version >= 2 {
        hello.extend_from_slice(&wire::encode_credentials("", "").unwrap());
    }
    stream.write_all(&hello).unwrap();
    let mut answer = [0u8; HELLO_LEN];
    stream.read_exact(&mut answer).unwrap();
    // From version 2 an accepted hello is followed by the session's tenant.
    if version >= 2 && wire::decode_hello(&answer).unwrap().1 == HelloStatus::Ok {
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).unwrap();
        let mut tenant = vec![0u8; wire::str16_len(prefix).unwrap()];
        stream.read_exact(&mut tenant).unwrap();
        assert_eq!(tenant, b"default");
    }
    (stream, answer)
}

fn read_response(stream: &mut TcpStream) -> (u64, wire::Response) {
    let mut head = [0u8; FRAME_HEADER];
    stream.read_exact(&mut head).unwrap();
    let header = wire::decode_header(&head, wire::DEFAULT_MAX_FRAME).unwrap();
    let mut payload = vec![0u8; header.len as usize];
    stream.read_exact(&mut payload).unwrap();
    (header.id, wire::decode_response(&payload).unwrap())
}

fn error_code(response: &wire::Response) -> Option<ErrorCode> {
    match response {
        wire::Response::Error { code, .. } => ErrorCode::from_u16(*code),
        _ => None,
    }
}

#[test]
fn bad_input_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt.block_on(Server::start(config(dir.path()))).unwrap();
    let addr = server.addresses().tcp.unwrap();

    // An unknown version is refused in the hello.
    let (_, answer) = raw_hello(addr, 99);
    assert_eq!(
        wire::decode_hello(&answer).unwrap(),
        (wire::VERSION, HelloStatus::UnsupportedVersion)
    );

    // A client of version 1 (no credentials, records without their
    // tenant) is told the version it must speak.
    let (_, answer) = raw_hello(addr, 1);
    assert_eq!(
        wire::decode_hello(&answer).unwrap(),
        (wire::VERSION, HelloStatus::UnsupportedVersion)
    );

    // A well-framed append of garbage is a bad request; the connection lives.
    let (mut stream, _) = raw_hello(addr, wire::VERSION);
    let mut frame = Vec::new();
    wire::encode_frame(Kind::Append, 0, 5, b"definitely not a batch", &mut frame).unwrap();
    stream.write_all(&frame).unwrap();
    let (id, response) = read_response(&mut stream);
    assert_eq!(
        (id, error_code(&response)),
        (5, Some(ErrorCode::BadRequest))
    );
    let mut ping = Vec::new();
    wire::encode_request(6, &wire::Request::Ping, &mut ping).unwrap();
    stream.write_all(&ping).unwrap();
    assert!(matches!(
        read_response(&mut stream),
        (6, wire::Response::Pong { .. })
    ));

    // A broken header gets one bad_frame error, then the connection closes.
    stream.write_all(&[0xff; FRAME_HEADER]).unwrap();
    let (id, response) = read_response(&mut stream);
    assert_eq!((id, error_code(&response)), (0, Some(ErrorCode::BadFrame)));
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap_or(0), 0, "closed");

    // A frame over max_frame_bytes names the limit.
    let (mut stream, _) = raw_hello(addr, wire::VERSION);
    let mut huge = Vec::new();
    wire::encode_header(Kind::Append, 0, 1, u32::MAX, &mut huge);
    stream.write_all(&huge).unwrap();
    match read_response(&mut stream).1 {
        wire::Response::Error { message, .. } => assert!(message.contains("max_frame_bytes")),
        other => panic!("{other:?}"),
    }

    // Meanwhile another client is served as usual.
    rt.block_on(async {
        let client = Client::connect_tcp(&addr.to_string()).await.unwrap();
        assert!(client.append(&[record_for(1)]).await.is_ok());
    });
    rt.block_on(server.shutdown()).unwrap();
}

/// A minimal HTTP/1.1 exchange: status, headers (lowercase names), body.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    http_with(
        addr,
        method,
        path,
        "Content-Type: application/x-ndjson\r\n",
        body,
    )
}

/// [`http`] with `headers` (each line ending in CRLF) of the caller's.
pub(crate) fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: lode\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server refusing a body (413) may answer and close before all of it
    // is written: the answer is what counts.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        response.extend_from_slice(&chunk[..n]);
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// OTLP logs in JSON: records mapped field by field, a record that
/// cannot be read counted in `partialSuccess`, gzip taken, protobuf
/// answered 415, a body that is no request 400.
#[test]
fn otlp_json_logs_are_taken_and_unreadable_records_reported() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt.block_on(Server::start(config(dir.path()))).unwrap();
    let addr = server.addresses().http.unwrap();
    let json_type = "Content-Type: application/json\r\n";
    let request = br#"{"resourceLogs":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"billing"}},
        {"key":"host.name","value":{"stringValue":"h9"}}]},
      "scopeLogs":[{"logRecords":[
        {"timeUnixNano":"1798761600000000000","severityNumber":17,"body":{"stringValue":"invoice failed"},
         "attributes":[{"key":"invoice","value":{"intValue":"7"}}],"traceId":"0102030405060708090a0b0c0d0e0f10"},
        {"timeUnixNano":"never","body":{"stringValue":"unreadable"}}]}]}]}"#;
    let (status, _, body) = http_with(addr, "POST", "/v1/logs", json_type, request);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer = json(&body);
    assert_eq!(answer["partialSuccess"]["rejectedLogRecords"], "1");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("logRecords[1].timeUnixNano")
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"billing"}}]},"scopeLogs":[{"logRecords":[{"timeUnixNano":1798761600000000001,"severityText":"WARN","body":{"stringValue":"invoice late"}}]}]}]}"#)
        .unwrap();
    let (status, _, body) = http_with(
        addr,
        "POST",
        "/otlp/v1/logs",
        "Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
        &gz.finish().unwrap(),
    );
    assert_eq!((status, json(&body)), (200, serde_json::json!({})));
    let (status, head, body) = http_with(
        addr,
        "POST",
        "/v1/logs",
        "Content-Type: application/x-protobuf\r\n",
        &otlp_proto_request(),
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    let answer =
        <otlp::pb::ExportLogsServiceResponse as prost::Message>::decode(body.as_slice()).unwrap();
    assert_eq!(answer.partial_success, None, "nothing rejected");
    let (status, head, body) = http_with(
        addr,
        "POST",
        "/v1/logs",
        "Content-Type: application/x-protobuf\r\n",
        b"\xff\xff",
    );
    assert_eq!(status, 400);
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    let error = <otlp::pb::Status as prost::Message>::decode(body.as_slice()).unwrap();
    assert_eq!(error.code, 3, "INVALID_ARGUMENT");
    assert!(
        error.message.contains("ExportLogsServiceRequest"),
        "{}",
        error.message
    );
    let (status, _, body) = http_with(addr, "POST", "/v1/logs", json_type, b"[1,2]");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let service = server.service();
    assert!(service.wait_indexed(Duration::from_secs(10)));
    let records: Vec<_> = service.engine().scan(..).map(|r| r.unwrap().log).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(
        (
            records[2].service.as_str(),
            records[2].message.as_str(),
            &records[2].level
        ),
        ("billing", "invoice sent", &lode_engine::Level::Error),
        "the protobuf record"
    );
    assert_eq!(
        records[2].attrs,
        vec![
            ("region".to_owned(), "eu".to_owned()),
            ("trace_id".to_owned(), "0102".to_owned())
        ]
    );
    let r = &records[0];
    assert_eq!(
        (
            r.ts,
            r.service.as_str(),
            r.host.as_str(),
            &r.level,
            r.message.as_str()
        ),
        (
            1_798_761_600_000_000_000,
            "billing",
            "h9",
            &lode_engine::Level::Error,
            "invoice failed"
        )
    );
    assert_eq!(
        r.attrs,
        vec![
            ("invoice".to_owned(), "7".to_owned()),
            (
                "trace_id".to_owned(),
                "0102030405060708090a0b0c0d0e0f10".to_owned()
            )
        ]
    );
    assert_eq!(records[1].level, lode_engine::Level::Warn);
    let (_, _, metrics) = http(addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("lode_received_records_total{source=\"otlp\"} 4\n"),
        "{metrics}"
    );
    assert!(metrics.contains("lode_rejected_records_total{source=\"otlp\"} 1\n"));
    rt.block_on(server.shutdown()).unwrap();
}

/// An OTLP protobuf request of one record.
fn otlp_proto_request() -> Vec<u8> {
    use otlp::pb;
    let text = |s: &str| {
        Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(s.to_owned())),
        })
    };
    let request = pb::ExportLogsServiceRequest {
        resource_logs: vec![pb::ResourceLogs {
            resource: Some(pb::Resource {
                attributes: vec![pb::KeyValue {
                    key: "service.name".to_owned(),
                    value: text("billing"),
                }],
            }),
            scope_logs: vec![pb::ScopeLogs {
                log_records: vec![pb::LogRecord {
                    time_unix_nano: 1_798_761_600_000_000_009,
                    severity_number: 17,
                    body: text("invoice sent"),
                    attributes: vec![pb::KeyValue {
                        key: "region".to_owned(),
                        value: text("eu"),
                    }],
                    trace_id: vec![1, 2],
                    ..Default::default()
                }],
            }],
        }],
    };
    prost::Message::encode_to_vec(&request)
}

/// Loki's push, JSON (gzipped or not) and snappy protobuf: 204 once
/// durable; a malformed body is refused whole with a 400 naming the
/// place.
#[test]
fn loki_push_takes_json_and_gzip_and_names_what_is_wrong() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt.block_on(Server::start(config(dir.path()))).unwrap();
    let addr = server.addresses().http.unwrap();
    let json_type = "Content-Type: application/json\r\n";
    let push = br#"{"streams":[{"stream":{"app":"cart","host":"h7","level":"error"},
        "values":[["1798761600000000000","cart lost",{"user":"u1"}],["1798761600000000001","cart kept"]]}]}"#;
    let (status, _, body) = http_with(addr, "POST", "/loki/api/v1/push", json_type, push);
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"streams":[{"stream":{"job":"cart"},"values":[["1798761600000000002","cart zipped"]]}]}"#)
        .unwrap();
    let zipped = gz.finish().unwrap();
    let (status, _, _) = http_with(
        addr,
        "POST",
        "/loki/api/v1/push",
        "Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
        &zipped,
    );
    assert_eq!(status, 204);
    let bad = br#"{"streams":[{"stream":{"app":"cart"},"values":[["1798761600000000003","fine"],["soon","bad"]]}]}"#;
    let (status, _, body) = http_with(addr, "POST", "/loki/api/v1/push", json_type, bad);
    assert_eq!(status, 400);
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("streams[0].values[1][0]"), "{message}");
    let proto_type = "Content-Type: application/x-protobuf\r\n";
    let push = loki::pb::PushRequest {
        streams: vec![loki::pb::StreamAdapter {
            labels: r#"{service_name="cart", hostname="h8", level="warn", env="prod"}"#.to_owned(),
            entries: vec![loki::pb::EntryAdapter {
                timestamp: Some(loki::pb::Timestamp {
                    seconds: 1_798_761_600,
                    nanos: 4,
                }),
                line: b"cart snapped".to_vec(),
                structured_metadata: vec![loki::pb::LabelPairAdapter {
                    name: "user".to_owned(),
                    value: "u2".to_owned(),
                }],
            }],
            hash: 0,
        }],
    };
    let snapped = snap::raw::Encoder::new()
        .compress_vec(&prost::Message::encode_to_vec(&push))
        .unwrap();
    let (status, _, body) = http_with(addr, "POST", "/loki/api/v1/push", proto_type, &snapped);
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    for (bad, says) in [
        (&b"\x05\x00"[..], "snappy"),
        (
            &snap::raw::Encoder::new()
                .compress_vec(b"\x0a\x03\x0a\x01{")
                .unwrap()[..],
            "streams[0].labels column 2",
        ),
    ] {
        let (status, _, body) = http_with(addr, "POST", "/loki/api/v1/push", proto_type, bad);
        let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
        assert_eq!(status, 400, "{message}");
        assert!(message.contains(says), "{message}");
    }
    let service = server.service();
    assert!(service.wait_indexed(Duration::from_secs(10)));
    let records: Vec<_> = service.engine().scan(..).map(|r| r.unwrap().log).collect();
    let got: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.service.as_str(), r.host.as_str(), r.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("cart", "h7", "cart lost"),
            ("cart", "h7", "cart kept"),
            ("cart", "", "cart zipped"),
            ("cart", "h8", "cart snapped")
        ],
        "the malformed push wrote nothing"
    );
    assert_eq!(records[0].level, lode_engine::Level::Error);
    assert_eq!(records[0].attrs, vec![("user".to_owned(), "u1".to_owned())]);
    assert_eq!(
        (records[3].ts, &records[3].level, records[3].attrs.clone()),
        (
            1_798_761_600_000_000_004,
            &lode_engine::Level::Warn,
            vec![
                ("env".to_owned(), "prod".to_owned()),
                ("user".to_owned(), "u2".to_owned())
            ]
        )
    );
    let (status, _, body) = http(addr, "GET", "/api/v1/count?q=cart%20lost", b"");
    assert_eq!((status, json(&body)["count"].as_u64()), (200, Some(1)));
    let (_, _, metrics) = http(addr, "GET", "/metrics", b"");
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("lode_received_records_total{source=\"loki\"} 4\n"),
        "pushed records are counted"
    );
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn http_api_and_elasticsearch_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt.block_on(Server::start(config(dir.path()))).unwrap();
    let addr = server.addresses().http.unwrap();

    let body = b"{\"ts\":\"2027-01-01T00:00:00Z\",\"level\":\"ERROR\",\"service\":\"web\",\"message\":\"checkout failed\",\"order\":17}\n\
not json\n\
{\"ts\":1798761600000000001,\"service\":\"web\",\"host\":\"h1\",\"message\":\"checkout ok\"}\n";
    let (status, head, reply) = http(addr, "POST", "/api/v1/ingest", body);
    assert_eq!(status, 200);
    assert!(head.contains("x-elastic-product: elasticsearch"));
    let reply = json(&reply);
    assert_eq!(
        (reply["accepted"].as_u64(), reply["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(reply["errors"][0]["line"], 2);

    let (status, _, reply) = http(
        addr,
        "POST",
        "/_bulk",
        b"{\"index\":{\"_index\":\"shop\"}}\n{\"@timestamp\":\"2027-01-01T00:00:01Z\",\"message\":\"bulk checkout\"}\n{\"delete\":{\"_id\":\"1\"}}\n",
    );
    assert_eq!(status, 200);
    let reply = json(&reply);
    assert_eq!(reply["errors"], true);
    assert_eq!(reply["items"][0]["index"]["status"], 201);
    assert_eq!(reply["items"][1]["delete"]["status"], 400);
    let (status, _, _) = http(
        addr,
        "POST",
        "/shop/_bulk",
        b"{\"create\":{}}\n{\"message\":\"x\"}\n",
    );
    assert_eq!(status, 200);
    rt.block_on(wait_indexed(&server));

    let (status, _, reply) = http(addr, "GET", "/api/v1/query?q=checkout&limit=2", b"");
    assert_eq!(status, 200);
    let reply = json(&reply);
    assert_eq!(reply["records"][0]["message"], "bulk checkout");
    assert_eq!(reply["records"][0]["service"], "shop");
    assert_eq!(reply["records"][1]["message"], "checkout ok");
    assert!(reply["next_cursor"].is_string());
    let cursor = reply["next_cursor"].as_str().unwrap();
    let (_, _, reply) = http(
        addr,
        "GET",
        &format!("/api/v1/query?q=checkout&cursor={cursor}"),
        b"",
    );
    let reply = json(&reply);
    assert_eq!(reply["records"][0]["attrs"]["order"], "17");
    assert_eq!(reply["records"][0]["level"], "error");
    assert_eq!(reply["records"][0]["ts"], "2027-01-01T00:00:00.000000000Z");
    assert!(reply["next_cursor"].is_null());

    let (_, _, reply) = http(addr, "GET", "/api/v1/count?q=service:web", b"");
    assert_eq!(json(&reply)["count"], 2);
    let (_, _, reply) = http(
        addr,
        "GET",
        "/api/v1/histogram?q=checkout&width=1s&since=2027-01-01T00:00:00Z&until=2027-01-01T00:00:02Z",
        b"",
    );
    let buckets: u64 = json(&reply)["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(buckets, 3);
    let (_, _, reply) = http(addr, "GET", "/api/v1/top?field=service&k=1", b"");
    assert_eq!(json(&reply)["values"][0]["value"], "shop");
    let (status, _, reply) = http(addr, "GET", "/api/v1/count?q=level:%3E%3D", b"");
    assert_eq!(status, 400);
    assert_eq!(json(&reply)["error"]["code"], "bad_query");
    let (status, _, _) = http(addr, "GET", "/api/v1/query?since=yesterday", b"");
    assert_eq!(status, 400);

    let (status, head, reply) = http(addr, "GET", "/", b"");
    assert_eq!(status, 200);
    assert!(head.contains("x-elastic-product: elasticsearch"));
    assert!(
        json(&reply)["version"]["number"]
            .as_str()
            .unwrap()
            .starts_with('8')
    );
    assert_eq!(http(addr, "GET", "/health", b"").0, 200);
    assert_eq!(http(addr, "GET", "/ready", b"").0, 200);
    let (_, head, metrics) = http(addr, "GET", "/metrics", b"");
    assert!(head.contains("text/plain; version=0.0.4"));
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("lode_ingest_records_total 4\n"),
        "{metrics}"
    );
    assert!(metrics.contains("lode_rejected_records_total{source=\"http\"} 1\n"));

    // A body over max_body_bytes is 413.
    let big = vec![b'x'; 65 << 20];
    assert_eq!(http(addr, "POST", "/api/v1/ingest", &big).0, 413);
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn http_tail_streams_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt.block_on(Server::start(config(dir.path()))).unwrap();
    let addr = server.addresses().http.unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /api/v1/tail?q=wanted HTTP/1.1\r\nHost: lode\r\n\r\n")
        .unwrap();
    // Once the head is back the tail is subscribed.
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let ingest = b"{\"message\":\"unwanted\"}\n{\"message\":\"wanted one\"}\n";
    assert_eq!(http(addr, "POST", "/api/v1/ingest", ingest).0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = false;
    while !found && Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        assert!(!line.contains("unwanted"));
        found = line.contains("\"message\":\"wanted one\"");
    }
    assert!(found, "the tail delivered the record");
    drop(reader);
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn syslog_over_tcp_and_udp() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt.block_on(Server::start(config(dir.path()))).unwrap();
    let addr = server.addresses().syslog.unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    let framed = "<11>1 2027-01-01T00:00:00Z db1 postgres 42 - - connection reset";
    tcp.write_all(format!("{} {framed}", framed.len()).as_bytes())
        .unwrap();
    tcp.write_all(b"<30>Jan  2 03:04:05 web2 nginx[7]: GET /index.html 200\n")
        .unwrap();
    drop(tcp);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"<12>1 - cache1 redis - - - memory low", addr)
        .unwrap();
    let service = server.service();
    let deadline = Instant::now() + Duration::from_secs(20);
    while service.engine().stats().records < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let records: Vec<_> = service.engine().scan(..).map(|r| r.unwrap().log).collect();
    assert_eq!(records.len(), 3);
    let find = |service: &str| records.iter().find(|r| r.service == service).unwrap();
    let pg = find("postgres");
    assert_eq!((pg.level.clone(), pg.host.as_str()), (Level::Error, "db1"));
    assert_eq!(pg.message, "connection reset");
    let nginx = find("nginx");
    assert_eq!(
        (nginx.level.clone(), nginx.host.as_str()),
        (Level::Info, "web2")
    );
    let redis = find("redis");
    assert_eq!(
        (redis.level.clone(), redis.message.as_str()),
        (Level::Warn, "memory low")
    );
    rt.block_on(server.shutdown()).unwrap();
}

const DIR_VAR: &str = "LODE_SERVER_CRASH_DIR";

/// The server process of the SIGKILL test; runs only when started by it.
#[test]
#[ignore = "run by server::sigkill_during_binary_and_http_ingest in a child process"]
fn server_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    crate::die_with_parent();
    runtime().block_on(async {
        let config = Config {
            quic: None,
            syslog: None,
            ..config(Path::new(&dir))
        };
        let server = Server::start(config).await.expect("child server");
        let a = server.addresses();
        println!("listening {} {}", a.tcp.unwrap(), a.http.unwrap());
        std::future::pending::<()>().await;
    });
}

/// What the ingesting threads learned: ids acknowledged and ids sent.
#[derive(Default)]
struct Sent {
    acked: Vec<u64>,
    /// Acknowledged or in flight when the server died.
    sent: Vec<u64>,
}

fn tagged(id: u64) -> LogRecord {
    let mut record = record_for(id);
    record.attrs = vec![("id".into(), id.to_string())];
    record
}

/// Sends batches over the binary protocol until the server dies.
fn binary_ingest(addr: SocketAddr, first_id: u64) -> Sent {
    let mut sent = Sent::default();
    let rt = runtime();
    rt.block_on(async {
        let Ok(client) = Client::connect_tcp(&addr.to_string()).await else {
            return;
        };
        let mut id = first_id;
        loop {
            let batch: Vec<LogRecord> = (id..id + 50).map(tagged).collect();
            sent.sent.extend(id..id + 50);
            match client.append(&batch).await {
                Ok(_) => sent.acked.extend(id..id + 50),
                Err(_) => return,
            }
            id += 50;
        }
    });
    sent
}

/// Sends JSON lines over HTTP until the server dies.
fn http_ingest(addr: SocketAddr, first_id: u64) -> Sent {
    let mut sent = Sent::default();
    let mut id = first_id;
    loop {
        let mut body = Vec::new();
        for i in id..id + 20 {
            lode_tools::to_json_line(None, &tagged(i), &mut body);
        }
        sent.sent.extend(id..id + 20);
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return sent;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let head = format!(
            "POST /api/v1/ingest HTTP/1.1\r\nHost: l\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut response = Vec::new();
        let ok = stream.write_all(head.as_bytes()).is_ok()
            && stream.write_all(&body).is_ok()
            && stream.read_to_end(&mut response).is_ok()
            && response.starts_with(b"HTTP/1.1 200")
            && String::from_utf8_lossy(&response).contains("\"accepted\":20");
        if !ok {
            return sent;
        }
        sent.acked.extend(id..id + 20);
        id += 20;
    }
}

const KILLS: usize = 20;

#[test]
fn sigkill_during_binary_and_http_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix64::new(0xdead);
    let started = Instant::now();
    let mut acked: Vec<u64> = Vec::new();
    let mut sent = std::collections::HashSet::new();
    for round in 0..KILLS as u64 {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "server::server_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addrs = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.split("listening ").nth(1).map(str::to_owned))
            .expect("the child server started");
        let mut addrs = addrs.split(' ').map(|a| a.parse::<SocketAddr>().unwrap());
        let (tcp, http_addr) = (addrs.next().unwrap(), addrs.next().unwrap());
        // Ids are unique per round: binary from round*10^6, http from
        // round*10^6 + 500,000.
        let base = (round + 1) * 1_000_000;
        let binary = std::thread::spawn(move || binary_ingest(tcp, base));
        let web = std::thread::spawn(move || http_ingest(http_addr, base + 500_000));
        std::thread::sleep(Duration::from_millis(50 + rng.below(300)));
        child.kill().unwrap();
        child.wait().unwrap();
        for result in [binary.join().unwrap(), web.join().unwrap()] {
            acked.extend(result.acked);
            sent.extend(result.sent);
        }
        assert!(started.elapsed() < Duration::from_secs(240), "too slow");
    }
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    let mut found = std::collections::HashSet::new();
    for record in engine.scan(..) {
        let record = record.unwrap();
        let id: u64 = record.attrs[0].1.parse().unwrap();
        assert_eq!(record.log, tagged(id), "record {id} intact");
        assert!(found.insert(id), "record {id} stored twice");
    }
    let lost: Vec<_> = acked.iter().filter(|id| !found.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "{KILLS} kills, {} records acknowledged, {} stored",
        acked.len(),
        found.len()
    );
    assert!(
        acked.len() > 1000,
        "the test ingested too little: {}",
        acked.len()
    );
    let strangers: Vec<_> = found.iter().filter(|id| !sent.contains(id)).collect();
    assert!(strangers.is_empty(), "records nobody sent: {strangers:?}");
}

#[test]
fn limits_answer_busy_rather_than_queue() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut config = config(dir.path());
    config.limits.max_http_requests = 1;
    config.limits.max_connections = 1;
    let server = rt.block_on(Server::start(config)).unwrap();
    let http_addr = server.addresses().http.unwrap();

    // A request whose body has not all arrived holds the only HTTP slot
    // (once it is being served: one refused itself is tried again).
    let deadline = Instant::now() + Duration::from_secs(10);
    let slow = loop {
        let mut slow = TcpStream::connect(http_addr).unwrap();
        slow.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nHost: l\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        slow.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut answer = [0u8; 64];
        match slow.read(&mut answer) {
            Ok(n) if n > 0 => assert!(Instant::now() < deadline, "never served"),
            _ => break slow,
        }
    };
    let mut status = 0;
    while status != 429 && Instant::now() < deadline {
        status = http(http_addr, "GET", "/health", b"").0;
    }
    assert_eq!(
        status, 429,
        "a second request is refused while the first is served"
    );
    let (_, _, body) = http(http_addr, "GET", "/health", b"");
    assert!(String::from_utf8_lossy(&body).contains("max_http_requests"));
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(http_addr, "GET", "/health", b"").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the slot frees when the request ends"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The binary protocol: a second connection is told busy.
    rt.block_on(async {
        let addr = server.addresses().tcp.unwrap().to_string();
        let first = Client::connect_tcp(&addr).await.unwrap();
        assert!(first.ping().await.is_ok());
        let second = Client::connect_tcp(&addr).await.unwrap();
        let refused = within("busy", second.ping()).await.unwrap_err();
        assert!(refused.to_string().contains("max_connections"), "{refused}");
        assert!(first.ping().await.is_ok(), "the first connection goes on");
    });
    rt.block_on(server.shutdown()).unwrap();
}

/// A push sent again with the same `Idempotency-Key` is written once
/// (a body the server cuts into several batches included) and answered
/// as the first time; another key, or none, writes again; a key that is
/// not one is refused.
#[test]
fn a_push_retried_with_its_idempotency_key_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.limits.max_batch_records = 10;
    runtime().block_on(async {
        let server = Server::start(config).await.unwrap();
        let addr = server.addresses().http.unwrap();
        let body: String = (0..35)
            .map(|i| format!("{{\"message\":\"once {i}\"}}\n"))
            .collect();
        let push = |key: &str| {
            let headers = format!("Content-Type: application/x-ndjson\r\n{key}");
            let body = body.clone();
            tokio::task::spawn_blocking(move || {
                http_with(addr, "POST", "/api/v1/ingest", &headers, body.as_bytes())
            })
        };
        let first = push("Idempotency-Key: push-1\r\n").await.unwrap();
        assert_eq!(first.0, 200, "{}", String::from_utf8_lossy(&first.2));
        let again = push("Idempotency-Key: push-1\r\n").await.unwrap();
        assert_eq!((again.0, json(&again.2)), (200, json(&first.2)));
        wait_indexed(&server).await;
        let count = || {
            let text =
                tokio::task::block_in_place(|| http(addr, "GET", "/api/v1/count?q=once", b"").2);
            json(&text)["count"].as_u64().unwrap()
        };
        assert_eq!(count(), 35, "the retry wrote nothing");
        assert_eq!(push("Idempotency-Key: push-2\r\n").await.unwrap().0, 200);
        assert_eq!(push("").await.unwrap().0, 200);
        wait_indexed(&server).await;
        assert_eq!(count(), 105, "another key, or none, writes");
        let bad = push("Idempotency-Key: not one\r\n").await.unwrap();
        assert_eq!(bad.0, 400, "{}", String::from_utf8_lossy(&bad.2));
        server.shutdown().await.unwrap();
    });
}
