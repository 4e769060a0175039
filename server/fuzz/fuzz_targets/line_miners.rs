//! Feeds arbitrary lines to what Logs Drilldown's answers read from
//! stored lines: the detected-field parsers and types, and the pattern
//! miner (several lines, so that clusters merge). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_logql::drain::Drain;
use lode_logql::fields;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut drain = Drain::new();
    for (i, line) in text.split('\n').enumerate() {
        if let Some((_, found)) = fields::line_fields(line) {
            for field in found {
                let _ = fields::value_type(&field.value);
            }
        }
        drain.train(line, i as i64 % 3);
    }
    for cluster in drain.clusters() {
        let _ = cluster.pattern();
    }
});
