//! The record model and WAL frame codec of lode.
//!
//! Pure functions over bytes: no files, no sockets, no clock, no RocksDB,
//! so the server's client and the fuzzers can link it cheaply.
//!
//! ```
//! use lode_codec::{EncodedBatch, Level, LogRecord, decode_frame};
//!
//! let records = vec![LogRecord {
//!     ts: 1_700_000_000_000_000_000,
//!     level: Level::Warn,
//!     service: "api".into(),
//!     host: "web-1".into(),
//!     attrs: vec![("user".into(), "42".into())],
//!     message: "slow request".into(),
//! }];
//! let mut batch = EncodedBatch::encode(&records)?;
//! let bytes = batch.seal(0, 1).to_vec();
//! let frame = decode_frame(&bytes)?;
//! assert_eq!(frame.index, 1);
//! assert_eq!(frame.batch()?.record(0)?.message.as_str(), "slow request");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod frame;
mod record;

pub use batch::BatchView;
pub use frame::{
    EncodedBatch, Frame, FrameError, FrameKind, HEADER_LEN, MAX_PAYLOAD, decode_frame,
};
pub use record::{
    ArchivedLevel, ArchivedLogRecord, Level, LogRecord, Record, access_record, encode_record,
};

/// Errors of encoding and decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("invalid rkyv data: {0}")]
    Invalid(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("batch of {count} records exceeds the u32 count limit")]
    BatchTooLarge { count: usize },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CodecError>;
