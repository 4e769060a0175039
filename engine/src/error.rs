//! The engine's one error type.

use std::io;
use std::path::PathBuf;

/// Everything the engine can fail with. Messages are lowercase and name
/// the file, offset or limit involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("data directory {path} is locked by another process ({holder})")]
    Locked { path: PathBuf, holder: String },
    #[error("the engine refuses writes after a failed write or fsync: {cause}")]
    Poisoned { cause: String },
    #[error("batch of {bytes} encoded bytes exceeds max_batch_bytes = {limit}")]
    BatchTooLarge { bytes: usize, limit: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("record encoding: {0}")]
    Codec(#[from] lode_codec::CodecError),
    #[error("the engine is closed")]
    Closed,
    /// The data directory's disk is below its free-space floor (or a
    /// write found it full): writes are refused, reads go on, and writes
    /// resume once space is freed.
    #[error(
        "no space for writes: {free} bytes free in {path}, below the floor of {floor}; \
         writes resume once retention or the operator frees space"
    )]
    NoSpace {
        path: PathBuf,
        free: u64,
        floor: u64,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl ToString) -> Error {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.to_string(),
        }
    }
}
