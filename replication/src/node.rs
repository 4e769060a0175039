//! One node of a cluster: the engine, openraft over it, and the peer
//! endpoint, started together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lode_engine::{BatchKey, EncodedBatch, Engine, SeqRange};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;
use openraft::{ChangeMembers, Config, ReadPolicy, ServerState, SnapshotPolicy};

use crate::Raft;
use crate::keys::{Claim, Keys, Slot};
use crate::latency::{Latency, LatencySnapshot};
use crate::net::{Network, NetworkFactory};
use crate::tls::{NodeTls, NodeTlsFiles};
use lode_replication_wire::wire::{Request, Response};
use lode_replication_wire::{Batch, Node, NodeId, TypeConfig};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    /// This node does not lead; `leader` is the one it knows of.
    #[error("node {node} is not the leader{}", match .leader { Some((id, addr)) if id != node => format!(" (node {id} at {addr} is)"), _ => " (any more) and knows of no other yet".to_owned() })]
    NotLeader {
        node: NodeId,
        leader: Option<(NodeId, String)>,
    },
    /// A batch larger than the log takes: refused before it reaches
    /// Raft (an append that fails in storage would stop the node).
    #[error("batch of {bytes} encoded bytes exceeds max_batch_bytes = {limit}")]
    TooLarge { bytes: usize, limit: usize },
    /// A member's disk is below its free-space floor (its alarm is
    /// raised): the cluster refuses writes until it clears; reads go on.
    #[error("no space: the disk of node {} is below its free-space floor; writes are refused until space is freed (reads go on)", nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", node "))]
    NoSpace { nodes: Vec<NodeId> },
    /// This node's Raft has stopped (a storage failure, or shutting
    /// down): nothing more goes through it here; another node may take it.
    #[error("this node stopped: {0}")]
    Stopped(String),
    /// No answer within the time allowed (a quorum, a commit, an apply).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A write forwarded to a leader that changed before it answered:
    /// whether it was committed is unknown (a keyed batch is safe to
    /// send again).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Another node could not be reached, or answered with an error.
    #[error("node {node}: {reason}")]
    Peer { node: NodeId, reason: String },
    /// openraft refused a request for a reason of its own (a membership
    /// change under way, an internal error).
    #[error("raft: {0}")]
    Raft(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long a forwarded write may take before the follower gives up.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for a leader to be elected when this node
/// knows of none (an election under way) before it is refused: an
/// overloaded cluster that elects answers late rather than not at all.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long a linearizable read may wait for the leader's confirmation
/// and for this node to apply through the read index.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

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

/// openraft's refusal of a write on node `node` that no longer leads,
/// naming the leader openraft knows (this node's metrics may still name
/// itself).
fn moved(node: NodeId, forward: openraft::errors::ForwardToLeader<TypeConfig>) -> Error {
    Error::NotLeader {
        node,
        leader: forward
            .leader_id
            .map(|id| (id, forward.leader_node.map(|n| n.addr).unwrap_or_default())),
    }
}

/// The leader this node knows of, with its peer address.
fn known_leader(raft: &Raft) -> Option<(NodeId, String)> {
    let m = raft.metrics().borrow_watched().clone();
    let id = m.current_leader?;
    let addr = m
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    Some((id, addr))
}

/// What this node writes with: its Raft and the key table its log keeps.
/// Shared by the node and the peer endpoint (which serves forwards).
#[derive(Debug, Clone)]
pub(crate) struct Writes {
    pub(crate) raft: Raft,
    keys: Arc<Keys>,
    /// Unkeyed batches on their way to be proposed, merged when many wait.
    merge: tokio::sync::mpsc::Sender<Waiting>,
    /// How long proposals take to be committed and applied here.
    commit_latency: Arc<Latency>,
    /// The peer link, for forwards to the leader.
    network: Network,
    /// Snapshot transfers this node takes part in.
    pub(crate) transfers: Arc<crate::snapshot::Transfers>,
    /// The largest entry (whole frame) this node proposes: the engine's
    /// `max_batch_bytes`.
    max_entry_bytes: usize,
    /// Peer messages (and answers) refused before openraft saw them.
    pub(crate) refused_messages: Arc<AtomicU64>,
    /// The engine, for the settings every node holds (alarms).
    engine: Arc<Engine>,
}

/// The setting that holds node `id`'s no-space alarm while it is raised.
fn no_space_alarm(id: NodeId) -> String {
    format!("{NO_SPACE_ALARM}{id}")
}

const NO_SPACE_ALARM: &str = "alarm/no-space/";

/// The nodes whose no-space alarm is raised in `settings`.
fn no_space_alarms(settings: &lode_engine::Settings) -> Vec<NodeId> {
    settings
        .range(NO_SPACE_ALARM.to_owned()..)
        .map_while(|(name, _)| name.strip_prefix(NO_SPACE_ALARM))
        .filter_map(|id| id.parse().ok())
        .collect()
}

/// An unkeyed batch waiting to be proposed, and where its seqs go.
type Waiting = (EncodedBatch, tokio::sync::oneshot::Sender<Result<SeqRange>>);

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
const MERGE_QUEUE: usize = 65_536;

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

/// Proposes the unkeyed batches `Writes::queue` hands over, in the order
/// they came: alone when the log keeps up, merged into one entry (their
/// records in order, each batch answered with its own seqs) when
/// `MERGED_IN_FLIGHT` entries already wait for their commit.
async fn merge_loop(writes: Writes, mut waiting: tokio::sync::mpsc::Receiver<Waiting>) {
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
        let max_bytes = MERGE_BYTES.min(writes.max_entry_bytes);
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
            Ok(batch) if writes.raft.is_leader() => writes.propose(batch, None).await,
            Ok(batch) => {
                let forwarding = writes.clone();
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

impl Writes {
    fn not_leader(&self) -> Error {
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
                let writes = self.clone();
                Ok(PendingWrite(Box::pin(async move {
                    writes.await_first_try(key, batch).await
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
    async fn propose(&self, batch: EncodedBatch, key: Option<BatchKey>) -> Result<PendingWrite> {
        let (responder, rx) =
            ProgressResponder::<TypeConfig, ClientWriteResult<TypeConfig>>::complete_only();
        let queued = self
            .raft
            .write(Batch::new(batch))
            .responder(responder)
            .await;
        let release = move |writes: &Writes| {
            if let Some(key) = key {
                writes.keys.release(key);
            }
        };
        if let Err(e) = queued {
            release(self);
            return Err(Error::Stopped(e.to_string()));
        }
        let writes = self.clone();
        let proposed = std::time::Instant::now();
        Ok(PendingWrite(Box::pin(async move {
            let outcome = match rx.await {
                Ok(Ok(response)) => {
                    writes.commit_latency.observe(proposed.elapsed());
                    Ok(seqs(response.data))
                }
                Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                    Err(moved(*writes.raft.node_id(), forward))
                }
                Ok(Err(e)) => Err(Error::Raft(e.to_string())),
                Err(_) => Err(Error::Stopped("the write was dropped".to_owned())),
            };
            if outcome.is_err() {
                release(&writes);
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

/// The address node `config.node_id` listens on for its peers.
fn own_addr(config: &ClusterConfig) -> Result<SocketAddr> {
    let own = config
        .peers
        .get(&config.node_id)
        .ok_or_else(|| Error::Config(format!("node {} is not among the peers", config.node_id)))?;
    own.parse().map_err(|e| {
        Error::Config(format!(
            "peer address '{own}' of node {}: {e}",
            config.node_id
        ))
    })
}

/// Binds the peer endpoint, waiting up to ten seconds for an address that
/// a node just stopped in this process is still releasing.
async fn bind_retrying(addr: SocketAddr, tls: &NodeTls) -> Result<Network> {
    let mut tries = 0;
    let started = std::time::Instant::now();
    loop {
        match Network::bind(addr, tls) {
            Ok(bound) => {
                if tries > 0 {
                    tracing::info!(waited = ?started.elapsed(), %addr, "peer address free again");
                }
                return Ok(bound);
            }
            Err(e) if tries < 200 && e.reason.contains("in use") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a node needs to join its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Every voter of the initial cluster by id: its peer address
    /// (`host:port`), this node's included.
    pub peers: BTreeMap<NodeId, String>,
    pub tls: NodeTlsFiles,
    /// Timing, in milliseconds: a leader is suspected gone after a random
    /// time in `election_timeout`; it sends heartbeats every `heartbeat`.
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// This node joins a running cluster (`lode cluster add` makes it a
    /// member): it never initializes one, and `peers` needs only its own
    /// address.
    pub join: bool,
    /// How often the leader checks the engine's retention policy and, if
    /// it would drop segments, proposes the decision to every node.
    pub retention_check: Duration,
    /// How often a node looks for a newly sealed segment (then takes a
    /// snapshot: its manifest, no copy) and purges its log through its
    /// snapshot.
    pub snapshot_check: Duration,
    /// Log bytes below the snapshot the leader keeps for a follower that
    /// is behind by no more: it catches up from the log. One further
    /// behind is sent the segments it lacks.
    pub keep_log_bytes: u64,
    /// The most bytes of segment files per second a leader sends to one
    /// follower (`None`: no cap), so that a transfer leaves room for
    /// ingest and heartbeats.
    pub snapshot_bytes_per_sec: Option<u64>,
    /// Bytes of file per snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Tests: every n-th chunk this node sends is damaged in transit.
    #[doc(hidden)]
    pub damage_chunks_every: Option<u64>,
}

/// Log bytes a leader keeps below its snapshot for lagging followers
/// unless configured: a few minutes of ingest at a few MB/s.
pub const KEEP_LOG_BYTES: u64 = 512 << 20;
/// A snapshot transfer's bandwidth cap unless configured.
pub const SNAPSHOT_BYTES_PER_SEC: u64 = 100_000_000;

impl ClusterConfig {
    /// A configuration with the default timing: heartbeats every 100 ms,
    /// elections after 500-1000 ms of silence. Shorter timeouts make
    /// saturated nodes on shared cores take late heartbeats for a dead
    /// leader and elect, failing what was in flight (figures in
    /// docs/performance.md); the price is a slower failover.
    pub fn new(
        node_id: NodeId,
        peers: BTreeMap<NodeId, String>,
        tls: NodeTlsFiles,
    ) -> ClusterConfig {
        ClusterConfig {
            node_id,
            peers,
            tls,
            heartbeat_ms: 100,
            election_timeout_ms: (500, 1000),
            join: false,
            retention_check: Duration::from_secs(10),
            snapshot_check: Duration::from_secs(1),
            keep_log_bytes: KEEP_LOG_BYTES,
            snapshot_bytes_per_sec: Some(SNAPSHOT_BYTES_PER_SEC),
            snapshot_chunk_bytes: crate::snapshot::CHUNK_BYTES,
            damage_chunks_every: None,
        }
    }

    fn raft_config(&self) -> Result<Arc<Config>> {
        let config = Config {
            cluster_name: "lode".to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms.0,
            election_timeout_max: self.election_timeout_ms.1,
            // Snapshots are taken at seals and the log purged by
            // `snapshot_loop`, which keeps what lagging followers need.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            // A transfer's chunks carry their own timeouts.
            install_snapshot_timeout: 60_000,
            enable_pre_vote: Some(true),
            max_payload_entries: 64,
            ..Config::default()
        };
        config
            .validate()
            .map(Arc::new)
            .map_err(|e| Error::Config(e.to_string()))
    }
}

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

/// Retention in a cluster is a decision of the log: every `every`, the
/// leader asks its engine what the policy would drop and, if anything,
/// proposes "drop the records below seq S"; every node carries it out
/// when it applies the entry, so all drop the same records (each node's
/// own retention is off in a replicated engine).
async fn retention_loop(writes: Writes, engine: Arc<Engine>, every: Duration) {
    let mut proposed = 0;
    loop {
        tokio::time::sleep(every).await;
        if !writes.raft.is_leader() {
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
            Ok(batch) => match writes.propose(batch, None).await {
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
async fn snapshot_loop(writes: Writes, engine: Arc<Engine>, keep_log_bytes: u64, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let (snapshot, purged, replication, me) = {
            let m = writes.raft.metrics();
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
            && let Err(e) = writes.raft.trigger().snapshot().await
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
            && let Err(e) = writes.raft.trigger().purge_log(upto).await
        {
            tracing::warn!(error = %e, upto, "could not purge the log");
        }
    }
}

/// How often a node compares its disk's free space with its alarm.
const SPACE_CHECK: Duration = Duration::from_millis(500);

/// Raises this node's no-space alarm while its engine finds the disk
/// below the floor, and clears it once space is freed. The alarm is a
/// setting, held by every node, so the whole cluster refuses writes
/// while any member lacks space (etcd's NOSPACE alarm): no member's log
/// fills its disk, none stops. The leader also clears the alarms of
/// nodes that are no longer members.
async fn space_loop(writes: Writes, every: Duration) {
    let me = *writes.raft.node_id();
    loop {
        tokio::time::sleep(every).await;
        let raised = no_space_alarms(&writes.engine.settings());
        let space = writes.engine.space();
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
        if writes.raft.is_leader() {
            let members = {
                let m = writes.raft.metrics();
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
            if let Err(e) = writes.set(no_space_alarm(id), value).await {
                tracing::debug!(error = %e, node = id, "no-space alarm not changed yet");
            }
        }
    }
}

/// Counts the changes of leader this node sees, until it stops.
async fn count_leader_changes(raft: Raft, changes: Arc<AtomicU64>) {
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

/// A running node.
#[derive(Debug)]
pub struct ClusterNode {
    id: NodeId,
    /// Its Raft and peer link, with what writing needs.
    writes: Writes,
    engine: Arc<Engine>,
    /// The peer endpoint's server, the merging queue, the leader watcher
    /// and the retention check, stopped at shutdown.
    tasks: std::sync::Mutex<Option<[tokio::task::JoinHandle<()>; 6]>>,
    append_latency: Arc<Latency>,
    leader_changes: Arc<AtomicU64>,
}

impl ClusterNode {
    /// Starts the node over `engine` (opened with `Options::replicated`):
    /// binds its peer address, starts Raft, and on a pristine log
    /// initializes the cluster with `config.peers` (every initial node does
    /// so with the same membership, which openraft allows), unless it
    /// joins a running one. Once a log holds a membership, `peers` is only
    /// where this node listens: members come and go through the log.
    pub async fn start(engine: Arc<Engine>, config: &ClusterConfig) -> Result<ClusterNode> {
        let addr = own_addr(config)?;
        let tls = NodeTls::load(&config.tls)?;
        let network = bind_retrying(addr, &tls).await?;
        ClusterNode::start_on(engine, config, network).await
    }

    /// Starts the node as [`start`](ClusterNode::start) does, on the
    /// simulated network `net` instead of QUIC (no socket, no TLS): the
    /// seeded tests.
    pub async fn start_simulated(
        engine: Arc<Engine>,
        config: &ClusterConfig,
        net: &crate::sim::SimNet,
    ) -> Result<ClusterNode> {
        let addr = own_addr(config)?;
        let network = Network::Sim(net.endpoint(config.node_id, addr));
        ClusterNode::start_on(engine, config, network).await
    }

    async fn start_on(
        engine: Arc<Engine>,
        config: &ClusterConfig,
        network: Network,
    ) -> Result<ClusterNode> {
        let mut transfers = crate::snapshot::Transfers::open(
            Arc::clone(&engine),
            config.snapshot_bytes_per_sec,
            config.snapshot_chunk_bytes,
        )
        .map_err(|e| Error::Config(format!("snapshot staging: {e}")))?;
        transfers.damage_every(config.damage_chunks_every);
        let transfers = Arc::new(transfers);
        let (log, sm) =
            crate::store::open_with(Arc::clone(&engine), config.node_id, Arc::clone(&transfers))?;
        let keys = log.keys();
        let unflushed = log.unflushed();
        let append_latency = log.append_latency();
        let factory = NetworkFactory {
            network: network.clone(),
            transfers: Arc::clone(&transfers),
        };
        let raft = Raft::new(config.node_id, config.raft_config()?, factory, log, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let (merge, waiting) = tokio::sync::mpsc::channel(MERGE_QUEUE);
        let writes = Writes {
            raft: raft.clone(),
            keys,
            merge,
            commit_latency: Arc::default(),
            network: network.clone(),
            transfers,
            max_entry_bytes: engine.max_batch_bytes(),
            refused_messages: Arc::default(),
            engine: Arc::clone(&engine),
        };
        let merging = tokio::spawn(merge_loop(writes.clone(), waiting));
        let leader_changes = Arc::new(AtomicU64::new(0));
        let watching = tokio::spawn(count_leader_changes(
            raft.clone(),
            Arc::clone(&leader_changes),
        ));
        let serve = tokio::spawn(network.clone().serve(writes.clone(), unflushed));
        let retaining = tokio::spawn(retention_loop(
            writes.clone(),
            Arc::clone(&engine),
            config.retention_check,
        ));
        let snapshotting = tokio::spawn(snapshot_loop(
            writes.clone(),
            Arc::clone(&engine),
            config.keep_log_bytes,
            config.snapshot_check,
        ));
        let spacing = tokio::spawn(space_loop(writes.clone(), SPACE_CHECK));
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if !initialized && !config.join {
            let members: BTreeMap<NodeId, Node> = config
                .peers
                .iter()
                .map(|(id, addr)| (*id, Node { addr: addr.clone() }))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "cluster already initialized");
            }
        }
        Ok(ClusterNode {
            id: config.node_id,
            writes,
            engine,
            tasks: std::sync::Mutex::new(Some([
                serve,
                merging,
                watching,
                retaining,
                snapshotting,
                spacing,
            ])),
            append_latency,
            leader_changes,
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The members whose no-space alarm is raised (see [`Error::NoSpace`]).
    pub fn no_space_alarms(&self) -> Vec<NodeId> {
        no_space_alarms(&self.engine.settings())
    }

    /// This node's snapshot transfers: their counts and those under way.
    pub fn transfers(&self) -> &crate::snapshot::Transfers {
        &self.writes.transfers
    }

    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.writes.network.local_addr()
    }

    /// Appends a batch through the leader's log: returns its seqs once a
    /// quorum holds it durably and the leader applied it. A follower
    /// forwards the batch to the leader it knows (once; a leader that moved
    /// meanwhile answers [`Error::NotLeader`], which the caller may retry).
    pub async fn write(&self, batch: EncodedBatch) -> Result<SeqRange> {
        match self.writes.write_local(batch).await {
            Err(Forward { batch, .. }) => self.writes.forward(batch).await,
            Ok(outcome) => outcome,
        }
    }

    /// Hands a batch to the cluster and returns once it is queued, so that
    /// batches submitted one after another by one caller are ordered in
    /// the log as they were submitted when this node leads; the returned
    /// [`PendingWrite`] waits for the commit. A follower forwards the batch
    /// (forwarded batches of one caller may commit out of order).
    pub async fn submit(self: &Arc<Self>, batch: EncodedBatch) -> Result<PendingWrite> {
        match self.writes.queue(batch).await {
            Ok(queued) => queued,
            Err(Forward { batch, .. }) => {
                let node = Arc::clone(self);
                Ok(PendingWrite(Box::pin(
                    async move { node.write(batch).await },
                )))
            }
        }
    }

    /// Returns once this node has applied every entry committed before the
    /// call, so that a read here sees every write acknowledged before it,
    /// by any node (a linearizable read). The leader confirms with a
    /// quorum that it still leads and names its commit index (asked over
    /// the peer link from a follower); this node then waits until it has
    /// applied through that index.
    pub async fn read_barrier(&self) -> Result<()> {
        let index = if self.writes.raft.is_leader() {
            self.writes.read_index().await?
        } else {
            let Some((id, addr)) = known_leader(&self.writes.raft) else {
                return Err(self.writes.not_leader());
            };
            let ask = || {
                self.writes
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

    /// Sets the engine setting `name` to `value` (`None` removes it) on
    /// every node: an entry of the log (proposed by the leader; a
    /// follower forwards it), applied in log order everywhere, carried
    /// by snapshots. Returns once it is applied on the leader.
    pub async fn put_setting(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        self.writes.set(name.to_owned(), value).await
    }

    /// Appends a batch only if this node leads: no forwarding.
    pub async fn write_if_leader(&self, batch: EncodedBatch) -> Result<SeqRange> {
        self.lead()?;
        match self.writes.write_local(batch).await {
            Ok(outcome) => outcome,
            Err(Forward { leader, .. }) => Err(Error::NotLeader {
                node: self.id,
                leader,
            }),
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> Status {
        let m = self.writes.raft.metrics().borrow_watched().clone();
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
            transfers: self.writes.transfers.underway(),
            no_space: self.no_space_alarms(),
            matched,
            lag_bytes,
        }
    }

    /// Latencies and counts for `/metrics`.
    pub fn figures(&self) -> Figures {
        Figures {
            append: self.append_latency.snapshot(),
            commit: self.writes.commit_latency.snapshot(),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            refused_messages: self.writes.refused_messages.load(Ordering::Relaxed),
            snapshots: self.writes.transfers.counters(),
        }
    }

    /// Waits until this node sees a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId> {
        let metrics = self
            .writes
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
        self.writes
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(wait_error)
    }

    /// Refuses an operation only the leader makes.
    fn lead(&self) -> Result<()> {
        if self.writes.raft.is_leader() {
            return Ok(());
        }
        Err(Error::NotLeader {
            node: self.id,
            leader: known_leader(&self.writes.raft),
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
        self.writes
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
        self.writes
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
        self.writes
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// Stops Raft and the peer endpoint (its address is free once this
    /// returns); the engine stays open for its owner to close. Calling it
    /// again does nothing.
    pub async fn shutdown(&self) -> Result<()> {
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(tasks) = tasks else {
            return Ok(());
        };
        let stopped = self.writes.raft.shutdown().await;
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.writes.network.close().await;
        stopped.map_err(|e| Error::Raft(e.to_string()))
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
