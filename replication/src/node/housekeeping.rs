//! What a node does in the background: the leader's retention
//! decisions, snapshots after seals and the log purged through them, and
//! the count of leader changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lode_engine::{EncodedBatch, Engine};
use openraft::async_runtime::WatchReceiver;

use super::{Error, Replica};
use crate::Raft;

/// Retention in a cluster is a decision of the log: every `every`, the
/// leader asks its engine what the policy would drop and, if anything,
/// proposes "drop the records below seq S"; every node carries it out
/// when it applies the entry, so all drop the same records (each node's
/// own retention is off in a replicated engine).
pub(super) async fn retention_loop(replica: Replica, engine: Arc<Engine>, every: Duration) {
    let mut proposed = 0;
    loop {
        tokio::time::sleep(every).await;
        if !replica.raft.is_leader() {
            continue;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let Some(floor) = engine.retention_floor(now) else {
            continue;
        };
        if floor <= proposed.max(engine.stats().first_seq) {
            continue;
        }
        let decided = match EncodedBatch::retain(floor) {
            Ok(batch) => match replica.propose(batch, None).await {
                Ok(pending) => pending.wait().await.map(|_| ()),
                Err(e) => Err(e),
            },
            Err(e) => Err(Error::Raft(e.to_string())),
        };
        match decided {
            Ok(()) => {
                proposed = floor;
                tracing::info!(
                    floor,
                    "retention: every node drops the records below seq {floor}"
                );
            }
            Err(e) => tracing::warn!(error = %e, floor, "retention decision not committed"),
        }
    }
}

/// Takes a snapshot after each seal and purges the log through it: all
/// of it on a follower; on the leader, down to what the slowest follower
/// within `keep_log_bytes` of the snapshot still needs (a follower
/// further behind is sent the segments it lacks).
pub(super) async fn snapshot_loop(
    replica: Replica,
    engine: Arc<Engine>,
    keep_log_bytes: u64,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let (snapshot, purged, replication, me) = {
            let m = replica.raft.metrics();
            let m = m.borrow_watched();
            (
                m.snapshot.map(|l| l.index),
                m.purged.map(|l| l.index),
                m.replication.clone(),
                m.id,
            )
        };
        let sealed = engine.segments().last().map(|s| s.last_index);
        if sealed > snapshot
            && let Err(e) = replica.raft.trigger().snapshot().await
        {
            tracing::warn!(error = %e, "could not take a snapshot");
        }
        // Purged through the snapshot there is (a newer one is being
        // built: under a steady ingest there always is).
        let Some(mut upto) = snapshot else { continue };
        for (id, matched) in replication.iter().flatten() {
            let Some(matched) = matched.map(|m| m.index).filter(|_| *id != me) else {
                continue;
            };
            if matched < upto && engine.log_bytes(matched + 1..=upto) <= keep_log_bytes {
                upto = matched;
            }
        }
        if purged.is_none_or(|p| upto > p)
            && let Err(e) = replica.raft.trigger().purge_log(upto).await
        {
            tracing::warn!(error = %e, upto, "could not purge the log");
        }
    }
}

/// Counts the changes of leader this node sees, until it stops.
pub(super) async fn count_leader_changes(raft: Raft, changes: Arc<AtomicU64>) {
    let mut metrics = raft.metrics();
    let mut last = metrics.borrow_watched().current_leader;
    while metrics.changed().await.is_ok() {
        let now = metrics.borrow_watched().current_leader;
        if now != last {
            changes.fetch_add(1, Ordering::Relaxed);
            last = now;
        }
    }
}
