//! The JSON lines shape of a record, as lode ingests and exports it.

use lode_engine::LogRecord;
use serde::Serialize;

use crate::time::format_rfc3339;

/// One record as a JSON object: `ts` in RFC 3339, `attrs` as an object.
#[derive(Debug, Serialize)]
pub struct JsonRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub ts: String,
    pub level: &'a str,
    pub service: &'a str,
    pub host: &'a str,
    pub attrs: serde_json::Map<String, serde_json::Value>,
    pub message: &'a str,
}

impl<'a> JsonRecord<'a> {
    pub fn new(seq: Option<u64>, record: &'a LogRecord) -> JsonRecord<'a> {
        let attrs = record
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
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

/// Appends `record` as one JSON line (with its newline) to `out`.
pub fn to_json_line(seq: Option<u64>, record: &LogRecord, out: &mut Vec<u8>) {
    // Serialising strings and a map of strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &JsonRecord::new(seq, record));
    out.push(b'\n');
}
