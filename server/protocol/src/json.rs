//! Records as JSON objects: the shape of HTTP ingest, `lode ingest`,
//! import and export.
//!
//! In: `ts` (RFC 3339 text or integer ns), `level`, `service`, `host`,
//! `attrs` (an object), `message`; other fields become attributes, but
//! `seq`, which lode assigns, is dropped. Field
//! names can be remapped ([`Shape`]) and common aliases of shippers are
//! understood (`@timestamp`, `msg`, `severity`, `hostname` ...).
//!
//! Out: [`JsonRecord`], `ts` as RFC 3339 with nanoseconds.

use lode_codec::{Level, LogRecord, format_rfc3339, parse_rfc3339};
use serde::Serialize;
use serde_json::{Map, Value};

/// Which JSON fields hold the record's own fields: the first name present
/// in each list is taken.
#[derive(Debug, Clone)]
pub struct Shape {
    pub ts: Vec<String>,
    pub level: Vec<String>,
    pub service: Vec<String>,
    pub host: Vec<String>,
    pub message: Vec<String>,
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            ts: names(&["ts", "@timestamp", "timestamp", "time"]),
            level: names(&["level", "severity", "log.level", "loglevel"]),
            service: names(&["service", "app", "programname", "program"]),
            host: names(&["host", "hostname"]),
            message: names(&["message", "msg", "log"]),
        }
    }
}

/// What became of a parsed line besides its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The line had no timestamp; `now` was used.
    pub defaulted_ts: bool,
}

/// Parses one JSON object into a record; `now` (ns) stands in for a
/// missing timestamp. The error names the field that is wrong.
pub fn parse_record(line: &str, shape: &Shape, now: i64) -> Result<(LogRecord, Parsed), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match value {
        Value::Object(object) => record_from_object(object, shape, now),
        other => Err(format!("expected a JSON object, got {}", type_name(&other))),
    }
}

/// As [`parse_record`], for an object already parsed.
pub fn record_from_object(
    mut object: Map<String, Value>,
    shape: &Shape,
    now: i64,
) -> Result<(LogRecord, Parsed), String> {
    let mut parsed = Parsed::default();
    let ts = match take(&mut object, &shape.ts) {
        Some((name, value)) => parse_ts(&name, &value)?,
        None => {
            parsed.defaulted_ts = true;
            now
        }
    };
    let level = match take(&mut object, &shape.level) {
        Some((name, value)) => Level::parse(&text(&name, value)?),
        None => Level::Info,
    };
    let service = take_text(&mut object, &shape.service)?;
    let host = take_text(&mut object, &shape.host)?;
    let message = take_text(&mut object, &shape.message)?;
    // A seq is lode's to give: one in the input (an export read back) is
    // dropped, not kept as an attribute.
    object.remove("seq");
    let mut attrs = Vec::new();
    if let Some(Value::Object(inner)) = object.remove("attrs") {
        flatten("", inner, &mut attrs);
    }
    flatten("", object, &mut attrs);
    Ok((
        LogRecord {
            ts,
            level,
            service,
            host,
            attrs,
            message,
        },
        parsed,
    ))
}

fn take(object: &mut Map<String, Value>, names: &[String]) -> Option<(String, Value)> {
    names.iter().find_map(|name| {
        object
            .remove(name)
            .filter(|v| !v.is_null())
            .map(|v| (name.clone(), v))
    })
}

fn take_text(object: &mut Map<String, Value>, names: &[String]) -> Result<String, String> {
    match take(object, names) {
        Some((name, value)) => text(&name, value),
        None => Ok(String::new()),
    }
}

fn text(name: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "field '{name}' must be a string, got {}",
            type_name(&other)
        )),
    }
}

fn parse_ts(name: &str, value: &Value) -> Result<i64, String> {
    match value {
        Value::String(s) => parse_rfc3339(s).ok_or_else(|| {
            format!("field '{name}': '{s}' is not an RFC 3339 time (2026-01-01T10:00:00Z)")
        }),
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            format!("field '{name}': {n} is not an integer of nanoseconds since the epoch")
        }),
        other => Err(format!(
            "field '{name}' must be RFC 3339 text or integer ns, got {}",
            type_name(other)
        )),
    }
}

/// Nested objects become dotted keys; other values their JSON text.
fn flatten(prefix: &str, object: Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (key, value) in object {
        let key = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => flatten(&key, inner, out),
            Value::String(s) => out.push((key, s)),
            Value::Null => {}
            other => out.push((key, other.to_string())),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One record as a JSON object: `ts` in RFC 3339, `attrs` as an object.
#[derive(Debug, Serialize)]
pub struct JsonRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub ts: String,
    pub level: &'a str,
    pub service: &'a str,
    pub host: &'a str,
    pub attrs: Map<String, Value>,
    pub message: &'a str,
}

impl<'a> JsonRecord<'a> {
    pub fn new(seq: Option<u64>, record: &'a LogRecord) -> JsonRecord<'a> {
        let attrs = record
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        JsonRecord {
            seq,
            ts: format_rfc3339(record.ts),
            level: record.level.as_str(),
            service: &record.service,
            host: &record.host,
            attrs,
            message: &record.message,
        }
    }
}

/// Appends `record` as one JSON line (with its newline) to `out`: the
/// shape of [`JsonRecord`], written directly (export writes hundreds of MB
/// a second through here).
pub fn to_json_line(seq: Option<u64>, record: &LogRecord, out: &mut Vec<u8>) {
    let attrs = record.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    write_json_line(
        out,
        &Fields {
            seq,
            ts: record.ts,
            level: record.level.as_str(),
            service: &record.service,
            host: &record.host,
            message: &record.message,
        },
        attrs,
    );
}

/// A record's fields, borrowed from an owned or an archived record.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub seq: Option<u64>,
    pub ts: i64,
    pub level: &'a str,
    pub service: &'a str,
    pub host: &'a str,
    pub message: &'a str,
}

/// Appends one JSON line of `fields` and `attrs` to `out`.
pub fn write_json_line<'a>(
    out: &mut Vec<u8>,
    fields: &Fields<'_>,
    attrs: impl Iterator<Item = (&'a str, &'a str)>,
) {
    out.push(b'{');
    if let Some(seq) = fields.seq {
        out.extend_from_slice(b"\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"ts\":\"");
    out.extend_from_slice(format_rfc3339(fields.ts).as_bytes());
    out.extend_from_slice(b"\",\"level\":");
    escaped(out, fields.level);
    out.extend_from_slice(b",\"service\":");
    escaped(out, fields.service);
    out.extend_from_slice(b",\"host\":");
    escaped(out, fields.host);
    out.extend_from_slice(b",\"attrs\":{");
    for (i, (key, value)) in attrs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        escaped(out, key);
        out.push(b':');
        escaped(out, value);
    }
    out.extend_from_slice(b"},\"message\":");
    escaped(out, fields.message);
    out.extend_from_slice(b"}\n");
}

/// `text` as a JSON string, quotes included.
fn escaped(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str) -> Result<LogRecord, String> {
        parse_record(line, &Shape::default(), 42).map(|(r, _)| r)
    }

    #[test]
    fn the_ingest_shape_and_its_aliases() {
        let r = parse(
            r#"{"ts":"2026-01-01T00:00:00.5Z","level":"WARNING","service":"api","host":"h1",
                "attrs":{"user":"7","req":{"id":12}},"message":"slow","status":503}"#,
        )
        .unwrap();
        assert_eq!(r.ts, 1_767_225_600_500_000_000);
        assert_eq!(r.level, Level::Warn);
        assert_eq!((r.service.as_str(), r.host.as_str()), ("api", "h1"));
        assert_eq!(r.message, "slow");
        let mut attrs = r.attrs.clone();
        attrs.sort();
        assert_eq!(
            attrs,
            vec![
                ("req.id".into(), "12".into()),
                ("status".into(), "503".into()),
                ("user".into(), "7".into())
            ]
        );
        let es =
            parse(r#"{"@timestamp":"2026-01-01T00:00:00Z","msg":"hi","hostname":"x"}"#).unwrap();
        assert_eq!((es.message.as_str(), es.host.as_str()), ("hi", "x"));
        let (r, parsed) = parse_record(r#"{"ts":17,"message":"m"}"#, &Shape::default(), 9).unwrap();
        assert_eq!((r.ts, parsed.defaulted_ts), (17, false));
        let (r, parsed) = parse_record(r#"{"message":"m"}"#, &Shape::default(), 9).unwrap();
        assert_eq!((r.ts, parsed.defaulted_ts), (9, true));
    }

    #[test]
    fn errors_name_the_field() {
        assert!(parse("{").unwrap_err().starts_with("not JSON"));
        assert!(parse("[1]").unwrap_err().contains("an array"));
        assert!(parse(r#"{"ts":"yesterday"}"#).unwrap_err().contains("'ts'"));
        assert!(parse(r#"{"ts":1.5}"#).unwrap_err().contains("'ts'"));
        assert!(
            parse(r#"{"message":{"a":1}}"#)
                .unwrap_err()
                .contains("'message'")
        );
    }

    #[test]
    fn output_parses_back_to_the_same_record() {
        let record = LogRecord {
            ts: 1_767_225_600_123_456_789,
            level: Level::Error,
            service: "db".into(),
            host: "h".into(),
            attrs: vec![("k".into(), "v".into())],
            message: "boom \"quoted\"\n".into(),
        };
        let mut line = Vec::new();
        to_json_line(Some(3), &record, &mut line);
        let text = std::str::from_utf8(&line).unwrap();
        let (back, _) = parse_record(text.trim_end(), &Shape::default(), 0).unwrap();
        assert_eq!(back, record);
    }

    proptest! {
        #[test]
        fn any_line_is_a_record_or_an_error(line in ".{0,120}") {
            let _ = parse(&line);
        }

        /// The hand-written writer gives what serde gives, for any text.
        #[test]
        fn json_lines_equal_serde(message in "\\PC{0,40}|[\\x00-\\x7f]{0,40}", key in ".{0,8}", value in ".{0,8}") {
            let record = LogRecord {
                ts: 12_345,
                level: Level::Other("wéird\"".into()),
                service: "s\\".into(),
                host: "h\u{1}".into(),
                attrs: vec![(key, value)],
                message,
            };
            let mut line = Vec::new();
            to_json_line(Some(7), &record, &mut line);
            let ours: Value = serde_json::from_slice(&line).unwrap();
            let theirs = serde_json::to_value(JsonRecord::new(Some(7), &record)).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }
}
