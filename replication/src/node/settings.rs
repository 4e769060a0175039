//! Settings every node holds (entries of the log, carried by snapshots),
//! and the no-space alarm kept in them.

use std::collections::BTreeSet;
use std::time::Duration;

use lode_engine::EncodedBatch;
use openraft::async_runtime::WatchReceiver;

use super::{ClusterNode, Error, FORWARD_TIMEOUT, Replica, Result, known_leader};
use lode_replication_wire::NodeId;
use lode_replication_wire::wire::{Request, Response};

/// The setting that holds node `id`'s no-space alarm while it is raised.
fn no_space_alarm(id: NodeId) -> String {
    format!("{NO_SPACE_ALARM}{id}")
}

const NO_SPACE_ALARM: &str = "alarm/no-space/";

/// The nodes whose no-space alarm is raised in `settings`.
pub(super) fn no_space_alarms(settings: &lode_engine::Settings) -> Vec<NodeId> {
    settings
        .range(NO_SPACE_ALARM.to_owned()..)
        .map_while(|(name, _)| name.strip_prefix(NO_SPACE_ALARM))
        .filter_map(|id| id.parse().ok())
        .collect()
}

impl Replica {
    /// Proposes setting `name` to `value` (removing it for `None`) and
    /// waits until it is applied here; a follower forwards it to the
    /// leader.
    async fn set(&self, name: String, value: Option<Vec<u8>>) -> Result<()> {
        if !self.raft.is_leader() {
            let me = *self.raft.node_id();
            let (id, addr) = match known_leader(&self.raft) {
                Some((id, addr)) if id != me => (id, addr),
                leader => return Err(Error::NotLeader { node: me, leader }),
            };
            let request = Request::ForwardSetting { name, value };
            let answer = self
                .network
                .request(id, &addr, &request, FORWARD_TIMEOUT)
                .await
                .map_err(|e| Error::Peer {
                    node: id,
                    reason: format!("forwarding a setting: {e}"),
                })?;
            return match answer {
                Response::Written { .. } => Ok(()),
                Response::NotLeader(leader) => Err(Error::NotLeader { node: id, leader }),
                Response::Error(reason) => Err(Error::Peer { node: id, reason }),
                other => Err(Error::Peer {
                    node: id,
                    reason: format!("answered a setting with {other:?}"),
                }),
            };
        }
        self.propose_setting(&name, value.as_deref()).await
    }

    /// Proposes a setting on this node, the leader, and waits until it is
    /// applied here.
    async fn propose_setting(&self, name: &str, value: Option<&[u8]>) -> Result<()> {
        let payload = lode_replication_wire::wire::encode_setting(name, value);
        let batch = EncodedBatch::without_records(lode_engine::FrameKind::Setting, &payload)
            .map_err(|e| Error::Config(format!("setting {name}: {e}")))?;
        self.propose(batch, None).await?.wait().await.map(|_| ())
    }

    /// Serves a forwarded setting: made here if this node leads (never
    /// forwarded again).
    pub(crate) async fn setting_here(&self, name: String, value: Option<Vec<u8>>) -> Response {
        if !self.raft.is_leader() {
            return Response::NotLeader(known_leader(&self.raft));
        }
        match self.propose_setting(&name, value.as_deref()).await {
            Ok(()) => Response::Written { start: 0, end: 0 },
            Err(Error::NotLeader { leader, .. }) => Response::NotLeader(leader),
            Err(e) => Response::Error(e.to_string()),
        }
    }
}

impl ClusterNode {
    /// Sets the engine setting `name` to `value` (`None` removes it) on
    /// every node: an entry of the log (proposed by the leader; a
    /// follower forwards it), applied in log order everywhere, carried
    /// by snapshots. Returns once it is applied on the leader.
    pub async fn put_setting(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        self.replica.set(name.to_owned(), value).await
    }

    /// The members whose no-space alarm is raised (see [`Error::NoSpace`]).
    pub fn no_space_alarms(&self) -> Vec<NodeId> {
        no_space_alarms(&self.engine.settings())
    }
}

/// How often a node compares its disk's free space with its alarm.
pub(super) const SPACE_CHECK: Duration = Duration::from_millis(500);

/// Raises this node's no-space alarm while its engine finds the disk
/// below the floor, and clears it once space is freed. The alarm is a
/// setting, held by every node, so the whole cluster refuses writes
/// while any member lacks space (etcd's NOSPACE alarm): no member's log
/// fills its disk, none stops. The leader also clears the alarms of
/// nodes that are no longer members.
pub(super) async fn space_loop(replica: Replica, every: Duration) {
    let me = *replica.raft.node_id();
    loop {
        tokio::time::sleep(every).await;
        let raised = no_space_alarms(&replica.engine.settings());
        let space = replica.engine.space();
        let mut changes = Vec::new();
        if space.low && !raised.contains(&me) {
            tracing::warn!(
                free = space.free,
                floor = space.floor,
                "the disk is below its free-space floor: the cluster refuses writes until space is freed"
            );
            changes.push((me, Some(space.free.to_string().into_bytes())));
        } else if !space.low && raised.contains(&me) {
            tracing::info!(free = space.free, "disk space freed: writes resume");
            changes.push((me, None));
        }
        if replica.raft.is_leader() {
            let members = {
                let m = replica.raft.metrics();
                let m = m.borrow_watched();
                m.membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect::<BTreeSet<_>>()
            };
            let gone = raised.iter().filter(|id| !members.contains(id));
            changes.extend(gone.map(|id| (*id, None)));
        }
        for (id, value) in changes {
            if let Err(e) = replica.set(no_space_alarm(id), value).await {
                tracing::debug!(error = %e, node = id, "no-space alarm not changed yet");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alarms are read back from among other settings, whatever
    /// sorts before or after them.
    #[test]
    fn no_space_alarms_are_read_among_other_settings() {
        let mut settings = lode_engine::Settings::new();
        for (name, value) in [
            (no_space_alarm(3), "1024"),
            (no_space_alarm(12), "0"),
            ("alarm/other/1".to_owned(), "x"),
            ("alarm/no-space/not-a-node".to_owned(), "x"),
            ("token/a".to_owned(), "x"),
        ] {
            settings.insert(name, value.as_bytes().to_vec());
        }
        assert_eq!(no_space_alarms(&settings), vec![12, 3]);
        assert!(no_space_alarms(&lode_engine::Settings::new()).is_empty());
    }
}
