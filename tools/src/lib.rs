//! Shared pieces of lode's command-line tools: the deterministic corpus
//! generator that tests, benchmarks and the demo use, and JSON lines output.

mod corpus;
mod json;
mod rng;
mod time;

pub use corpus::Corpus;
pub use json::{JsonRecord, to_json_line};
pub use rng::SplitMix64;
pub use time::format_rfc3339;
