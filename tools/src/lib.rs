//! Shared pieces of lode's command-line tools: the deterministic corpus
//! generator that tests, benchmarks and the demo use, and JSON lines output.

mod corpus;
mod rng;

pub use corpus::Corpus;
pub use lode_engine::format_rfc3339;
pub use lode_protocol::json::{JsonRecord, to_json_line};
pub use rng::SplitMix64;
