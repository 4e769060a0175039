//! Members joining and leaving, and leadership handed over; asked of
//! the leader.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use openraft::ChangeMembers;
use openraft::errors::{ClientWriteError, RaftError};

use super::{ClusterNode, Error, Result, known_leader, moved};
use lode_replication_wire::{Node, NodeId};

impl ClusterNode {
    /// Refuses an operation only the leader makes.
    pub(super) fn lead(&self) -> Result<()> {
        if self.replica.raft.is_leader() {
            return Ok(());
        }
        Err(Error::NotLeader {
            node: self.id,
            leader: known_leader(&self.replica.raft),
        })
    }

    /// Adds node `id`, reached at peer address `addr`: it joins as a
    /// learner, receives the log, and becomes a voter once it has caught
    /// up (returns then). Asked of the leader. A node already a voter is
    /// refused; a learner left by an interrupted add is carried on.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<()> {
        self.lead()?;
        if self.status().voters.contains(&id) {
            return Err(Error::Config(format!("node {id} is already a voter")));
        }
        addr.parse::<SocketAddr>()
            .map_err(|e| Error::Config(format!("peer address '{addr}' of node {id}: {e}")))?;
        tracing::info!(node = id, %addr, "adding a learner; waiting for it to catch up");
        self.replica
            .raft
            .add_learner(id, Node { addr }, true)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        tracing::info!(node = id, "learner caught up; making it a voter");
        self.change_voters(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Removes node `id` from the voters and from the cluster. Asked of
    /// the leader; a leader that removes itself steps down once the change
    /// is committed.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.lead()?;
        let status = self.status();
        if !status.voters.contains(&id) && !status.learners.contains(&id) {
            return Err(Error::Config(format!("node {id} is not a member")));
        }
        if status.voters.contains(&id) && status.voters.len() == 1 {
            return Err(Error::Config(format!(
                "node {id} is the only voter; a cluster needs one"
            )));
        }
        // Voters removed without being kept as learners leave the
        // membership in the same change.
        let ids = BTreeSet::from([id]);
        let change = if status.voters.contains(&id) {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        self.change_voters(change).await
    }

    async fn change_voters(&self, change: ChangeMembers<NodeId, Node>) -> Result<()> {
        self.replica
            .raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => moved(self.id, f),
                other => Error::Raft(other.to_string()),
            })
    }

    /// Asks this node (the leader) to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<()> {
        self.replica
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }
}
