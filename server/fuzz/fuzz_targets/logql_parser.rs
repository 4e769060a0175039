//! Feeds arbitrary text to the LogQL parser Grafana's queries reach
//! (`/loki/api/v1/query*`), and what it accepts to the index's candidate
//! words. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_protocol::logql::{self, Expr};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Expr::Log(query)) = logql::parse(text) {
        let _ = query.candidates();
        let _ = query.exact();
    }
});
