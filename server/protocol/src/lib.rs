//! lode's wire formats, as pure functions over bytes: no sockets, no
//! clock (times are passed in), no async runtime. The server, the client
//! and the import tool share them, and the fuzzers reach every decoder.
//!
//! - [`wire`]: the binary protocol: handshake, frames with request ids,
//!   rkyv [`Request`] and [`Response`] messages, typed [`ErrorCode`]s. An
//!   append carries a batch payload exactly as the WAL stores it.
//! - [`json`]: records as JSON objects, in (lenient) and out.
//! - [`syslog`]: RFC 5424 and RFC 3164 lines, octet-counted or newline
//!   framed.
//! - [`lines`]: log files' lines: JSON, syslog, logfmt, regex layouts and
//!   their detection, timestamps in the common layouts.
//!
//! ```
//! use lode_protocol::wire::{self, Kind, Request};
//!
//! let mut bytes = Vec::new();
//! wire::encode_request(7, &Request::Ping, &mut bytes)?;
//! let (frame, used) = wire::decode_frame(&bytes, wire::DEFAULT_MAX_FRAME)?.expect("whole frame");
//! assert_eq!((frame.kind, frame.id, used), (Kind::Request, 7, bytes.len()));
//! assert_eq!(wire::decode_request(frame.payload)?, Request::Ping);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
pub mod journal;
pub mod json;
pub mod lines;
pub mod loki;
pub mod otlp;
pub mod syslog;
pub mod wire;

pub use wire::{ErrorCode, Request, Response, WireError, WireRecord};
