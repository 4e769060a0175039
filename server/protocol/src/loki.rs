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
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut record = LogRecord {
        ts,
        level: Level::Info,
        service: String::new(),
        host: String::new(),
        attrs: Vec::new(),
        message: message.clone(),
    };
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| labels.iter().find(|(k, _)| k == n))
            .map(|(k, v)| (k.clone(), v.clone()))
    };
    let service = first(SERVICE);
    let host = first(HOST);
    let level = first(LEVEL);
    if let Some((_, v)) = &service {
        record.service.clone_from(v);
    }
    if let Some((_, v)) = &host {
        record.host.clone_from(v);
    }
    match &level {
        Some((_, v)) => record.level = Level::parse(v),
        // As Loki's `detected_level`: a JSON line's own level.
        None => {
            if let Some(v) = json_line_level(message) {
                record.level = Level::parse(&v);
            }
        }
    }
    let taken = |k: &String| {
        [&service, &host, &level]
            .iter()
            .any(|t| t.as_ref().is_some_and(|(n, _)| n == k))
    };
    attrs.extend(labels.iter().filter(|(k, _)| !taken(k)).cloned());
    match metadata {
        None => {}
        Some(Value::Object(meta)) => {
            for (k, v) in meta {
                let Value::String(v) = v else {
                    return Err(refuse(
                        format!("{at}[2].{k}"),
                        "metadata values are strings",
                    ));
                };
                attrs.push((k.clone(), v.clone()));
            }
        }
        Some(_) => {
            return Err(refuse(
                format!("{at}[2]"),
                "metadata is an object of strings",
            ));
        }
    }
    record.attrs = attrs;
    Ok(record)
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
