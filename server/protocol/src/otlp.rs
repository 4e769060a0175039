//! OTLP logs over HTTP in its JSON form (`POST /v1/logs`), what the
//! OpenTelemetry SDKs' and collectors' JSON exporters send: an
//! `ExportLogsServiceRequest` in the protobuf JSON mapping.
//!
//! A resource's `service.name` is the service, `host.name` the host; a
//! record's `severityText` (else its `severityNumber`) the level, its
//! `body` the message (a non-string body as JSON), its time
//! `timeUnixNano` (else `observedTimeUnixNano`, else now); the
//! resource's other attributes, the record's attributes and its
//! `traceId`/`spanId` (`trace_id`, `span_id`) become attributes. Integers
//! may be strings or numbers, ids are hex. A record that cannot be read
//! is rejected alone (counted in the answer's `partialSuccess`); a body
//! that is not such a request is refused whole.
//!
//! Pure: bytes in, records (or an error naming what and where) out.

use lode_codec::{Level, LogRecord};
use serde_json::{Map, Value};

/// Why a body is refused, or a record rejected: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct OtlpError {
    pub at: String,
    pub reason: String,
}

fn refuse(at: impl Into<String>, reason: impl Into<String>) -> OtlpError {
    OtlpError {
        at: at.into(),
        reason: reason.into(),
    }
}

/// The records of a request, and the records rejected (with the first
/// one's error).
#[derive(Debug, Default)]
pub struct Parsed {
    pub records: Vec<LogRecord>,
    pub rejected: u64,
    pub first_error: Option<OtlpError>,
}

impl Parsed {
    /// One record read, or rejected (the first rejection's error kept).
    fn add(&mut self, record: Result<LogRecord, OtlpError>) {
        match record {
            Ok(r) => self.records.push(r),
            Err(e) => {
                self.rejected += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Parses an `ExportLogsServiceRequest` in JSON; `now` (ns) times
/// records that carry no time.
pub fn parse_logs_json(body: &[u8], now: i64) -> Result<Parsed, OtlpError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        refuse(
            format!("line {} column {}", e.line(), e.column()),
            format!("not an OTLP logs request ({{\"resourceLogs\": [...]}}): {e}"),
        )
    })?;
    let Value::Object(request) = value else {
        return Err(refuse("the body", "an OTLP logs request is an object"));
    };
    let mut parsed = Parsed::default();
    for (i, resource_logs) in list(&request, "resourceLogs", "the request")?
        .iter()
        .enumerate()
    {
        let at = format!("resourceLogs[{i}]");
        let resource_logs = object(resource_logs, &at)?;
        let resource_attrs = match resource_logs.get("resource") {
            Some(resource) => attributes(
                object(resource, &format!("{at}.resource"))?,
                &format!("{at}.resource"),
            )?,
            None => Vec::new(),
        };
        for (j, scope_logs) in list(resource_logs, "scopeLogs", &at)?.iter().enumerate() {
            let at = format!("{at}.scopeLogs[{j}]");
            let scope_logs = object(scope_logs, &at)?;
            for (k, record) in list(scope_logs, "logRecords", &at)?.iter().enumerate() {
                let at = format!("{at}.logRecords[{k}]");
                parsed.add(log_record(&resource_attrs, record, &at, now));
            }
        }
    }
    Ok(parsed)
}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, OtlpError> {
    value
        .as_object()
        .ok_or_else(|| refuse(at, "expected an object"))
}

/// The array under `key`, empty when absent.
fn list<'a>(of: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a [Value], OtlpError> {
    match of.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(refuse(format!("{at}.{key}"), "expected an array")),
    }
}

/// `attributes`: `[{"key": k, "value": AnyValue}]`, values as text.
fn attributes(of: &Map<String, Value>, at: &str) -> Result<Vec<(String, String)>, OtlpError> {
    let mut out = Vec::new();
    for (i, kv) in list(of, "attributes", at)?.iter().enumerate() {
        let at = format!("{at}.attributes[{i}]");
        let kv = object(kv, &at)?;
        let Some(Value::String(key)) = kv.get("key") else {
            return Err(refuse(
                format!("{at}.key"),
                "an attribute's key is a string",
            ));
        };
        let value = kv
            .get("value")
            .map_or(Ok(String::new()), |v| any_value(v, &format!("{at}.value")))?;
        out.push((key.clone(), value));
    }
    Ok(out)
}

/// An `AnyValue` as text: a string as it is, a number or bool as
/// written, an array, map or bytes (base64, as sent) as JSON.
fn any_value(value: &Value, at: &str) -> Result<String, OtlpError> {
    let Value::Object(v) = value else {
        return Err(refuse(
            at,
            "an AnyValue is an object ({\"stringValue\": ...})",
        ));
    };
    let Some((kind, inner)) = v.iter().next() else {
        return Ok(String::new());
    };
    Ok(match (kind.as_str(), inner) {
        ("stringValue", Value::String(s)) | ("bytesValue", Value::String(s)) => s.clone(),
        ("intValue", Value::String(s)) if s.parse::<i64>().is_ok() => s.clone(),
        ("intValue", Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        ("doubleValue", Value::Number(n)) => n.to_string(),
        ("boolValue", Value::Bool(b)) => b.to_string(),
        ("arrayValue", Value::Object(_)) | ("kvlistValue", Value::Object(_)) => inner.to_string(),
        _ => {
            return Err(refuse(
                format!("{at}.{kind}"),
                "not an AnyValue of that kind",
            ));
        }
    })
}

/// An int64 or uint64 as JSON gives it: a decimal string or a number.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => s.parse::<u64>().ok().and_then(|n| i64::try_from(n).ok()),
        Value::Number(n) => n.as_u64().and_then(|n| i64::try_from(n).ok()),
        _ => None,
    }
}

/// The level of a severity number (1-4 trace ... 21-24 fatal).
fn level_of_number(n: i64) -> Level {
    match n {
        1..=4 => Level::Trace,
        5..=8 => Level::Debug,
        13..=16 => Level::Warn,
        17..=20 => Level::Error,
        21..=24 => Level::Fatal,
        _ => Level::Info,
    }
}

fn log_record(
    resource: &[(String, String)],
    record: &Value,
    at: &str,
    now: i64,
) -> Result<LogRecord, OtlpError> {
    let r = object(record, at)?;
    let time = |key: &str| -> Result<Option<i64>, OtlpError> {
        match r.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match integer(v) {
                Some(0) => Ok(None),
                Some(t) => Ok(Some(t)),
                None => Err(refuse(
                    format!("{at}.{key}"),
                    format!("{v} is not nanoseconds since the epoch"),
                )),
            },
        }
    };
    let ts = match time("timeUnixNano")? {
        Some(t) => t,
        None => time("observedTimeUnixNano")?.unwrap_or(now),
    };
    let level = match (r.get("severityText"), r.get("severityNumber")) {
        (Some(Value::String(text)), _) if !text.is_empty() => Level::parse(text),
        (_, Some(n)) => level_of_number(
            integer(n).ok_or_else(|| refuse(format!("{at}.severityNumber"), "not a number"))?,
        ),
        _ => Level::Info,
    };
    let message = match r.get("body") {
        None | Some(Value::Null) => String::new(),
        Some(body) => any_value(body, &format!("{at}.body"))?,
    };
    let mut record = with_resource(resource, ts, level, message);
    record.attrs.extend(attributes(r, at)?);
    for (key, attr) in [("traceId", "trace_id"), ("spanId", "span_id")] {
        match r.get(key) {
            Some(Value::String(id)) if !id.is_empty() => {
                if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(refuse(format!("{at}.{key}"), "an id is hex"));
                }
                record
                    .attrs
                    .push((attr.to_owned(), id.to_ascii_lowercase()));
            }
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(refuse(format!("{at}.{key}"), "an id is a hex string")),
        }
    }
    Ok(record)
}

/// A record under a resource: its `service.name` and `host.name` give
/// the service and host, its other attributes come first.
fn with_resource(
    resource: &[(String, String)],
    ts: i64,
    level: Level,
    message: String,
) -> LogRecord {
    let mut record = LogRecord {
        ts,
        level,
        service: String::new(),
        host: String::new(),
        attrs: Vec::new(),
        message,
        tenant: String::new(),
    };
    for (key, value) in resource {
        match key.as_str() {
            "service.name" => record.service.clone_from(value),
            "host.name" => record.host.clone_from(value),
            _ => record.attrs.push((key.clone(), value.clone())),
        }
    }
    record
}

/// Parses an `ExportLogsServiceRequest` in protobuf, with the same
/// mapping as [`parse_logs_json`]: a value that is no string is written
/// as the JSON mapping writes it, so both encodings store the same
/// record.
pub fn parse_logs_proto(body: &[u8], now: i64) -> Result<Parsed, OtlpError> {
    use prost::Message;
    let request = pb::ExportLogsServiceRequest::decode(body).map_err(|e| {
        refuse(
            "the body",
            format!("not an OTLP ExportLogsServiceRequest: {e}"),
        )
    })?;
    let mut parsed = Parsed::default();
    for (i, resource_logs) in request.resource_logs.into_iter().enumerate() {
        let resource: Vec<(String, String)> = resource_logs
            .resource
            .map(|r| r.attributes.iter().map(key_value).collect())
            .unwrap_or_default();
        for (j, scope_logs) in resource_logs.scope_logs.into_iter().enumerate() {
            for (k, record) in scope_logs.log_records.into_iter().enumerate() {
                let at = format!("resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]");
                parsed.add(proto_record(&resource, record, &at, now));
            }
        }
    }
    Ok(parsed)
}

fn proto_record(
    resource: &[(String, String)],
    r: pb::LogRecord,
    at: &str,
    now: i64,
) -> Result<LogRecord, OtlpError> {
    let time = |t: u64, key: &str| {
        i64::try_from(t)
            .map_err(|_| refuse(format!("{at}.{key}"), format!("{t} is past the year 2262")))
    };
    let ts = match (r.time_unix_nano, r.observed_time_unix_nano) {
        (0, 0) => now,
        (0, t) => time(t, "observedTimeUnixNano")?,
        (t, _) => time(t, "timeUnixNano")?,
    };
    let level = if r.severity_text.is_empty() {
        level_of_number(r.severity_number.into())
    } else {
        Level::parse(&r.severity_text)
    };
    let message = r.body.as_ref().map(text_of).unwrap_or_default();
    let mut record = with_resource(resource, ts, level, message);
    record.attrs.extend(r.attributes.iter().map(key_value));
    for (id, attr) in [(&r.trace_id, "trace_id"), (&r.span_id, "span_id")] {
        if !id.is_empty() {
            record.attrs.push((attr.to_owned(), hex(id)));
        }
    }
    Ok(record)
}

fn key_value(kv: &pb::KeyValue) -> (String, String) {
    (
        kv.key.clone(),
        kv.value.as_ref().map(text_of).unwrap_or_default(),
    )
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// An `AnyValue` as text, as [`any_value`] gives its JSON form.
fn text_of(value: &pb::AnyValue) -> String {
    use pb::any_value::Value as V;
    match &value.value {
        None => String::new(),
        Some(V::StringValue(s)) => s.clone(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::IntValue(n)) => n.to_string(),
        // Written as the JSON mapping writes them: a double as a
        // number, bytes in base64, an array or map as its JSON.
        Some(_) => {
            let Value::Object(mut outer) = json_of(value) else {
                return String::new();
            };
            match outer.values_mut().next().map(Value::take) {
                Some(Value::String(s)) => s,
                Some(inner) => inner.to_string(),
                None => String::new(),
            }
        }
    }
}

/// An `AnyValue` in the protobuf JSON mapping (`{"stringValue": ...}`).
fn json_of(value: &pb::AnyValue) -> Value {
    use base64::Engine;
    use pb::any_value::Value as V;
    let (kind, inner) = match &value.value {
        None => return Value::Object(Map::new()),
        Some(V::StringValue(s)) => ("stringValue", Value::from(s.as_str())),
        Some(V::BoolValue(b)) => ("boolValue", Value::from(*b)),
        Some(V::IntValue(n)) => ("intValue", Value::from(n.to_string())),
        Some(V::DoubleValue(d)) => (
            "doubleValue",
            serde_json::Number::from_f64(*d)
                .map_or_else(|| Value::from(d.to_string()), Value::Number),
        ),
        Some(V::BytesValue(b)) => (
            "bytesValue",
            Value::from(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
        Some(V::ArrayValue(a)) => (
            "arrayValue",
            serde_json::json!({"values": a.values.iter().map(json_of).collect::<Vec<_>>()}),
        ),
        Some(V::KvlistValue(l)) => (
            "kvlistValue",
            serde_json::json!({"values": l.values.iter().map(|kv| serde_json::json!({
                "key": kv.key,
                "value": kv.value.as_ref().map_or(Value::Object(Map::new()), json_of),
            })).collect::<Vec<_>>()}),
        ),
    };
    Value::Object(Map::from_iter([(kind.to_owned(), inner)]))
}

/// The answer to a protobuf request: an `ExportLogsServiceResponse`,
/// with a `partial_success` when records were rejected.
pub fn response_proto(parsed_rejected: u64, first_error: Option<&OtlpError>) -> Vec<u8> {
    use prost::Message;
    let response = pb::ExportLogsServiceResponse {
        partial_success: first_error.map(|e| pb::ExportLogsPartialSuccess {
            rejected_log_records: i64::try_from(parsed_rejected).unwrap_or(i64::MAX),
            error_message: e.to_string(),
        }),
    };
    response.encode_to_vec()
}

/// A `google.rpc.Status` (code and message), the body of an error
/// answer to a protobuf request.
pub fn status_proto(code: i32, message: &str) -> Vec<u8> {
    use prost::Message;
    pb::Status {
        code,
        message: message.to_owned(),
    }
    .encode_to_vec()
}

/// The OTLP logs messages lode reads (`opentelemetry/proto/collector/
/// logs/v1`, `logs/v1`, `common/v1`, `resource/v1`), written out for
/// prost; fields lode does not use are skipped by the decoder.
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportLogsPartialSuccess>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsPartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_log_records: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// `google.rpc.Status`, without its details.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeLogs {
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "11")]
        pub observed_time_unix_nano: u64,
        #[prost(int32, tag = "2")]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        pub attributes: Vec<KeyValue>,
        #[prost(bytes = "vec", tag = "9")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "10")]
        pub span_id: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
            #[prost(double, tag = "4")]
            DoubleValue(f64),
            #[prost(message, tag = "5")]
            ArrayValue(super::ArrayValue),
            #[prost(message, tag = "6")]
            KvlistValue(super::KeyValueList),
            #[prost(bytes = "vec", tag = "7")]
            BytesValue(Vec<u8>),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const REQUEST: &[u8] = br#"{"resourceLogs":[{
        "resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout"}},
            {"key":"host.name","value":{"stringValue":"h3"}},
            {"key":"deployment.environment","value":{"stringValue":"prod"}}]},
        "scopeLogs":[{"scope":{"name":"app"},"logRecords":[
            {"timeUnixNano":"1700000000000000001","severityNumber":17,"severityText":"ERROR",
             "body":{"stringValue":"payment failed"},
             "attributes":[{"key":"order","value":{"intValue":"42"}},{"key":"retry","value":{"boolValue":true}}],
             "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174"},
            {"observedTimeUnixNano":1700000000000000002,"severityNumber":13,"body":{"kvlistValue":{"values":[]}}},
            {"timeUnixNano":"soon","body":{"stringValue":"bad time"}},
            {}
        ]}]}]}"#;

    #[test]
    fn resources_records_and_ids_map_to_fields() {
        let parsed = parse_logs_json(REQUEST, 99).unwrap();
        assert_eq!(parsed.records.len(), 3);
        assert_eq!(parsed.rejected, 1);
        assert!(
            parsed
                .first_error
                .unwrap()
                .to_string()
                .starts_with("resourceLogs[0].scopeLogs[0].logRecords[2].timeUnixNano")
        );
        let r = &parsed.records[0];
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
                "checkout",
                "h3",
                &Level::Error,
                "payment failed"
            )
        );
        let attrs: Vec<(&str, &str)> = r
            .attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            attrs,
            [
                ("deployment.environment", "prod"),
                ("order", "42"),
                ("retry", "true"),
                ("trace_id", "5b8efff798038103d269b633813fc60c"),
                ("span_id", "eee19b7ec3c1b174"),
            ]
        );
        let second = &parsed.records[1];
        assert_eq!(
            (second.ts, &second.level),
            (1_700_000_000_000_000_002, &Level::Warn)
        );
        assert_eq!(second.message, r#"{"values":[]}"#);
        let empty = &parsed.records[2];
        assert_eq!(
            (empty.ts, &empty.level, empty.message.as_str()),
            (99, &Level::Info, "")
        );
    }

    #[test]
    fn a_body_that_is_no_request_is_refused() {
        for (body, at) in [
            (&b"nope"[..], "line 1 column"),
            (b"[]", "the body"),
            (br#"{"resourceLogs":{}}"#, "the request.resourceLogs"),
            (
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":7}]}]}"#,
                "resourceLogs[0].scopeLogs[0].logRecords",
            ),
        ] {
            let err = parse_logs_json(body, 0).unwrap_err();
            assert!(err.to_string().starts_with(at), "{err} (wanted {at})");
        }
        assert!(parse_logs_json(b"{}", 0).unwrap().records.is_empty());
    }

    fn text(s: &str) -> Option<pb::AnyValue> {
        Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(s.to_owned())),
        })
    }

    fn attr(key: &str, value: pb::any_value::Value) -> pb::KeyValue {
        pb::KeyValue {
            key: key.to_owned(),
            value: Some(pb::AnyValue { value: Some(value) }),
        }
    }

    /// The first two records of [`REQUEST`], and one past i64's time.
    fn proto_request() -> Vec<u8> {
        use pb::any_value::Value as V;
        use prost::Message;
        let resource = pb::Resource {
            attributes: vec![
                attr("service.name", V::StringValue("checkout".into())),
                attr("host.name", V::StringValue("h3".into())),
                attr("deployment.environment", V::StringValue("prod".into())),
            ],
        };
        let records = vec![
            pb::LogRecord {
                time_unix_nano: 1_700_000_000_000_000_001,
                severity_number: 17,
                severity_text: "ERROR".into(),
                body: text("payment failed"),
                attributes: vec![
                    attr("order", V::IntValue(42)),
                    attr("retry", V::BoolValue(true)),
                ],
                trace_id: vec![
                    0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81,
                    0x3f, 0xc6, 0x0c,
                ],
                span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
                ..Default::default()
            },
            pb::LogRecord {
                observed_time_unix_nano: 1_700_000_000_000_000_002,
                severity_number: 13,
                body: Some(pb::AnyValue {
                    value: Some(V::KvlistValue(pb::KeyValueList { values: vec![] })),
                }),
                ..Default::default()
            },
            pb::LogRecord {
                time_unix_nano: u64::MAX,
                ..Default::default()
            },
            pb::LogRecord::default(),
        ];
        pb::ExportLogsServiceRequest {
            resource_logs: vec![pb::ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![pb::ScopeLogs {
                    log_records: records,
                }],
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn a_protobuf_request_reads_as_its_json_twin() {
        use pb::any_value::Value as V;
        let proto = parse_logs_proto(&proto_request(), 99).unwrap();
        let json = parse_logs_json(REQUEST, 99).unwrap();
        assert_eq!(proto.records, json.records);
        assert_eq!(proto.rejected, 1);
        let err = proto.first_error.unwrap();
        assert!(
            err.to_string()
                .starts_with("resourceLogs[0].scopeLogs[0].logRecords[2].timeUnixNano"),
            "{err}"
        );
        let nested = pb::AnyValue {
            value: Some(V::ArrayValue(pb::ArrayValue {
                values: vec![
                    text("a").unwrap(),
                    pb::AnyValue {
                        value: Some(V::DoubleValue(1.5)),
                    },
                    pb::AnyValue {
                        value: Some(V::BytesValue(b"hi".to_vec())),
                    },
                ],
            })),
        };
        assert_eq!(
            text_of(&pb::AnyValue {
                value: Some(V::DoubleValue(0.5))
            }),
            "0.5"
        );
        assert_eq!(
            text_of(&pb::AnyValue {
                value: Some(V::BytesValue(b"hi".to_vec()))
            }),
            "aGk="
        );
        assert_eq!(
            text_of(&nested),
            r#"{"values":[{"stringValue":"a"},{"doubleValue":1.5},{"bytesValue":"aGk="}]}"#
        );
        assert!(parse_logs_proto(b"\xff\xff", 0).is_err());
        use prost::Message;
        let answer =
            pb::ExportLogsServiceResponse::decode(response_proto(1, Some(&err)).as_slice())
                .unwrap();
        assert_eq!(answer.partial_success.unwrap().rejected_log_records, 1);
        assert!(response_proto(0, None).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
                           at in 0usize..2000, to in proptest::num::u8::ANY) {
            let _ = parse_logs_json(&bytes, 0);
            let mut body = REQUEST.to_vec();
            let i = at % body.len();
            body[i] = to;
            let _ = parse_logs_json(&body, 0);
            let _ = parse_logs_proto(&bytes, 0);
            let mut body = proto_request();
            let i = at % body.len();
            body[i] = to;
            let _ = parse_logs_proto(&body, 0);
        }
    }
}
