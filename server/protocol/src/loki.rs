//! Loki's push API in its JSON form (`POST /loki/api/v1/push`), what
//! `python-logging-loki`, Grafana Alloy's JSON mode and others send:
//!
//! ```json
//! {"streams": [{"stream": {"job": "api", "level": "warn"},
//!               "values": [["1700000000000000000", "disk full", {"trace_id": "ab"}]]}]}
//! ```
//!
//! Each value is a record: its timestamp (ns, a decimal string), its
//! line, and optional structured metadata. A stream's labels map to
//! lode's fields: the first present of `service_name`, `service`, `app`,
//! `job` is the service; of `host`, `hostname`, `instance` the host; of
//! `level`, `detected_level`, `severity` the level (without one, a line
//! that is a JSON object gives its own `level` or `severity`, as Loki's
//! `detected_level` does). Every other label and the metadata become
//! attributes (labels first, in order).
//!
//! Pure: bytes in, records or an error naming what and where out.

use lode_codec::{Level, LogRecord};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Labels that give a record's service, host and level, first match wins.
const SERVICE: &[&str] = &["service_name", "service", "app", "job"];
const HOST: &[&str] = &["host", "hostname", "instance"];
const LEVEL: &[&str] = &["level", "detected_level", "severity"];

/// Why a push body is refused: the place (`streams[1].values[4][0]`)
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct PushError {
    pub at: String,
    pub reason: String,
}

fn refuse(at: impl Into<String>, reason: impl Into<String>) -> PushError {
    PushError {
        at: at.into(),
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct Push {
    streams: Vec<Value>,
}

/// The records of a JSON push body, in order.
pub fn parse_push_json(body: &[u8]) -> Result<Vec<LogRecord>, PushError> {
    let push: Push = serde_json::from_slice(body).map_err(|e| {
        refuse(
            format!("line {} column {}", e.line(), e.column()),
            format!("not a Loki push body ({{\"streams\": [...]}}): {e}"),
        )
    })?;
    let mut records = Vec::new();
    for (i, stream) in push.streams.iter().enumerate() {
        let at = format!("streams[{i}]");
        let Value::Object(stream) = stream else {
            return Err(refuse(at, "a stream is an object"));
        };
        let labels = match stream.get("stream") {
            Some(Value::Object(labels)) => labels_of(labels, &at)?,
            None => Vec::new(),
            Some(_) => {
                return Err(refuse(
                    format!("{at}.stream"),
                    "labels are an object of strings",
                ));
            }
        };
        let Some(Value::Array(values)) = stream.get("values") else {
            return Err(refuse(format!("{at}.values"), "missing, or not an array"));
        };
        for (j, value) in values.iter().enumerate() {
            let at = format!("{at}.values[{j}]");
            records.push(record(&labels, value, &at)?);
        }
    }
    Ok(records)
}

fn labels_of(labels: &Map<String, Value>, at: &str) -> Result<Vec<(String, String)>, PushError> {
    labels
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(refuse(
                format!("{at}.stream.{k}"),
                "a label's value is a string",
            )),
        })
        .collect()
}

/// One `[ts, line, metadata?]` under a stream's labels.
fn record(labels: &[(String, String)], value: &Value, at: &str) -> Result<LogRecord, PushError> {
    let Value::Array(parts) = value else {
        return Err(refuse(
            at,
            "a value is [\"<ns>\", \"line\"] or [\"<ns>\", \"line\", {metadata}]",
        ));
    };
    let (ts, line, metadata) = match parts.as_slice() {
        [ts, line] => (ts, line, None),
        [ts, line, metadata] => (ts, line, Some(metadata)),
        _ => {
            return Err(refuse(
                at,
                format!("{} elements; a value has 2 or 3", parts.len()),
            ));
        }
    };
    let ts = match ts {
        Value::String(s) => s.parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        refuse(
            format!("{at}[0]"),
            format!("timestamp {ts} is not nanoseconds as a decimal string"),
        )
    })?;
    let Value::String(message) = line else {
        return Err(refuse(format!("{at}[1]"), "the line is a string"));
    };
    let mut meta = Vec::new();
    match metadata {
        None => {}
        Some(Value::Object(fields)) => {
            for (k, v) in fields {
                let Value::String(v) = v else {
                    return Err(refuse(
                        format!("{at}[2].{k}"),
                        "metadata values are strings",
                    ));
                };
                meta.push((k.clone(), v.clone()));
            }
        }
        Some(_) => {
            return Err(refuse(
                format!("{at}[2]"),
                "metadata is an object of strings",
            ));
        }
    }
    Ok(entry(labels, ts, message.clone(), meta))
}

/// A record from a stream's labels and one entry: the labels give its
/// service, host and level, the rest of them and the metadata its
/// attributes.
fn entry(
    labels: &[(String, String)],
    ts: i64,
    message: String,
    metadata: Vec<(String, String)>,
) -> LogRecord {
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| labels.iter().position(|(k, _)| k == n))
    };
    let taken = [first(SERVICE), first(HOST), first(LEVEL)];
    let [service, host, level] = taken;
    let value = |at: Option<usize>| {
        at.and_then(|i| labels.get(i))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let level = match level {
        Some(i) => Level::parse(&value(Some(i))),
        // As Loki's `detected_level`: a JSON line's own level.
        None => json_line_level(&message).map_or(Level::Info, |v| Level::parse(&v)),
    };
    let mut attrs: Vec<(String, String)> = labels
        .iter()
        .enumerate()
        .filter(|(i, _)| !taken.contains(&Some(*i)))
        .map(|(_, kv)| kv.clone())
        .collect();
    attrs.extend(metadata);
    LogRecord {
        ts,
        level,
        service: value(service),
        host: value(host),
        attrs,
        message,
        tenant: String::new(),
    }
}

/// The records of a protobuf push body (`PushRequest`), already
/// unpacked from snappy: streams' labels are one `{k="v", ...}` string,
/// entries carry a timestamp, a line and structured metadata.
pub fn parse_push_proto(body: &[u8]) -> Result<Vec<LogRecord>, PushError> {
    use prost::Message;
    let push = pb::PushRequest::decode(body)
        .map_err(|e| refuse("the body", format!("not a Loki PushRequest: {e}")))?;
    let mut records = Vec::new();
    for (i, stream) in push.streams.into_iter().enumerate() {
        let at = format!("streams[{i}]");
        let labels = parse_labels(&stream.labels)
            .map_err(|(col, why)| refuse(format!("{at}.labels column {col}"), why))?;
        for (j, e) in stream.entries.into_iter().enumerate() {
            let ts = e
                .timestamp
                .and_then(|t| {
                    t.seconds
                        .checked_mul(1_000_000_000)?
                        .checked_add(t.nanos.into())
                })
                .ok_or_else(|| {
                    refuse(
                        format!("{at}.entries[{j}].timestamp"),
                        "missing, or past the year 2262",
                    )
                })?;
            let message = String::from_utf8(e.line)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            let meta = e
                .structured_metadata
                .into_iter()
                .map(|kv| (kv.name, kv.value))
                .collect();
            records.push(entry(&labels, ts, message, meta));
        }
    }
    Ok(records)
}

/// Unpacks a snappy block (Loki's protobuf push is compressed with
/// snappy's block format, not its framing format), refused past `limit`
/// bytes unpacked.
/// The length a snappy block says it unpacks to (checked against a
/// limit before anything is unpacked).
pub fn snappy_len(body: &[u8]) -> Result<usize, PushError> {
    snap::raw::decompress_len(body)
        .map_err(|e| refuse("the body", format!("not snappy (block format): {e}")))
}

pub fn unsnappy(body: &[u8], limit: usize) -> Result<Vec<u8>, PushError> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| refuse("the body", format!("not snappy (block format): {e}")))?;
    if len > limit {
        return Err(refuse(
            "the body",
            format!("unpacks to {len} bytes, over the limit of {limit}"),
        ));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| refuse("the body", format!("not snappy (block format): {e}")))
}

/// A Prometheus label set as Loki writes it in a stream: `{a="b",
/// c="d\"e"}`, values quoted with Go's escapes. An error gives the
/// 1-based column (in characters) and the reason.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let skip_space = |at: &mut usize| {
        while chars.get(*at).is_some_and(|c| c.is_whitespace()) {
            *at += 1;
        }
    };
    let expect = |at: &mut usize, want: char| -> Result<(), (usize, String)> {
        skip_space(at);
        match chars.get(*at) {
            Some(c) if *c == want => {
                *at += 1;
                Ok(())
            }
            Some(c) => Err((*at + 1, format!("expected '{want}', found '{c}'"))),
            None => Err((*at + 1, format!("expected '{want}', found the end"))),
        }
    };
    expect(&mut at, '{')?;
    let mut labels = Vec::new();
    loop {
        skip_space(&mut at);
        if chars.get(at) == Some(&'}') {
            at += 1;
            break;
        }
        if !labels.is_empty() {
            expect(&mut at, ',')?;
            skip_space(&mut at);
        }
        let start = at;
        while chars
            .get(at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            at += 1;
        }
        if at == start {
            return Err((at + 1, "expected a label name".to_owned()));
        }
        let name: String = chars.get(start..at).unwrap_or_default().iter().collect();
        expect(&mut at, '=')?;
        expect(&mut at, '"')?;
        let value = quoted(&chars, &mut at)?;
        labels.push((name, value));
    }
    skip_space(&mut at);
    if at < chars.len() {
        return Err((at + 1, "text after the closing '}'".to_owned()));
    }
    Ok(labels)
}

/// The rest of a Go-quoted string whose opening quote is consumed.
fn quoted(chars: &[char], at: &mut usize) -> Result<String, (usize, String)> {
    let mut value = String::new();
    loop {
        let Some(&c) = chars.get(*at) else {
            return Err((*at + 1, "unterminated label value".to_owned()));
        };
        *at += 1;
        match c {
            '"' => return Ok(value),
            '\\' => {
                let escape = chars.get(*at).copied();
                *at += 1;
                let hex = |n: usize, at: &mut usize| {
                    let digits: String = chars.get(*at..*at + n)?.iter().collect();
                    *at += n;
                    char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
                };
                let unescaped = match escape {
                    Some('n') => Some('\n'),
                    Some('t') => Some('\t'),
                    Some('r') => Some('\r'),
                    Some(e @ ('\\' | '"' | '\'')) => Some(e),
                    Some('x') => hex(2, at),
                    Some('u') => hex(4, at),
                    Some('U') => hex(8, at),
                    _ => None,
                };
                value.push(unescaped.ok_or_else(|| (*at, "an unknown escape".to_owned()))?);
            }
            c => value.push(c),
        }
    }
}

/// Loki's push messages (`pkg/push/push.proto`), written out for prost.
/// A line is read as bytes so that one that is not UTF-8 is kept (made
/// valid) rather than failing its request.
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(bytes = "vec", tag = "2")]
        pub line: Vec<u8>,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// The `level` (or `severity`) of a line that is a JSON object.
fn json_line_level(line: &str) -> Option<String> {
    if !line.trim_start().starts_with('{') {
        return None;
    }
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    ["level", "severity"]
        .iter()
        .find_map(|k| fields.get(*k)?.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn labels_map_to_fields_and_the_rest_to_attributes() {
        let body = br#"{"streams":[
            {"stream":{"job":"api","app":"web","instance":"h1:9100","detected_level":"warn","env":"prod"},
             "values":[["1700000000000000001","disk full",{"trace_id":"ab12"}],
                       ["1700000000000000002","second"]]},
            {"stream":{"service_name":"db","hostname":"h2"},"values":[["5","x"]]}]}"#;
        let records = parse_push_json(body).unwrap();
        assert_eq!(records.len(), 3);
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
                1_700_000_000_000_000_001,
                "web",
                "h1:9100",
                &Level::Warn,
                "disk full"
            )
        );
        assert_eq!(
            r.attrs,
            vec![
                ("job".to_owned(), "api".to_owned()),
                ("env".to_owned(), "prod".to_owned()),
                ("trace_id".to_owned(), "ab12".to_owned())
            ]
        );
        assert_eq!(records[1].attrs.len(), 2, "no metadata");
        assert_eq!(
            (
                records[2].service.as_str(),
                records[2].host.as_str(),
                &records[2].level
            ),
            ("db", "h2", &Level::Info)
        );
        assert!(parse_push_json(br#"{"streams":[]}"#).unwrap().is_empty());
        // No level label: a JSON line's own level counts.
        let json_line = br#"{"streams":[{"stream":{"service":"ledger"},"values":[["1","{\"message\": \"x\", \"level\": \"ERROR\"}"],["2","{not json"]]}]}"#;
        let records = parse_push_json(json_line).unwrap();
        assert_eq!(
            (&records[0].level, &records[1].level),
            (&Level::Error, &Level::Info)
        );
    }

    proptest::proptest! {
        /// Any bytes, and any one byte of a valid body changed: records
        /// or an error, never a panic.
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
                           at in 0usize..200, to in proptest::num::u8::ANY) {
            let _ = parse_push_json(&bytes);
            let mut body = br#"{"streams":[{"stream":{"job":"a","level":"warn"},"values":[["17","x",{"k":"v"}],["18","y"]]}]}"#.to_vec();
            let i = at % body.len();
            body[i] = to;
            let _ = parse_push_json(&body);
        }
    }

    fn proto_push(labels: &str, entries: Vec<pb::EntryAdapter>) -> Vec<u8> {
        use prost::Message;
        let push = pb::PushRequest {
            streams: vec![pb::StreamAdapter {
                labels: labels.to_owned(),
                entries,
                hash: 0,
            }],
        };
        snap::raw::Encoder::new()
            .compress_vec(&push.encode_to_vec())
            .unwrap()
    }

    fn proto_entry(seconds: i64, nanos: i32, line: &[u8]) -> pb::EntryAdapter {
        pb::EntryAdapter {
            timestamp: Some(pb::Timestamp { seconds, nanos }),
            line: line.to_vec(),
            structured_metadata: vec![pb::LabelPairAdapter {
                name: "trace_id".to_owned(),
                value: "ab12".to_owned(),
            }],
        }
    }

    #[test]
    fn a_protobuf_push_reads_as_its_json_twin() {
        let body = proto_push(
            r#"{job="api", app="web", instance="h1:9100", detected_level="warn", env="pr\"od\n"}"#,
            vec![
                proto_entry(1_700_000_000, 1, b"disk full"),
                proto_entry(0, 5, b"\xffbad"),
            ],
        );
        let records = parse_push_proto(&unsnappy(&body, 1 << 20).unwrap()).unwrap();
        let json = parse_push_json(
            br#"{"streams":[{"stream":{"job":"api","app":"web","instance":"h1:9100","detected_level":"warn","env":"pr\"od\n"},
                 "values":[["1700000000000000001","disk full",{"trace_id":"ab12"}]]}]}"#,
        )
        .unwrap();
        assert_eq!(records.first(), json.first());
        assert_eq!(
            (records[1].ts, records[1].message.as_str()),
            (5, "\u{fffd}bad")
        );
        assert!(
            unsnappy(&body, 10)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        assert!(unsnappy(b"\xff\xff\xff", 1 << 20).is_err());
        let no_time = proto_push("{}", vec![pb::EntryAdapter::default()]);
        let err = parse_push_proto(&unsnappy(&no_time, 1 << 20).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("streams[0].entries[0].timestamp"),
            "{err}"
        );
        let bad_labels = proto_push(r#"{job="api" x="y"}"#, vec![]);
        let err = parse_push_proto(&unsnappy(&bad_labels, 1 << 20).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "streams[0].labels column 12: expected ',', found 'x'"
        );
    }

    #[test]
    fn labels_are_read_with_go_escapes_and_errors_give_the_column() {
        let ok = |text: &str| parse_labels(text).unwrap();
        assert_eq!(ok("{}"), vec![]);
        assert_eq!(
            ok(r#" { a="1" , b_2="x\ty\\z\u00e9\x41" } "#),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b_2".to_owned(), "x\ty\\zéA".to_owned())
            ]
        );
        for (text, column) in [
            ("", 1),
            ("a=\"1\"", 1),
            ("{a=1}", 4),
            ("{a=\"1}", 7),
            ("{=\"1\"}", 2),
            ("{a=\"\\q\"}", 6),
            ("{a=\"1\"} x", 9),
        ] {
            let (at, why) = parse_labels(text).unwrap_err();
            assert_eq!(at, column, "{text}: {why}");
        }
    }

    proptest::proptest! {
        /// Any bytes, and any one byte of a valid protobuf body changed:
        /// records or an error, never a panic.
        #[test]
        fn no_protobuf_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
                                    at in 0usize..200, to in proptest::num::u8::ANY) {
            let _ = unsnappy(&bytes, 1 << 16).map(|b| parse_push_proto(&b));
            let _ = parse_push_proto(&bytes);
            let _ = parse_labels(&String::from_utf8_lossy(&bytes));
            let mut body = unsnappy(&proto_push(r#"{job="a"}"#, vec![proto_entry(1, 2, b"x")]), 1 << 16).unwrap();
            let i = at % body.len();
            body[i] = to;
            let _ = parse_push_proto(&body);
        }
    }

    #[test]
    fn a_bad_body_is_refused_naming_the_place() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "line 1 column"),
            (
                br#"{"streams":[{"stream":{},"values":[["abc","x"]]}]}"#,
                "streams[0].values[0][0]",
            ),
            (
                br#"{"streams":[{"stream":{},"values":[[5,"x"]]}]}"#,
                "streams[0].values[0][0]",
            ),
            (
                br#"{"streams":[{"stream":{},"values":[["5",7]]}]}"#,
                "streams[0].values[0][1]",
            ),
            (
                br#"{"streams":[{"stream":{},"values":[["5"]]}]}"#,
                "streams[0].values[0]",
            ),
            (
                br#"{"streams":[{"stream":{"a":1},"values":[]}]}"#,
                "streams[0].stream.a",
            ),
            (
                br#"{"streams":[{"stream":{},"values":[["5","x",{"k":2}]]}]}"#,
                "streams[0].values[0][2].k",
            ),
            (br#"{"streams":[{},{"stream":{}}]}"#, "streams[0].values"),
        ];
        for (body, at) in cases {
            let err = parse_push_json(body).unwrap_err();
            assert!(err.to_string().starts_with(at), "{err} (wanted {at})");
        }
    }
}
