//! Feeds arbitrary text to the LogQL parser Grafana's queries reach
//! (`/loki/api/v1/query*`), and what it accepts to the index's candidate
//! words and to its pipeline over a record (parsers, templates). Nothing
//! may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_logql::Expr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Expr::Log(query)) = lode_logql::parse(text) {
        let _ = query.candidates();
        let _ = query.exact();
        let record = lode_codec::LogRecord {
            ts: 1_700_000_000_000_000_000,
            service: "api".into(),
            host: "web-1".into(),
            attrs: vec![("env".into(), "prod".into())],
            message: r#"10.0.0.1 - GET /x 200 took=1.5s {"a":{"b":[1]}} red"#.into(),
            ..Default::default()
        };
        let _ = query.sample(&record);
    }
});
