//! lode's Raft types and the byte formats of replication, apart from
//! everything that does I/O: the messages between nodes, a membership
//! entry's payload and the log's state file, as pure functions over bytes
//! ([`wire`]), and the openraft type configuration they carry ([`TypeConfig`]).
//! Fuzzers link this crate without RocksDB (`replication/fuzz`).

pub mod runtime;
mod types;
pub mod wire;

pub use types::{
    Applied, Batch, Entry, LogId, Membership, Node, NodeId, StoredMembership, TypeConfig, Vote,
};
