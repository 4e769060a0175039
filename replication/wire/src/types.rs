//! The Raft type configuration: what lode's log entries, nodes and
//! responses are to openraft.

use std::fmt;
use std::sync::Arc;

use lode_codec::EncodedBatch;

/// A node's id in the cluster.
pub type NodeId = u64;

/// A node as the membership knows it: the address of its peer endpoint
/// (QUIC), `host:port`.
pub type Node = openraft::BasicNode;

/// An application entry: one batch of records, encoded once by whoever
/// took it in (and checked there); the same bytes are written to every
/// node's WAL.
#[derive(Debug, Clone)]
pub struct Batch(pub Arc<EncodedBatch>);

impl Batch {
    pub fn new(batch: EncodedBatch) -> Batch {
        Batch(Arc::new(batch))
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} records", self.0.count())
    }
}

/// What applying an entry gave: the seqs of its records, `start..end`
/// (empty for a blank or membership entry, and for entries applied again
/// after a restart, which no client waits for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub start: u64,
    pub end: u64,
}

openraft::declare_raft_types!(
    /// lode's Raft types: log ids are (term, index), the frame's own fields.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = NodeId,
        Node = Node,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = crate::runtime::LodeRuntime,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
