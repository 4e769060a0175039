//! lode's server: an engine and its index behind the binary protocol
//! (TCP and QUIC), an HTTP API (JSON records, Elasticsearch `_bulk`,
//! Prometheus metrics) and syslog listeners (TCP and UDP).
//!
//! ```no_run
//! use lode_server::{Config, Server};
//!
//! # async fn run() -> lode_server::Result<()> {
//! let config = Config { data: "./lode-data".into(), ..Config::default() };
//! let server = Server::start(config).await?;
//! println!("binary protocol on {:?}", server.addresses().tcp);
//! tokio::signal::ctrl_c().await.ok();
//! server.shutdown().await
//! # }
//! ```
//!
//! Every front end goes through one [`Service`]: the place limits are
//! enforced, blocking work leaves the async workers, and errors get their
//! wire codes.

pub mod auth;
mod binary;
mod config;
mod error;
mod http;
mod listen;
mod loki;
mod metrics;
mod scoped;
mod server;
mod service;
mod syslog;
pub mod tenants;
pub mod tls;
mod ui;

pub use auth::{Caller, Scope, Scopes};
pub use config::{
    Auth, Cluster, Config, DEFAULT_HTTP, DEFAULT_LISTEN, DEFAULT_SYSLOG, ELECTION_TIMEOUT_MS,
    HEARTBEAT_MS, Limits, Replication, Storage, TlsFiles,
};
pub use error::{Error, Result};
pub use metrics::{Metrics, Source};
pub use scoped::Scoped;
pub use server::{Addresses, Server};
pub use service::{Appended, Failure, Outcome, PendingAppend, Service};
