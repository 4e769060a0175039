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

use std::borrow::Cow;

use lode_codec::{Level, LogRecord, format_rfc3339, parse_rfc3339};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod quick;

/// Which JSON fields hold the record's own fields: the first name present
/// in each list is taken (a name in two lists fills the field where it
/// ranks higher; at equal ranks, the earlier list's).
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
            // The upper-case names are syslog-ng's (its elasticsearch-http()
            // template writes its macros by name).
            level: names(&["level", "severity", "log.level", "loglevel", "PRIORITY"]),
            service: names(&["service", "app", "programname", "program", "PROGRAM"]),
            host: names(&["host", "hostname", "HOST"]),
            message: names(&["message", "msg", "log", "MESSAGE"]),
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
///
/// The object is read in one pass straight into the record's fields (no
/// intermediate JSON tree): import parses hundreds of thousands of lines a
/// second through here. A line of the common kind (flat, no escapes) is
/// read by a scanner of its own ([`quick`]), others by serde_json: the
/// scanner took under half the instructions of the whole parse.
pub fn parse_record(line: &str, shape: &Shape, now: i64) -> Result<(LogRecord, Parsed), String> {
    match quick::draft(line, shape) {
        Some(draft) => draft.finish(now),
        None => parse_with_serde(line, shape, now),
    }
}

fn parse_with_serde(line: &str, shape: &Shape, now: i64) -> Result<(LogRecord, Parsed), String> {
    if !line.trim_start().starts_with('{') {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        return Err(format!("expected a JSON object, got {}", type_name(&value)));
    }
    let mut de = serde_json::Deserializer::from_str(line);
    let draft = RecordSeed { shape }
        .deserialize(&mut de)
        .and_then(|draft| de.end().map(|()| draft))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => e.to_string(),
            _ => format!("not JSON: {e}"),
        })?;
    draft.finish(now)
}

/// Which record field a JSON key fills, with the rank of that name in its
/// [`Shape`] list (lower wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Ts,
    Level,
    Service,
    Host,
    Message,
}

/// Every slot, in the order a [`Draft`] holds them.
const SLOTS: [Slot; 5] = [
    Slot::Ts,
    Slot::Level,
    Slot::Service,
    Slot::Host,
    Slot::Message,
];

impl Shape {
    /// Names are tried rank by rank (every field's first name, then every
    /// second name ...): most keys are a field's first name, found in a
    /// few comparisons.
    fn slot(&self, key: &str) -> Option<(Slot, usize)> {
        let lists = [
            (Slot::Ts, &self.ts),
            (Slot::Level, &self.level),
            (Slot::Service, &self.service),
            (Slot::Host, &self.host),
            (Slot::Message, &self.message),
        ];
        let ranks = lists
            .iter()
            .map(|(_, names)| names.len())
            .max()
            .unwrap_or(0);
        (0..ranks).find_map(|rank| {
            lists
                .iter()
                .find(|(_, names)| names.get(rank).is_some_and(|name| name == key))
                .map(|(slot, _)| (*slot, rank))
        })
    }
}

/// A JSON value as lode keeps it: text (borrowed from the line when it
/// has no escapes), an integer, nothing, or (rarely) something structured.
#[derive(Debug)]
enum Scalar<'de> {
    Text(Cow<'de, str>),
    Int(i64),
    Null,
    Other(Value),
}

impl Scalar<'_> {
    /// The value as attribute or field text; objects and arrays as JSON.
    fn into_text(self) -> Option<String> {
        match self {
            Scalar::Text(s) => Some(s.into_owned()),
            Scalar::Int(n) => Some(n.to_string()),
            Scalar::Null => None,
            Scalar::Other(Value::String(s)) => Some(s),
            Scalar::Other(Value::Null) => None,
            Scalar::Other(other) => Some(other.to_string()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Scalar::Text(_) => "a string",
            Scalar::Int(_) => "a number",
            Scalar::Null => "null",
            Scalar::Other(v) => type_name(v),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Scalar<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(i64::try_from(v).map_or(Scalar::Other(Value::from(v)), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other(Value::from(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(Cow::Owned(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(map)).map(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(seq)).map(Scalar::Other)
            }
        }
        de.deserialize_any(V)
    }
}

/// An object's key, borrowed from the line when it has no escapes: most
/// keys name a field and are never kept.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        de.deserialize_str(V)
    }
}

/// One of a record's own fields as read: the rank of the name it came
/// from, that name, its value.
type Field<'de> = (usize, Cow<'de, str>, Scalar<'de>);

/// A record being read: each of its own fields by [`SLOTS`] order.
#[derive(Debug, Default)]
struct Draft<'de> {
    fields: [Option<Field<'de>>; SLOTS.len()],
    /// From the `attrs` object, then from other keys.
    attrs: Vec<(String, String)>,
    others: Vec<(String, String)>,
}

impl<'de> Draft<'de> {
    fn offer(&mut self, slot: Slot, rank: usize, key: Cow<'de, str>, value: Scalar<'de>) {
        if matches!(value, Scalar::Null) {
            return;
        }
        let Some(held) = self.fields.get_mut(slot as usize) else {
            return;
        };
        match held {
            None => *held = Some((rank, key, value)),
            // The better-ranked name keeps the field, the other is an attribute.
            Some(field) if rank < field.0 => {
                let (_, old_key, old_value) = std::mem::replace(field, (rank, key, value));
                add_attr(&mut self.others, old_key.into_owned(), old_value);
            }
            Some(_) => add_attr(&mut self.others, key.into_owned(), value),
        }
    }

    fn finish(self, now: i64) -> Result<(LogRecord, Parsed), String> {
        let mut record = LogRecord {
            ts: now,
            ..LogRecord::default()
        };
        let mut parsed = Parsed { defaulted_ts: true };
        let fields = SLOTS.into_iter().zip(self.fields);
        for (slot, (_, name, value)) in fields.filter_map(|(slot, f)| Some((slot, f?))) {
            match slot {
                Slot::Ts => {
                    record.ts = scalar_ts(&name, value)?;
                    parsed.defaulted_ts = false;
                }
                Slot::Level => record.level = level(&name, value)?,
                Slot::Service => record.service = field_text(&name, value)?,
                Slot::Host => record.host = field_text(&name, value)?,
                Slot::Message => record.message = field_text(&name, value)?,
            }
        }
        record.attrs = self.attrs;
        record.attrs.extend(self.others);
        Ok((record, parsed))
    }
}

/// The level a field holds, its text read in place.
fn level(name: &str, value: Scalar<'_>) -> Result<Level, String> {
    match value {
        Scalar::Text(text) => Ok(Level::parse(&text)),
        other => Ok(Level::parse(&field_text(name, other)?)),
    }
}

fn field_text(name: &str, value: Scalar<'_>) -> Result<String, String> {
    match value {
        Scalar::Other(Value::Object(_) | Value::Array(_)) => Err(format!(
            "field '{name}' must be a string, got {}",
            value.kind()
        )),
        other => Ok(other.into_text().unwrap_or_default()),
    }
}

fn scalar_ts(name: &str, value: Scalar<'_>) -> Result<i64, String> {
    match value {
        Scalar::Text(s) => parse_rfc3339(&s).ok_or_else(|| {
            format!("field '{name}': '{s}' is not an RFC 3339 time (2026-01-01T10:00:00Z)")
        }),
        Scalar::Int(n) => Ok(n),
        Scalar::Other(Value::Number(n)) => Err(format!(
            "field '{name}': {n} is not an integer of nanoseconds since the epoch"
        )),
        other => Err(format!(
            "field '{name}' must be RFC 3339 text or integer ns, got {}",
            other.kind()
        )),
    }
}

/// Adds `value` under `key`: nested objects become dotted keys.
fn add_attr(out: &mut Vec<(String, String)>, key: String, value: Scalar<'_>) {
    match value {
        Scalar::Other(Value::Object(inner)) => flatten(&key, inner, out),
        other => {
            if let Some(text) = other.into_text() {
                out.push((key, text));
            }
        }
    }
}

struct RecordSeed<'s> {
    shape: &'s Shape,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Draft<'de>;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Draft<'de>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Draft<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Draft<'de>, A::Error> {
        let mut draft = Draft::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key == "seq" {
                // A seq is lode's to give: one in the input (an export read
                // back) is dropped, not kept as an attribute.
                map.next_value::<IgnoredAny>()?;
            } else if key == "attrs" {
                if let Some(other) = map.next_value_seed(AttrsSeed(&mut draft.attrs))? {
                    add_attr(&mut draft.others, key.into_owned(), other);
                }
            } else if let Some((slot, rank)) = self.shape.slot(&key) {
                let value = map.next_value::<Scalar>()?;
                draft.offer(slot, rank, key, value);
            } else {
                let value = map.next_value::<Scalar>()?;
                add_attr(&mut draft.others, key.into_owned(), value);
            }
        }
        Ok(draft)
    }
}

/// Reads an `attrs` object straight into attribute pairs; anything but
/// an object is handed back, to be kept as an attribute named `attrs`.
struct AttrsSeed<'a>(&'a mut Vec<(String, String)>);

impl<'de> DeserializeSeed<'de> for AttrsSeed<'_> {
    type Value = Option<Scalar<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<Scalar<'de>>, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AttrsSeed<'_> {
    type Value = Option<Scalar<'de>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an attrs object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Scalar<'de>>, A::Error> {
        while let Some((key, value)) = map.next_entry::<String, Scalar<'de>>()? {
            add_attr(self.0, key, value);
        }
        Ok(None)
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<Scalar<'de>>, E> {
        Ok(Some(Scalar::Text(Cow::Owned(v.to_owned()))))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<Scalar<'de>>, E> {
        Ok(Some(Scalar::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<Scalar<'de>>, E> {
        Ok(Some(Scalar::Other(Value::from(v))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Option<Scalar<'de>>, E> {
        Ok(Some(Scalar::Other(Value::from(v))))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Option<Scalar<'de>>, E> {
        Ok(Some(Scalar::Text(Cow::Owned(v.to_string()))))
    }
    fn visit_unit<E>(self) -> Result<Option<Scalar<'de>>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<Scalar<'de>>, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(|v| Some(Scalar::Other(v)))
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
    /// Only for a record of a tenant other than the default.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub tenant: &'a str,
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
            tenant: &record.tenant,
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
            tenant: &record.tenant,
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
    /// The record's tenant as stored; written only when not the default.
    pub tenant: &'a str,
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
    if !fields.tenant.is_empty() {
        out.extend_from_slice(b"\"tenant\":");
        escaped(out, fields.tenant);
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

    /// Keys and values with escapes (read into owned text) and without
    /// (borrowed from the line) give the same record; of two names of one
    /// field the better-ranked wins wherever it stands, the other is kept
    /// as an attribute.
    #[test]
    fn escapes_and_aliases_in_any_order() {
        let plain =
            parse(r#"{"message":"a","msg":"b","level":"error","ts":"2026-01-01T00:00:00Z"}"#);
        let escaped = parse(
            r#"{"m\u0065ssage":"\u0061","m\u0073g":"b","lev\u0065l":"\u0065rror","\u0074s":"2026-01-01T00:00:00\u005a"}"#,
        );
        let reversed =
            parse(r#"{"ts":"2026-01-01T00:00:00Z","level":"error","msg":"b","message":"a"}"#);
        for r in [plain, escaped, reversed] {
            let r = r.unwrap();
            assert_eq!(r.message, "a");
            assert_eq!(r.level, Level::Error);
            assert_eq!(r.ts, 1_767_225_600_000_000_000);
            assert_eq!(r.attrs, vec![("msg".to_owned(), "b".to_owned())]);
        }
        let r = parse(r#"{"severity":"warn","level":null,"hostname":"h","host":"i"}"#).unwrap();
        assert_eq!(r.level, Level::Warn, "a null field is no field");
        assert_eq!(r.host, "i");
        assert_eq!(r.attrs, vec![("hostname".to_owned(), "h".to_owned())]);
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
            tenant: String::new(),
        };
        let mut line = Vec::new();
        to_json_line(Some(3), &record, &mut line);
        let text = std::str::from_utf8(&line).unwrap();
        let (back, _) = parse_record(text.trim_end(), &Shape::default(), 0).unwrap();
        assert_eq!(back, record);
    }

    /// A value of a generated line: of the common kind or not.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-zA-Z0-9 .:_-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            2 => "\\PC{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            1 => "[\\x00-\\x7f]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            2 => (-1000i64..1000).prop_map(|n| n.to_string()),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|n| serde_json::to_string(&n).unwrap()),
            1 => Just("2026-01-01T00:00:00.5Z".to_owned()).prop_map(|s| format!("\"{s}\"")),
            1 => prop::sample::select(vec![
                "true",
                "false",
                "null",
                "-0",
                "01",
                "1.5",
                "1e3",
                "-",
                "[1,2]",
                "{}",
                "{\"a\":{\"b\":1}}",
                "tru",
                "nul",
                "\"\\u0041\"",
                "\"\t\"",
                "\"\u{1}\"",
                "\"abc",
                "0",
                "-7",
                "00",
                "-01",
                "1.",
                "1e",
                "+1",
                "--1",
                "999999999999999999",
                "-999999999999999999",
                "1000000000000000000",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775808",
                "-9223372036854775809",
                "truex",
                "fals",
                "nullx",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        let names = vec![
            "ts",
            "@timestamp",
            "time",
            "level",
            "severity",
            "service",
            "app",
            "host",
            "hostname",
            "message",
            "msg",
            "seq",
            "attrs",
            "pid",
            "ü k",
            "",
        ];
        prop_oneof![
            prop::sample::select(names).prop_map(|k| format!("\"{k}\"")),
            "\\PC{0,4}".prop_map(|k| serde_json::to_string(&k).unwrap()),
        ]
    }

    /// Whitespace between tokens, JSON's or not.
    fn space() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            8 => prop::sample::select(vec!["", " ", "\t", "\r\n "]),
            1 => prop::sample::select(vec!["\u{b}", "\u{c}", "\u{a0}", "\u{feff}"]),
        ]
    }

    fn member() -> impl Strategy<Value = String> {
        let pair = || (key(), space(), value()).prop_map(|(k, s, v)| format!("{k}{s}:{s}{v}"));
        let attrs = (proptest::collection::vec(pair(), 0..4), space()).prop_map(|(pairs, s)| {
            format!(
                "\"attrs\"{s}:{s}{{{s}{}{s}}}",
                pairs.join(&format!("{s},{s}"))
            )
        });
        prop_oneof![4 => pair(), 1 => attrs]
    }

    /// A JSON object of generated members, with whitespace between tokens
    /// or not, then possibly damaged: cut short or a byte put in.
    fn line() -> impl Strategy<Value = String> {
        let object =
            (proptest::collection::vec(member(), 0..8), space()).prop_map(|(members, space)| {
                format!(
                    "{space}{{{space}{}{space}}}{space}",
                    members.join(&format!("{space},{space}"))
                )
            });
        let damage = prop_oneof![
            3 => Just(None),
            1 => prop::sample::select(vec![
                "", ",", "}", "{", "[", ":", "\"", "x", "\\", "-", "0", ".", "e", " ", "\0",
                "\u{feff}", "\u{b}",
            ])
            .prop_map(Some),
        ];
        (object, any::<prop::sample::Index>(), damage).prop_map(|(line, at, damage)| match damage {
            None => line,
            Some(piece) => {
                let cut = line
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(at.index(line.chars().count().max(1)))
                    .unwrap_or(0);
                let (head, tail) = line.split_at(cut);
                match piece {
                    "" => head.to_owned(),
                    _ => format!("{head}{piece}{tail}"),
                }
            }
        })
    }

    /// Lines of the common kind take the scanner's way.
    #[test]
    fn common_lines_are_scanned() {
        for line in [
            r#"{"ts":"2026-01-01T00:00:00Z","level":"info","service":"hdfs","host":"h-1","attrs":{"pid":"4411","user":7,"ok":true,"gone":null},"message":"Received block blk_123 of size 91178 from /10.250.19.102"}"#,
            r#" { "seq" : 12 , "message" : "m" , "status" : -503 } "#,
            "{}",
        ] {
            assert!(quick::draft(line, &Shape::default()).is_some(), "{line}");
        }
        for line in [
            r#"{"message":"a "quoted" word"}"#,
            r#"{"ts":1.5}"#,
            r#"{"message":{"a":1}}"#,
            r#"{"n":-0}"#,
            r#"{"n":12345678901234567890}"#,
            r#"{"a":1}x"#,
        ] {
            assert!(quick::draft(line, &Shape::default()).is_none(), "{line}");
        }
    }

    /// The property below is not empty: a good share of the generated
    /// lines are ones the scanner reads.
    #[test]
    fn generated_lines_are_often_scanned() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = line();
        let scanned = (0..1000)
            .filter(|_| {
                let line = strategy.new_tree(&mut runner).unwrap().current();
                quick::draft(&line, &Shape::default()).is_some()
            })
            .count();
        assert!(scanned >= 100, "{scanned} of 1000");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_line_is_a_record_or_an_error(line in ".{0,120}") {
            let _ = parse(&line);
        }

        /// Whatever line the scanner reads, it reads as serde_json does.
        #[test]
        fn the_scanner_reads_as_serde_json(line in line()) {
            let shape = Shape::default();
            if let Some(draft) = quick::draft(&line, &shape) {
                prop_assert_eq!(draft.finish(5), parse_with_serde(&line, &shape, 5), "{}", line);
            }
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
                message, tenant: String::new(), };
            let mut line = Vec::new();
            to_json_line(Some(7), &record, &mut line);
            let ours: Value = serde_json::from_slice(&line).unwrap();
            let theirs = serde_json::to_value(JsonRecord::new(Some(7), &record)).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }
}
