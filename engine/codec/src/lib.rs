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
//!     tenant: "team-a".into(),
//! }];
//! let mut batch = EncodedBatch::encode(&records)?;
//! let bytes = batch.seal(0, 1).to_vec();
//! let frame = decode_frame(&bytes)?;
//! assert_eq!(frame.index, 1);
//! let record = frame.batch()?.record(0)?;
//! assert_eq!((record.tenant, record.message.as_str()), ("team-a", "slow request"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod chunk;
mod crc;
mod frame;
mod keys;
mod record;
mod segment;
mod time;

pub use batch::BatchView;
pub use batch::MAX_BATCH_RECORDS;
pub use chunk::{Chunk, ChunkBuilder, ChunkReader, Cursor};
pub use frame::{
    BatchKey, EncodedBatch, Frame, FrameError, FrameKind, HEADER_LEN, KEY_LEN, MAX_PAYLOAD,
    decode_frame, decode_frame_unchecksummed,
};
pub use keys::{KeyedEntry, SeqRange};
pub use record::{
    ArchivedLevel, ArchivedLogRecord, DEFAULT_TENANT, Fields, Level, LogRecord, MAX_TENANT_BYTES,
    Record, RecordRef, access_record, access_sealed_value, encode_record, encode_sealed_value,
    stored_tenant, tenant_name,
};
pub use segment::{Layout, RecordsCrc, SegmentMeta};
pub use time::{civil_from_days, days_from_civil, format_rfc3339, parse_rfc3339};

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
    /// One record encodes larger than a whole batch may be.
    #[error("a record of {bytes} encoded bytes exceeds the batch limit of {limit}")]
    RecordTooLarge { bytes: usize, limit: usize },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CodecError>;

#[cfg(test)]
mod proptests {
    //! The decoders of outside bytes never panic, whatever the bytes: a
    //! bounded, always-on companion of the cargo-fuzz target in
    //! `engine/fuzz`.
    use proptest::prelude::*;

    use super::*;

    fn read_all(batch: BatchView<'_>) {
        for record in batch.iter().flatten() {
            let _ = record.to_owned_record();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(batch) = decode_frame(&bytes).ok().and_then(|f| f.batch().ok()) {
                read_all(batch);
            }
            if let Some(batch) = decode_frame_unchecksummed(&bytes).ok().and_then(|f| f.batch().ok()) {
                read_all(batch);
            }
            if let Ok(batch) = BatchView::parse(&bytes) {
                read_all(batch);
            }
            if let Ok(record) = access_record(&bytes) {
                let _ = record.to_owned_record();
            }
        }

        #[test]
        fn damaged_real_frames_never_panic(
            message in ".{0,64}",
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let record = LogRecord { message, ..LogRecord::default() };
            let mut batch = EncodedBatch::encode(&[record.clone(), record])?;
            let mut bytes = batch.seal(0, 1).to_vec();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= value;
            }
            // Skip the checksum so the damage reaches the payload decoders.
            if let Some(Ok(batch)) = bytes.get(HEADER_LEN..).map(BatchView::parse) {
                read_all(batch);
            }
            let _ = decode_frame(&bytes);
            if let Some(batch) = decode_frame_unchecksummed(&bytes).ok().and_then(|f| f.batch().ok()) {
                read_all(batch);
            }
        }
    }
}
