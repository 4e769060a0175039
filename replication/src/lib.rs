//! lode's replication: one Raft group whose log is the lode WAL.
//!
//! [openraft](https://docs.rs/openraft) decides what is committed and who
//! leads; this crate gives it storage, a network and a node to run in:
//! - [`store`]: the log over the engine's replicated WAL (each entry
//!   written once, as the frame every node stores), the state machine over
//!   the engine's apply (records readable and given their seqs once
//!   committed);
//! - [`wire`] (crate `lode-replication-wire`): the messages between nodes
//!   and the log's state file, pure functions over bytes, fuzzed;
//! - `net`: those messages over QUIC, one stream per openraft client;
//! - [`sim`]: or over a simulated network, lossy as a seed says, for the
//!   seeded tests;
//! - [`snapshot`]: catch-up by segments: what a node lacks of a snapshot,
//!   and the staging area its segment files arrive in;
//! - `keys`: where each recent batch key is in the log, so that a retried
//!   batch is written once;
//! - [`tls`]: the cluster CA and each node's certificate (mutual TLS);
//! - [`ClusterNode`]: all of it started over an engine.
//!
//! This is the only crate that imports openraft: no openraft type appears
//! in another crate's public API.

mod guard;
mod keys;
pub mod latency;
mod net;
mod node;
pub mod sim;
pub mod snapshot;
pub mod store;
pub mod tls;

pub use lode_replication_wire::wire;

pub use lode_replication_wire::{
    Applied, Batch, Entry, LogId, Membership, Node, NodeId, TypeConfig, Vote,
};
pub use node::{
    ClusterConfig, ClusterNode, Error, Figures, KEEP_LOG_BYTES, PendingWrite, Result,
    SNAPSHOT_BYTES_PER_SEC, Status,
};
pub use store::{LogStore, SegmentList, StateMachine, open};

/// A Raft node of lode's type configuration over lode's state machine.
pub type Raft = openraft::Raft<TypeConfig, store::StateMachine>;
