//! The server crate's one error type: what can stop a server from
//! starting or closing. Request failures are [`crate::Failure`]s.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("config: {0}")]
    BadConfig(String),
    #[error(transparent)]
    Engine(#[from] lode_engine::Error),
    #[error("index: {0}")]
    Index(#[from] lode_index::Error),
    #[error("tls {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster: {0}")]
    Cluster(#[from] lode_replication::Error),
    #[error("{0}")]
    Runtime(String),
}

pub type Result<T> = std::result::Result<T, Error>;
