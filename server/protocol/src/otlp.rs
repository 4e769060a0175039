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
                match log_record(&resource_attrs, record, &at, now) {
                    Ok(r) => parsed.records.push(r),
                    Err(e) => {
                        parsed.rejected += 1;
                        parsed.first_error.get_or_insert(e);
                    }
                }
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
    let mut record = LogRecord {
        ts,
        level,
        service: String::new(),
        host: String::new(),
        attrs: Vec::new(),
        message,
    };
    for (key, value) in resource {
        match key.as_str() {
            "service.name" => record.service.clone_from(value),
            "host.name" => record.host.clone_from(value),
            _ => record.attrs.push((key.clone(), value.clone())),
        }
    }
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

    proptest::proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
                           at in 0usize..2000, to in proptest::num::u8::ANY) {
            let _ = parse_logs_json(&bytes, 0);
            let mut body = REQUEST.to_vec();
            let i = at % body.len();
            body[i] = to;
            let _ = parse_logs_json(&body, 0);
        }
    }
}
