//! What a node reports: its view of the cluster, its latencies and
//! counters, and waits on them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use super::{ClusterNode, Error, Result};
use crate::latency::LatencySnapshot;
use lode_replication_wire::NodeId;

/// The state of one node, as its Raft metrics say.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub node_id: NodeId,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// Per follower (on the leader): the index it is known to hold.
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// Per follower (on the leader): bytes of the log it lacks.
    pub lag_bytes: BTreeMap<NodeId, u64>,
    /// The members of the newest membership this node holds: voters (of
    /// every config, while a change is joint) and learners, with their
    /// peer addresses.
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub addrs: BTreeMap<NodeId, String>,
    /// The last entry this node's snapshot covers, and the last one its
    /// log purged.
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    /// Snapshot transfers under way (sending, on the leader; receiving,
    /// on a follower).
    pub transfers: Vec<crate::snapshot::TransferProgress>,
    /// The members whose no-space alarm is raised: while any is, the
    /// cluster refuses writes.
    pub no_space: Vec<NodeId>,
}

/// A node's latencies and counters, for `/metrics`.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Log appends until durable here (write and fsync).
    pub append: LatencySnapshot,
    /// Proposals on this node (as leader) until committed and applied.
    pub commit: LatencySnapshot,
    /// Times this node saw the leader change (to another node or none).
    pub leader_changes: u64,
    /// Peer messages and answers refused before openraft saw them: a
    /// sender without the certificate of the node it claims, or fields
    /// openraft would fail on.
    pub refused_messages: u64,
    /// Snapshot transfers: (name, help, value) of each counter.
    pub snapshots: Vec<(&'static str, &'static str, u64)>,
}

impl ClusterNode {
    /// This node's view of the cluster.
    pub fn status(&self) -> Status {
        let m = self.replica.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower => "follower",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let matched: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let lag_bytes = matched
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| (*id, self.engine.log_bytes(m.map_or(0, |m| m + 1)..)))
            .collect();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let addrs = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        Status {
            node_id: self.id,
            voters,
            learners,
            addrs,
            role,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|c| c.index),
            applied: m.last_applied.map(|a| a.index),
            snapshot: m.snapshot.map(|s| s.index),
            purged: m.purged.map(|p| p.index),
            transfers: self.replica.transfers.underway(),
            no_space: self.no_space_alarms(),
            matched,
            lag_bytes,
        }
    }

    /// Latencies and counts for `/metrics`.
    pub fn figures(&self) -> Figures {
        Figures {
            append: self.append_latency.snapshot(),
            commit: self.replica.commit_latency.snapshot(),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            refused_messages: self.replica.refused_messages.load(Ordering::Relaxed),
            snapshots: self.replica.transfers.counters(),
        }
    }

    /// Waits until this node sees a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId> {
        let metrics = self
            .replica
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(wait_error)?;
        metrics
            .current_leader
            .ok_or_else(|| Error::Timeout("no leader".to_owned()))
    }

    /// Waits until this node has applied at least `index`, up to `timeout`.
    pub async fn wait_for_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        self.replica
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(wait_error)
    }
}

/// A wait on openraft's metrics that ended unmet: its time ran out, or the
/// node is shutting down.
fn wait_error(error: openraft::metrics::WaitError) -> Error {
    match error {
        openraft::metrics::WaitError::ShuttingDown => Error::Stopped(error.to_string()),
        openraft::metrics::WaitError::Timeout(..) => Error::Timeout(error.to_string()),
    }
}
