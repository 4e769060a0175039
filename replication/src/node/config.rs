//! What a node needs to join its cluster, and the Raft timing it runs
//! with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};

use super::{Error, Result};
use crate::tls::NodeTlsFiles;
use lode_replication_wire::NodeId;

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

    pub(super) fn raft_config(&self) -> Result<Arc<Config>> {
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

/// The address node `config.node_id` listens on for its peers.
pub(super) fn own_addr(config: &ClusterConfig) -> Result<SocketAddr> {
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
