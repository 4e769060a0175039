//! Arbitrary text into the query parser and, when it parses, the
//! brute-force matcher and the time parser. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_codec::LogRecord;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(query) = lode_query::parse(text) {
        let record = LogRecord { message: text.to_owned(), ..LogRecord::default() };
        let _ = query.matches(&lode_query::Prepared::new(&record));
    }
    let _ = lode_query::parse_time(text, 0);
});
