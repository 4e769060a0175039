//! Feeds arbitrary bytes to the parsers of shipper input: JSON records,
//! syslog messages with their framing, Loki's JSON and protobuf push
//! (with its snappy block and its label strings), OTLP JSON and
//! protobuf logs, the journal export format. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_protocol::{journal, json, loki, otlp, syslog};

fuzz_target!(|data: &[u8]| {
    let now = 1_767_225_600_000_000_000;
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = json::parse_record(text, &json::Shape::default(), now);
    }
    let mut rest = data;
    while let Ok(Some((message, used))) = syslog::split_frame(rest, 4096) {
        let _ = syslog::parse(message, now);
        rest = rest.get(used..).unwrap_or_default();
    }
    let _ = syslog::parse(data, now);
    let _ = loki::parse_push_json(data);
    let _ = loki::parse_push_proto(data);
    if let Ok(unpacked) = loki::unsnappy(data, 1 << 20) {
        let _ = loki::parse_push_proto(&unpacked);
    }
    let _ = loki::parse_labels(&String::from_utf8_lossy(data));
    let _ = otlp::parse_logs_json(data, now);
    let _ = otlp::parse_logs_proto(data, now);
    let _ = journal::parse_export(data, now);
});
