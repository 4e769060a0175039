//! The write path: a batch queued on the leader (keyed batches claimed
//! once, unkeyed ones merged into fewer entries) or forwarded to it, and
//! what a forward is answered.

use std::sync::Arc;
use std::time::Duration;

use lode_engine::{BatchKey, EncodedBatch, SeqRange};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;

use super::settings::no_space_alarms;
use super::{
    ClusterNode, Error, FORWARD_TIMEOUT, LEADER_WAIT, Replica, Result, known_leader, moved,
};
use crate::keys::{Claim, Slot};
use lode_replication_wire::wire::{Request, Response};
use lode_replication_wire::{Batch, NodeId, TypeConfig};

/// A write this node cannot make: it does not lead. The batch comes back
/// for forwarding.
struct Forward {
    batch: EncodedBatch,
    leader: Option<(NodeId, String)>,
}

fn seqs(applied: lode_replication_wire::Applied) -> SeqRange {
    SeqRange {
        start: applied.start,
        end: applied.end,
    }
}

/// An unkeyed batch waiting to be proposed, and where its seqs go.
pub(super) type Waiting = (EncodedBatch, tokio::sync::oneshot::Sender<Result<SeqRange>>);

/// Merged entries in flight at most; batches arriving meanwhile wait and
/// are merged into the next entry (group commit at the log's level: a
/// Raft entry costs the same to replicate, sync and apply with one record
/// or thousands).
const MERGED_IN_FLIGHT: usize = 4;

/// The most one merged entry holds (a batch larger alone goes alone, so
/// a merged entry is never larger than the largest batch a client may
/// send).
const MERGE_RECORDS: usize = 16_384;
const MERGE_BYTES: usize = 4 << 20;

/// Unkeyed batches waiting to be proposed at most (then submitters wait).
pub(super) const MERGE_QUEUE: usize = 65_536;

/// The same error for each of several waiters.
fn echo(e: &Error) -> Error {
    match e {
        Error::NotLeader { node, leader } => Error::NotLeader {
            node: *node,
            leader: leader.clone(),
        },
        Error::Config(reason) => Error::Config(reason.clone()),
        Error::TooLarge { bytes, limit } => Error::TooLarge {
            bytes: *bytes,
            limit: *limit,
        },
        Error::NoSpace { nodes } => Error::NoSpace {
            nodes: nodes.clone(),
        },
        Error::Stopped(reason) => Error::Stopped(reason.clone()),
        Error::Timeout(reason) => Error::Timeout(reason.clone()),
        Error::OutcomeUnknown(reason) => Error::OutcomeUnknown(reason.clone()),
        Error::Peer { node, reason } => Error::Peer {
            node: *node,
            reason: reason.clone(),
        },
        other => Error::Raft(other.to_string()),
    }
}

/// Proposes the unkeyed batches `Replica::queue` hands over, in the order
/// they came: alone when the log keeps up, merged into one entry (their
/// records in order, each batch answered with its own seqs) when
/// `MERGED_IN_FLIGHT` entries already wait for their commit.
pub(super) async fn merge_loop(
    replica: Replica,
    mut waiting: tokio::sync::mpsc::Receiver<Waiting>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MERGED_IN_FLIGHT));
    // A batch taken from the queue that did not fit the last group.
    let mut held: Option<Waiting> = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match waiting.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut records = first.0.count() as usize;
        let mut bytes = first.0.frame_len();
        let max_bytes = MERGE_BYTES.min(replica.max_entry_bytes);
        let mut group = vec![first];
        while let Ok(next) = waiting.try_recv() {
            let (more_records, more_bytes) = (next.0.count() as usize, next.0.frame_len());
            if records + more_records > MERGE_RECORDS || bytes + more_bytes > max_bytes {
                held = Some(next);
                break;
            }
            records += more_records;
            bytes += more_bytes;
            group.push(next);
        }
        let counts: Vec<u64> = group.iter().map(|(b, _)| u64::from(b.count())).collect();
        let (batches, senders): (Vec<EncodedBatch>, Vec<_>) = group.into_iter().unzip();
        let merged = match <[EncodedBatch; 1]>::try_from(batches) {
            Ok([one]) => Ok(one),
            Err(many) => EncodedBatch::concat(&many.iter().collect::<Vec<_>>())
                .map_err(|e| Error::Raft(format!("merging batches: {e}"))),
        };
        // The leader proposes; a follower forwards the merged batch, so
        // that its forwards are merged as the leader's own writes are.
        let pending = match merged {
            Ok(batch) if replica.raft.is_leader() => replica.propose(batch, None).await,
            Ok(batch) => {
                let forwarding = replica.clone();
                Ok(PendingWrite(Box::pin(async move {
                    forwarding.forward(batch).await
                })))
            }
            Err(e) => Err(e),
        };
        tokio::spawn(async move {
            let outcome = match pending {
                Ok(pending) => pending.wait().await,
                Err(e) => Err(e),
            };
            drop(slot);
            match outcome {
                Ok(seqs) => {
                    let mut start = seqs.start;
                    for (sender, n) in senders.into_iter().zip(counts) {
                        let _ = sender.send(Ok(SeqRange {
                            start,
                            end: start + n,
                        }));
                        start += n;
                    }
                }
                Err(e) => {
                    for sender in senders {
                        let _ = sender.send(Err(echo(&e)));
                    }
                }
            }
        });
    }
}

/// How often a retried batch waiting for its first try checks that this
/// node still leads.
const KEY_RECHECK: Duration = Duration::from_millis(50);

impl Replica {
    pub(super) fn not_leader(&self) -> Error {
        Error::NotLeader {
            node: *self.raft.node_id(),
            leader: known_leader(&self.raft),
        }
    }

    /// Queues a batch on this node, the leader, and returns the wait for
    /// its commit; otherwise hands it back for forwarding. A keyed batch
    /// already in the log is not queued again: the wait gives its first
    /// seqs. Batches queued one after another are ordered in the log as
    /// queued.
    async fn queue(
        &self,
        batch: EncodedBatch,
    ) -> std::result::Result<Result<PendingWrite>, Forward> {
        // Refused while a member lacks space; a retry of a batch already
        // applied is still answered with its seqs (it writes nothing).
        let alarms = no_space_alarms(&self.engine.settings());
        let written = |key| matches!(self.keys.slot(key), Some(Slot::Applied(..)));
        if !alarms.is_empty() && !batch.key().is_some_and(written) {
            return Ok(Err(Error::NoSpace { nodes: alarms }));
        }
        if batch.frame_len() > self.max_entry_bytes {
            return Ok(Err(Error::TooLarge {
                bytes: batch.frame_len(),
                limit: self.max_entry_bytes,
            }));
        }
        let Some(key) = batch.key() else {
            return Ok(self.queue_unkeyed(batch).await);
        };
        if !self.raft.is_leader() {
            return Err(Forward {
                batch,
                leader: known_leader(&self.raft),
            });
        }
        Ok(match self.keys.claim(key) {
            Claim::Propose => self.propose(batch, Some(key)).await,
            Claim::Done(seqs) => Ok(PendingWrite(Box::pin(async move { Ok(seqs) }))),
            Claim::Wait => {
                let replica = self.clone();
                Ok(PendingWrite(Box::pin(async move {
                    replica.await_first_try(key, batch).await
                })))
            }
        })
    }

    /// Hands an unkeyed batch to the merging queue, in order.
    async fn queue_unkeyed(&self, batch: EncodedBatch) -> Result<PendingWrite> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.merge
            .send((batch, tx))
            .await
            .map_err(|_| Error::Stopped("the write queue is closed".to_owned()))?;
        Ok(PendingWrite(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Stopped("the write was dropped".to_owned())))
        })))
    }

    /// Hands a batch to Raft (a keyed one claimed for it); the wait
    /// releases the key if the batch did not make it.
    pub(super) async fn propose(
        &self,
        batch: EncodedBatch,
        key: Option<BatchKey>,
    ) -> Result<PendingWrite> {
        let (responder, rx) =
            ProgressResponder::<TypeConfig, ClientWriteResult<TypeConfig>>::complete_only();
        let queued = self
            .raft
            .write(Batch::new(batch))
            .responder(responder)
            .await;
        let release = move |replica: &Replica| {
            if let Some(key) = key {
                replica.keys.release(key);
            }
        };
        if let Err(e) = queued {
            release(self);
            return Err(Error::Stopped(e.to_string()));
        }
        let replica = self.clone();
        let proposed = std::time::Instant::now();
        Ok(PendingWrite(Box::pin(async move {
            let outcome = match rx.await {
                Ok(Ok(response)) => {
                    replica.commit_latency.observe(proposed.elapsed());
                    Ok(seqs(response.data))
                }
                Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                    Err(moved(*replica.raft.node_id(), forward))
                }
                Ok(Err(e)) => Err(Error::Raft(e.to_string())),
                Err(_) => Err(Error::Stopped("the write was dropped".to_owned())),
            };
            if outcome.is_err() {
                release(&replica);
            }
            outcome
        })))
    }

    /// A retried batch whose first try is proposed or in the log: waits
    /// until that try is applied and answers its seqs. If the first try
    /// is cut from the log (or never reached it), this one is proposed.
    async fn await_first_try(&self, key: BatchKey, batch: EncodedBatch) -> Result<SeqRange> {
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        loop {
            let changed = self.keys.changed();
            match self.keys.slot(key) {
                Some(Slot::Applied(_, seqs)) => return Ok(seqs),
                None => {
                    if !self.raft.is_leader() {
                        return Err(self.not_leader());
                    }
                    return match self.keys.claim(key) {
                        Claim::Propose => self.propose(batch, Some(key)).await?.wait().await,
                        Claim::Done(seqs) => Ok(seqs),
                        Claim::Wait => continue,
                    };
                }
                Some(Slot::Proposed | Slot::Logged(_)) => {}
            }
            if !self.raft.is_leader() {
                return Err(self.not_leader());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the first try of batch {}/{} was not committed within {FORWARD_TIMEOUT:?}",
                    key.producer, key.sequence
                )));
            }
            let _ = tokio::time::timeout(KEY_RECHECK, changed).await;
        }
    }

    /// Writes a batch if this node leads and waits for its commit.
    async fn write_local(
        &self,
        batch: EncodedBatch,
    ) -> std::result::Result<Result<SeqRange>, Forward> {
        match self.queue(batch).await? {
            Ok(pending) => Ok(pending.wait().await),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Sends a batch to the leader this node knows and waits for its
    /// seqs. A leader that died holds the forward until the timeout; an
    /// election elsewhere says sooner that it is gone (even one it wins
    /// again, restarted: the forward went to its old process).
    async fn forward(&self, batch: EncodedBatch) -> Result<SeqRange> {
        let me = *self.raft.node_id();
        let (id, addr) = match self.leader_within(LEADER_WAIT).await {
            Some((id, addr)) if id != me => (id, addr),
            // Elected meanwhile: written here. An unkeyed batch is
            // proposed as it is, not merged again: the merge loop may be
            // waiting for the slot this forward holds.
            Some(_) if self.raft.is_leader() => {
                if batch.key().is_none() {
                    return self.propose(batch, None).await?.wait().await;
                }
                return match self.queue(batch).await {
                    Ok(queued) => queued?.wait().await,
                    Err(Forward { leader, .. }) => Err(Error::NotLeader { node: me, leader }),
                };
            }
            leader => return Err(Error::NotLeader { node: me, leader }),
        };
        let request = Request::Forward(batch);
        let term = self.raft.metrics().borrow_watched().current_term;
        let forward = self.network.request(id, &addr, &request, FORWARD_TIMEOUT);
        let response = tokio::select! {
            response = forward => response.map_err(|e| Error::Peer {
                node: id,
                reason: format!("forwarding a write to the leader: {e}"),
            })?,
            () = self.leader_changes(id, term) => {
                self.network.forget_node(id);
                return Err(Error::OutcomeUnknown(format!(
                    "the leader (node {id}) changed while a write was forwarded to it; \
                     whether it was committed is unknown"
                )));
            }
        };
        match response {
            Response::Written { start, end } => Ok(SeqRange { start, end }),
            Response::NotLeader(leader) => Err(Error::NotLeader { node: id, leader }),
            Response::NoSpace(nodes) => Err(Error::NoSpace { nodes }),
            Response::Error(reason) => Err(Error::Peer { node: id, reason }),
            other => Err(Error::Peer {
                node: id,
                reason: format!("answered a forward with {other:?}"),
            }),
        }
    }

    /// The leader this node knows, waiting up to `wait` for one to be
    /// elected when it knows of none.
    async fn leader_within(&self, wait: Duration) -> Option<(NodeId, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = known_leader(&self.raft) {
                return Some(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Returns once this node sees a leader other than `id` (or none), or
    /// a term after `term`.
    async fn leader_changes(&self, id: NodeId, term: u64) {
        let mut metrics = self.raft.metrics();
        loop {
            let (leader, now) = {
                let m = metrics.borrow_watched();
                (m.current_leader, m.current_term)
            };
            if leader != Some(id) || now != term {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Serves a forwarded write: written here if this node leads.
    pub(crate) async fn write_here(&self, batch: EncodedBatch) -> Response {
        match self.write_local(batch).await {
            Ok(Ok(seqs)) => Response::Written {
                start: seqs.start,
                end: seqs.end,
            },
            Ok(Err(Error::NotLeader { leader, .. })) => Response::NotLeader(leader),
            Ok(Err(Error::NoSpace { nodes })) => Response::NoSpace(nodes),
            Ok(Err(e)) => Response::Error(e.to_string()),
            Err(Forward { leader, .. }) => Response::NotLeader(leader),
        }
    }
}

/// A write submitted to the cluster; [`PendingWrite::wait`] gives its seqs
/// once committed.
pub struct PendingWrite(
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<SeqRange>> + Send>>,
);

impl std::fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingWrite")
    }
}

impl PendingWrite {
    pub async fn wait(self) -> Result<SeqRange> {
        self.0.await
    }
}

impl ClusterNode {
    /// Appends a batch through the leader's log: returns its seqs once a
    /// quorum holds it durably and the leader applied it. A follower
    /// forwards the batch to the leader it knows (once; a leader that moved
    /// meanwhile answers [`Error::NotLeader`], which the caller may retry).
    pub async fn write(&self, batch: EncodedBatch) -> Result<SeqRange> {
        match self.replica.write_local(batch).await {
            Err(Forward { batch, .. }) => self.replica.forward(batch).await,
            Ok(outcome) => outcome,
        }
    }

    /// Hands a batch to the cluster and returns once it is queued, so that
    /// batches submitted one after another by one caller are ordered in
    /// the log as they were submitted when this node leads; the returned
    /// [`PendingWrite`] waits for the commit. A follower forwards the batch
    /// (forwarded batches of one caller may commit out of order).
    pub async fn submit(self: &Arc<Self>, batch: EncodedBatch) -> Result<PendingWrite> {
        match self.replica.queue(batch).await {
            Ok(queued) => queued,
            Err(Forward { batch, .. }) => {
                let node = Arc::clone(self);
                Ok(PendingWrite(Box::pin(
                    async move { node.write(batch).await },
                )))
            }
        }
    }

    /// Appends a batch only if this node leads: no forwarding.
    pub async fn write_if_leader(&self, batch: EncodedBatch) -> Result<SeqRange> {
        self.lead()?;
        match self.replica.write_local(batch).await {
            Ok(outcome) => outcome,
            Err(Forward { leader, .. }) => Err(Error::NotLeader {
                node: self.id,
                leader,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each waiter of a merged entry gets the error the entry got, with
    /// its variant (a front end answers by variant).
    #[test]
    fn echo_keeps_the_variant_a_front_end_answers_by() {
        let errors = [
            Error::NotLeader {
                node: 1,
                leader: Some((2, "127.0.0.1:1".to_owned())),
            },
            Error::TooLarge { bytes: 9, limit: 8 },
            Error::NoSpace { nodes: vec![3] },
            Error::Stopped("stopped".to_owned()),
            Error::Timeout("late".to_owned()),
            Error::OutcomeUnknown("moved".to_owned()),
            Error::Peer {
                node: 2,
                reason: "gone".to_owned(),
            },
        ];
        for e in &errors {
            let echoed = echo(e);
            assert_eq!(
                std::mem::discriminant(&echoed),
                std::mem::discriminant(e),
                "{e}"
            );
            assert_eq!(echoed.to_string(), e.to_string());
        }
    }
}
