//! The index's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("query {0}")]
    Query(#[from] lode_query::ParseError),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("index directory: {0}")]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("engine: {0}")]
    Engine(#[from] lode_engine::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("indexer: {0}")]
    Indexer(String),
}

pub type Result<T> = std::result::Result<T, Error>;
