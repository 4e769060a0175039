//! One node of a cluster: the engine, openraft over it, and the peer
//! endpoint, started together.
//!
//! [`Replica`] is the core every part shares: this node's Raft and what
//! writing through it needs (the key table, the merging queue, the peer
//! link, snapshot transfers). [`ClusterNode`] owns it with the tasks
//! that run beside it. By concern:
//! - `write`: a batch queued on the leader or forwarded to it;
//! - `read`: linearizable reads (ReadIndex);
//! - `settings`: settings every node holds, and the no-space alarm;
//! - `membership`: members added and removed, leadership handed over;
//! - `housekeeping`: retention decisions, snapshots and log purges;
//! - `status`: what a node reports, and waits on it;
//! - `peer`: what this node answers its peers (the network only carries
//!   messages);
//! - `config`: what a node needs to join its cluster.

mod config;
mod housekeeping;
mod membership;
mod peer;
mod read;
mod settings;
mod status;
mod write;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use lode_engine::Engine;
use openraft::async_runtime::WatchReceiver;

use crate::Raft;
use crate::keys::Keys;
use crate::latency::Latency;
use crate::net::{Network, NetworkFactory};
use crate::tls::NodeTls;
use lode_replication_wire::{Node, NodeId, TypeConfig};

pub use config::{ClusterConfig, KEEP_LOG_BYTES, SNAPSHOT_BYTES_PER_SEC};
pub use status::{Figures, Status};
pub use write::PendingWrite;

use config::own_addr;
use housekeeping::{count_leader_changes, retention_loop, snapshot_loop};
use settings::{SPACE_CHECK, space_loop};
use write::{MERGE_QUEUE, Waiting, merge_loop};

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

/// This node's replica of the log: its Raft, and what writing through it
/// needs. Shared by the node, its background tasks and the peer endpoint
/// (which serves forwards); cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Replica {
    raft: Raft,
    keys: Arc<Keys>,
    /// Unkeyed batches on their way to be proposed, merged when many wait.
    merge: tokio::sync::mpsc::Sender<Waiting>,
    /// How long proposals take to be committed and applied here.
    commit_latency: Arc<Latency>,
    /// The peer link, for forwards to the leader.
    network: Network,
    /// Snapshot transfers this node takes part in.
    transfers: Arc<crate::snapshot::Transfers>,
    /// The largest entry (whole frame) this node proposes: the engine's
    /// `max_batch_bytes`.
    max_entry_bytes: usize,
    /// Peer messages (and answers) refused before openraft saw them.
    refused_messages: Arc<AtomicU64>,
    /// The engine, for the settings every node holds (alarms).
    engine: Arc<Engine>,
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

/// A running node.
#[derive(Debug)]
pub struct ClusterNode {
    id: NodeId,
    /// Its Raft and peer link, with what writing needs.
    replica: Replica,
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
        let replica = Replica {
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
        let merging = tokio::spawn(merge_loop(replica.clone(), waiting));
        let leader_changes = Arc::new(AtomicU64::new(0));
        let watching = tokio::spawn(count_leader_changes(
            raft.clone(),
            Arc::clone(&leader_changes),
        ));
        let serve = tokio::spawn(network.clone().serve(Arc::new(replica.clone()), unflushed));
        let retaining = tokio::spawn(retention_loop(
            replica.clone(),
            Arc::clone(&engine),
            config.retention_check,
        ));
        let snapshotting = tokio::spawn(snapshot_loop(
            replica.clone(),
            Arc::clone(&engine),
            config.keep_log_bytes,
            config.snapshot_check,
        ));
        let spacing = tokio::spawn(space_loop(replica.clone(), SPACE_CHECK));
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
            replica,
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

    /// This node's snapshot transfers: their counts and those under way.
    pub fn transfers(&self) -> &crate::snapshot::Transfers {
        &self.replica.transfers
    }

    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.replica.network.local_addr()
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
        let stopped = self.replica.raft.shutdown().await;
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.replica.network.close().await;
        stopped.map_err(|e| Error::Raft(e.to_string()))
    }
}
