//! Cluster administration: this node's view, verification of the nodes'
//! logs, leadership transfer, adding and removing nodes.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, Who, status};
use crate::auth::{Caller, Scope};
use crate::service::Service;

/// This node's view of its cluster; 404 on a single node.
pub(super) async fn cluster_status(State(service): Shared, who: Who) -> Response {
    if let Err(failure) = who.require(Scope::Read) {
        return failure.into_response();
    }
    let Some(cluster) = service.cluster() else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "bad_request", "message": "this server is not a cluster node"}})),
        )
            .into_response();
    };
    let s = cluster.status();
    let peers: Vec<serde_json::Value> = s
        .matched
        .iter()
        .map(|(id, matched)| {
            json!({"node": id, "matched_index": matched, "lag_bytes": s.lag_bytes.get(id)})
        })
        .collect();
    // The first entry the log holds (past the applied one when purged
    // whole).
    let first_log_index = match service.engine().log_bounds() {
        Ok(Some(bounds)) => Some(bounds.first_index),
        _ => s.applied.map(|a| a + 1),
    };
    let transfers: Vec<serde_json::Value> = s
        .transfers
        .iter()
        .map(|t| {
            json!({
                "peer": t.peer,
                "direction": if t.sending { "sending" } else { "receiving" },
                "files_done": t.files_done,
                "files": t.files,
                "bytes_done": t.bytes_done,
                "bytes": t.bytes,
                "bytes_per_sec": t.rate.round() as u64,
                "eta_secs": t.eta_secs.map(|e| e.ceil() as u64),
            })
        })
        .collect();
    axum::Json(json!({
        "node": s.node_id,
        "role": s.role,
        "term": s.term,
        "leader": s.leader,
        "last_log_index": s.last_log_index,
        "committed_index": s.committed,
        "applied_index": s.applied,
        "first_log_index": first_log_index,
        "snapshot_index": s.snapshot,
        "purged_index": s.purged,
        "transfers": transfers,
        "peers": peers,
        "voters": s.voters,
        "learners": s.learners,
        "addresses": s.addrs,
        "no_space": s.no_space,
    }))
    .into_response()
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Through {
    /// The first entry to compare (every node's log starts by then:
    /// below it, some purged theirs through a snapshot).
    #[serde(default)]
    from: u64,
    through: u64,
}

/// Checksums of this node's log through `?through=N`, by ranges.
pub(super) async fn cluster_verify(
    State(service): Shared,
    who: Who,
    Query(q): Query<Through>,
) -> Response {
    if let Err(failure) = who.require(Scope::Read) {
        return failure.into_response();
    }
    match service.log_checksums(q.from, q.through).await {
        Ok(ranges) => {
            let ranges: Vec<serde_json::Value> = ranges
                .into_iter()
                .map(|(first, last, crc)| json!({"first": first, "last": last, "crc32c": crc}))
                .collect();
            // Each sealed segment's checksum of its records in seq order:
            // nodes whose segments cover the same seqs must agree on it.
            let segments: Vec<serde_json::Value> = service
                .engine()
                .segments()
                .into_iter()
                .map(|s| {
                    json!({
                        "first_seq": s.first_seq,
                        "last_seq": s.last_seq,
                        "last_index": s.last_index,
                        "sst_bytes": s.sst_bytes,
                        "records_crc32c": s.records_crc32c,
                    })
                })
                .collect();
            axum::Json(json!({"from": q.from, "through": q.through, "ranges": ranges, "segments": segments}))
                .into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct TransferTo {
    to: u64,
}

pub(super) fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": "bad_request", "message": message}})),
    )
        .into_response()
}

/// The cluster node, if it leads and the caller may change the cluster
/// (`admin`); else the status and reason to answer.
pub(super) fn leading<'a>(
    service: &'a Service,
    who: &Caller,
) -> std::result::Result<&'a Arc<lode_replication::ClusterNode>, (StatusCode, String)> {
    if let Err(failure) = who.require(Scope::Admin) {
        return Err((status(failure.code), failure.message));
    }
    let Some(cluster) = service.cluster() else {
        return Err((
            StatusCode::NOT_FOUND,
            "this server is not a cluster node".into(),
        ));
    };
    let status = cluster.status();
    if status.role != "leader" {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "node {} is not the leader (node {:?} is); ask the leader",
                status.node_id, status.leader
            ),
        ));
    }
    Ok(cluster)
}

/// A cluster operation's outcome: `done` as JSON, or the error.
pub(super) fn outcome(result: lode_replication::Result<()>, done: Value) -> Response {
    match result {
        Ok(()) => axum::Json(done).into_response(),
        Err(e @ lode_replication::Error::Config(_)) => {
            refuse(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ lode_replication::Error::NotLeader { .. }) => {
            refuse(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Hands leadership to node `to`; asked of the leader.
pub(super) async fn transfer_leader(
    State(service): Shared,
    who: Who,
    Query(target): Query<TransferTo>,
) -> Response {
    let cluster = match leading(&service, &who) {
        Ok(cluster) => cluster,
        Err((status, reason)) => return refuse(status, reason),
    };
    outcome(
        cluster.transfer_leader(target.to).await,
        json!({"transferring_to": target.to}),
    )
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct NewNode {
    id: u64,
    addr: String,
}

/// `POST /api/v1/cluster/nodes?id=N&addr=HOST:PORT`: adds a node (a
/// learner until it has caught up, then a voter); answers once it votes.
pub(super) async fn add_node(
    State(service): Shared,
    who: Who,
    Query(node): Query<NewNode>,
) -> Response {
    let cluster = match leading(&service, &who) {
        Ok(cluster) => cluster,
        Err((status, reason)) => return refuse(status, reason),
    };
    outcome(
        cluster.add_node(node.id, node.addr.clone()).await,
        json!({"added": node.id, "addr": node.addr}),
    )
}

/// `DELETE /api/v1/cluster/nodes/N`: removes node N from the cluster.
pub(super) async fn remove_node(State(service): Shared, who: Who, Path(id): Path<u64>) -> Response {
    let cluster = match leading(&service, &who) {
        Ok(cluster) => cluster,
        Err((status, reason)) => return refuse(status, reason),
    };
    outcome(cluster.remove_node(id).await, json!({"removed": id}))
}
