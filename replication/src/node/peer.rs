//! What this node answers its peers: forwards, read indexes and settings
//! served here, and openraft's messages once the sender is who it says
//! and their fields are ones openraft takes ([`guard`]). The network (QUIC
//! or the simulation) carries the messages; this answers them.

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;

use super::Replica;
use crate::guard;
use crate::net::{PeerHandler, Sender};
use crate::store::SegmentList;
use lode_replication_wire::wire::{self, Request, Response};

impl PeerHandler for Replica {
    fn answer<'a>(
        &'a self,
        request: Request,
        sender: &'a Sender,
    ) -> crate::net::BoxFuture<'a, Response> {
        Box::pin(answer(self, request, sender))
    }
}

/// A peer's request answered by this node, once the sender is who the
/// request says and its fields are ones openraft takes ([`guard`]).
async fn answer(replica: &Replica, request: Request, sender: &Sender) -> Response {
    let request = match request {
        Request::Forward(batch) => return replica.write_here(batch).await,
        Request::ReadIndex => return replica.read_index_here().await,
        Request::ForwardSetting { name, value } => {
            return replica.setting_here(name, value).await;
        }
        other => other,
    };
    let raft = &replica.raft;
    if let Err(refusal) = admit(replica, &request, sender).await {
        tracing::warn!(%refusal, "refusing a peer message");
        replica
            .refused_messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Response::Error(format!("refused: {refusal}"));
    }
    if let Request::SnapshotInstall { meta, .. } = &request
        && let Ok(local) = local_state(raft, true).await
        && guard::snapshot_is_stale(meta.last_log_id, &local)
    {
        // Already covered by what this node committed: nothing to do
        // (openraft would assert on some of these).
        return Response::Installed(local.vote);
    }
    let failed = |e: &dyn std::fmt::Display| Response::Error(e.to_string());
    match request {
        Request::Vote(req) => raft
            .vote(req)
            .await
            .map_or_else(|e| failed(&e), Response::Vote),
        Request::PreVote(req) => raft
            .pre_vote(req)
            .await
            .map_or_else(|e| failed(&e), Response::Vote),
        Request::Append(req) => raft
            .append_entries(req)
            .await
            .map_or_else(|e| failed(&e), Response::Append),
        Request::TransferLeader(req) => match raft.handle_transfer_leader(req).await {
            Ok(outcome) => Response::TransferLeader(outcome.map_err(|e| e.to_string())),
            Err(e) => failed(&e),
        },
        Request::SnapshotOffer(list) => {
            let leader = raft.current_leader().await;
            let transfers = Arc::clone(&replica.transfers);
            on_disk(move || match transfers.offer(&list, leader) {
                Ok(needed) => Response::SnapshotNeed(needed),
                Err(e) => Response::Error(e.to_string()),
            })
            .await
        }
        Request::SnapshotChunk(chunk) => {
            let transfers = Arc::clone(&replica.transfers);
            on_disk(move || transfers.chunk(&chunk)).await
        }
        Request::SnapshotInstall { vote, meta, data } => install(replica, vote, meta, data).await,
        Request::Forward(_) | Request::ReadIndex | Request::ForwardSetting { .. } => {
            Response::Error("answered above".to_owned())
        }
    }
}

/// This node's id, vote and committed log id, for [`guard`]: from the
/// metrics (which may lag a little; only the term bound uses the vote),
/// or asked of the Raft core when `exact` (a snapshot install checks the
/// committed log id).
async fn local_state(raft: &crate::Raft, exact: bool) -> Result<guard::Local, String> {
    if exact {
        let id = *raft.node_id();
        return raft
            .with_raft_state(move |s| guard::Local {
                id,
                vote: *s.vote_ref(),
                committed: s.local_committed().cloned(),
            })
            .await
            .map_err(|e| e.to_string());
    }
    let m = raft.metrics().borrow_watched().clone();
    Ok(guard::Local {
        id: m.id,
        vote: m.vote,
        committed: m.local_committed,
    })
}

/// Checks that `request` comes from the node it names (for snapshot
/// offers and chunks: from the leader this node follows) and that its
/// fields pass [`guard::check_request`].
async fn admit(replica: &Replica, request: &Request, sender: &Sender) -> Result<(), String> {
    let raft = &replica.raft;
    let claimed = match request {
        Request::Vote(v) | Request::PreVote(v) => v.vote.leader_id.voted_for,
        Request::Append(a) => a.vote.leader_id.voted_for,
        Request::TransferLeader(t) => t.from_leader().leader_id.voted_for,
        Request::SnapshotInstall { vote, .. } => vote.leader_id.voted_for,
        Request::SnapshotOffer(_) | Request::SnapshotChunk(_) => {
            let leader = raft.metrics().borrow_watched().current_leader;
            match leader {
                Some(leader) if sender.is(leader) => return Ok(()),
                _ => {
                    return Err(format!(
                        "a snapshot transfer from a node that is not the leader ({leader:?})"
                    ));
                }
            }
        }
        Request::Forward(_) | Request::ReadIndex | Request::ForwardSetting { .. } => {
            return Ok(());
        }
    };
    if !sender.is(claimed) {
        return Err(format!(
            "the message claims node {claimed}, whose certificate the sender does not hold"
        ));
    }
    let exact = matches!(request, Request::SnapshotInstall { .. });
    let local = local_state(raft, exact).await?;
    guard::check_request(request, claimed, &local)
}

/// Runs a request's disk work off the async workers.
async fn on_disk(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Response::Error(e.to_string()))
}

/// Installs a snapshot whose missing files are all staged; refused (and
/// the leader sends what is missing again) otherwise.
async fn install(
    replica: &Replica,
    vote: lode_replication_wire::Vote,
    meta: wire::SnapshotState,
    data: SegmentList,
) -> Response {
    let transfers = Arc::clone(&replica.transfers);
    let list = data.clone();
    let staged = tokio::task::spawn_blocking(move || transfers.resolve(&list).map(|_| ())).await;
    match staged {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Response::Error(reason),
        Err(e) => return Response::Error(e.to_string()),
    }
    let snapshot = openraft::storage::Snapshot {
        meta: openraft::storage::SnapshotMeta {
            last_log_id: meta.last_log_id,
            last_membership: lode_replication_wire::StoredMembership::new(
                meta.membership_log_id,
                meta.membership,
            ),
        },
        snapshot: data,
    };
    match replica.raft.install_full_snapshot(vote, snapshot).await {
        Ok(answer) => Response::Installed(answer.vote),
        Err(e) => Response::Error(e.to_string()),
    }
}
