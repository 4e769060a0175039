//! lode's storage engine: a durable, embeddable log of records.
//!
//! Appends are encoded once with rkyv into WAL frames, written by one
//! group-commit thread and acknowledged when durable. Recent records are
//! read in place from the memory-mapped WAL; finished WAL segments are
//! sealed into immutable SST files ingested into RocksDB, and dropped whole
//! by retention. No async runtime: blocking calls, two background threads.
//!
//! ```
//! use lode_engine::{Engine, Level, LogRecord, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), Options::default())?;
//! let batch = vec![LogRecord {
//!     ts: 1_700_000_000_000_000_000,
//!     level: Level::Error,
//!     service: "api".into(),
//!     host: "web-1".into(),
//!     attrs: vec![("status".into(), "500".into())],
//!     message: "upstream timed out".into(),
//!     tenant: String::new(), // the default tenant
//! }];
//! let seqs = engine.append(&batch)?; // returns once fsync'd
//! let record = engine.get(seqs.start)?.expect("just appended");
//! assert_eq!(record.message, "upstream timed out");
//!
//! engine.seal()?; // normally by size or age, in the background
//! assert_eq!(engine.scan(..).count(), 1);
//! assert_eq!(engine.stats().sealed_records, 1);
//! engine.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod engine;
mod error;
mod keys;
mod log;
mod options;
mod priority;
mod read;
mod sealer;
mod shared;
mod space;
mod store;
#[cfg(test)]
mod tests;
mod wal;
mod writer;

pub use engine::{AppendTicket, Engine};
pub use error::{Error, Result};
pub use lode_codec::SegmentMeta;
pub use lode_codec::{
    ArchivedLevel, ArchivedLogRecord, BatchKey, CodecError, DEFAULT_TENANT, EncodedBatch, Fields,
    FrameKind, HEADER_LEN, KEY_LEN, KeyedEntry, Level, LogRecord, Record, RecordRef, SeqRange,
    format_rfc3339, parse_rfc3339, stored_tenant, tenant_name,
};
pub use log::{LogBounds, LogEntry, SnapshotInstall};
pub use options::{Background, Durability, KeyWindow, Options, RecoveryMode, Retention};
pub use priority::{Hurry, Overdue, hurry_background, lower_thread_priority};
pub use read::{Scan, Stats, Subscription};
pub use sealer::RetentionReport;
pub use shared::now_ns;
pub use space::Space;
pub use store::Settings;
pub use wal::TailCut;
