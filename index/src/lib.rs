//! lode's search: a tantivy full-text index that follows the engine.
//!
//! Queries use lode's language (see [`lode_query`]): words, phrases, field
//! filters, boolean logic, prefixes, a time range beside the text. Results
//! come newest first with a cursor for the next page; counts and live
//! tails too. Blocking API, no async runtime.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lode_engine::{Engine, Level, LogRecord, Options};
//! use lode_index::{Index, IndexOptions, Search};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Arc::new(Engine::open(dir.path().join("data"), Options::default())?);
//! let index = Index::open(Arc::clone(&engine), dir.path().join("index"), IndexOptions::default())?;
//! let seqs = engine.append(&[LogRecord {
//!     level: Level::Error,
//!     service: "api".into(),
//!     message: "Connection refused by upstream".into(),
//!     ..LogRecord::default()
//! }])?;
//! assert!(index.wait_indexed(seqs.end - 1, Duration::from_secs(10)));
//! let page = index.search(&Search { query: "\"connection refused\" level:>=warn".into(), ..Search::default() })?;
//! assert_eq!(page.records[0].seq, seqs.start);
//! assert_eq!(index.count("service:api", None, None, None)?, 1);
//! // A server scopes every read to its caller's tenants:
//! let theirs = ["team-a".to_owned()];
//! assert_eq!(index.count("service:api", Some(&theirs), None, None)?, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bitmaps;
mod columns;
mod error;
mod facets;
mod index;
mod numbers;
mod ordinals;
mod parts;
mod reading;
mod recheck;
mod schema;
mod time;
mod tokenizer;

pub use error::{Error, Result};
pub use index::{
    FacetField, Histogram, Index, IndexOptions, IndexStats, Page, Search, Tail, scoped,
};
pub use lode_query::{ParseError, Query, parse, parse_time};
