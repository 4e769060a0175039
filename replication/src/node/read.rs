//! Linearizable reads: the leader confirms with a quorum that it still
//! leads and names its commit index (ReadIndex); a reader waits until its
//! node has applied through it.

use openraft::ReadPolicy;
use openraft::errors::{LinearizableReadError, RaftError};

use super::{ClusterNode, Error, READ_TIMEOUT, Replica, Result, known_leader};
use lode_replication_wire::wire::{Request, Response};

impl Replica {
    /// This node, the leader, confirms with a quorum that it still leads
    /// (ReadIndex) and answers the index a linearizable read applies
    /// through: its commit index when asked.
    async fn read_index(&self) -> Result<u64> {
        let confirmed = tokio::time::timeout(
            READ_TIMEOUT,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "no quorum confirmed the leader within {READ_TIMEOUT:?}"
            ))
        })?;
        match confirmed {
            Ok(read) => Ok(read.index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(self.not_leader())
            }
            Err(RaftError::Fatal(fatal)) => Err(Error::Stopped(fatal.to_string())),
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// Serves a follower's read-index request.
    pub(crate) async fn read_index_here(&self) -> Response {
        match self.read_index().await {
            Ok(index) => Response::ReadIndex(index),
            Err(Error::NotLeader { leader, .. }) => Response::NotLeader(leader),
            Err(e) => Response::Error(e.to_string()),
        }
    }
}

impl ClusterNode {
    /// Returns once this node has applied every entry committed before the
    /// call, so that a read here sees every write acknowledged before it,
    /// by any node (a linearizable read). The leader confirms with a
    /// quorum that it still leads and names its commit index (asked over
    /// the peer link from a follower); this node then waits until it has
    /// applied through that index.
    pub async fn read_barrier(&self) -> Result<()> {
        let index = if self.replica.raft.is_leader() {
            self.replica.read_index().await?
        } else {
            let Some((id, addr)) = known_leader(&self.replica.raft) else {
                return Err(self.replica.not_leader());
            };
            let ask = || {
                self.replica
                    .network
                    .request(id, &addr, &Request::ReadIndex, READ_TIMEOUT)
            };
            // A failed request drops its connection: the cached one may
            // be to a leader process that has since restarted (seen as
            // "connection lost" after a SIGKILL). Dial afresh once.
            let answer = match ask().await {
                Ok(answer) => Ok(answer),
                Err(_) => ask().await,
            };
            let answer = answer.map_err(|e| Error::Peer {
                node: id,
                reason: format!("asking the leader for a read index: {e}"),
            })?;
            match answer {
                Response::ReadIndex(index) => index,
                Response::NotLeader(leader) => return Err(Error::NotLeader { node: id, leader }),
                Response::Error(reason) => return Err(Error::Peer { node: id, reason }),
                other => {
                    return Err(Error::Peer {
                        node: id,
                        reason: format!("answered a read index request with {other:?}"),
                    });
                }
            }
        };
        self.wait_for_applied(index, READ_TIMEOUT).await
    }
}
