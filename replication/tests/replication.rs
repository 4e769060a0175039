//! lode-replication's tests, in one binary (each binary links RocksDB):
//! openraft's storage conformance suite on the adapter, and in-process
//! clusters of real nodes over QUIC on loopback.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_engine::{BatchKey, EncodedBatch, Engine, Level, LogRecord, Options};
use lode_replication::tls::{self, NodeTlsFiles};
use lode_replication::{ClusterConfig, ClusterNode, Error, LogStore, StateMachine, TypeConfig};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

fn replicated() -> Options {
    Options {
        replicated: true,
        segment_bytes: 64 << 10,
        ..Options::default()
    }
}

struct EngineStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for EngineStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            segment_bytes: 4096,
            ..replicated()
        };
        let engine = Arc::new(Engine::open(dir.path(), opts).expect("open engine"));
        let (log, sm) = lode_replication::open(engine, 0).expect("open storage");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(EngineStoreBuilder)
        .await
        .expect("openraft's storage suite");
}

/// A loopback port no one holds right now.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn batch(serial: u64, n: u64) -> EncodedBatch {
    let records: Vec<LogRecord> = (serial..serial + n)
        .map(|i| LogRecord {
            ts: 1_800_000_000_000_000_000 + i as i64,
            level: Level::Info,
            service: "svc".into(),
            host: "h".into(),
            attrs: vec![("i".into(), i.to_string())],
            message: format!("record {i}"),
            tenant: String::new(),
        })
        .collect();
    EncodedBatch::encode(&records).unwrap()
}

struct Cluster {
    dir: tempfile::TempDir,
    peers: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, ClusterNode>,
    options: Options,
    retention_check: Duration,
    /// Changes every node's configuration before it starts.
    tweak: fn(&mut ClusterConfig),
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        Cluster::start_with_options(n, replicated(), Duration::from_secs(10)).await
    }

    async fn start_with_options(n: u64, options: Options, retention_check: Duration) -> Cluster {
        Cluster::start_tweaked(n, options, retention_check, |_| {}).await
    }

    async fn start_tweaked(
        n: u64,
        options: Options,
        retention_check: Duration,
        tweak: fn(&mut ClusterConfig),
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<(u64, Vec<String>)> = (1..=n).map(|id| (id, Vec::new())).collect();
        tls::init_cluster(&dir.path().join("tls"), &ids).unwrap();
        let peers = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let mut cluster = Cluster {
            dir,
            peers,
            nodes: BTreeMap::new(),
            options,
            retention_check,
            tweak,
        };
        for id in 1..=n {
            cluster.start_node(id).await;
        }
        cluster
    }

    async fn start_node(&mut self, id: u64) {
        let config = ClusterConfig::new(id, self.peers.clone(), self.tls_files(id));
        self.start_with(config).await;
    }

    fn tls_files(&self, id: u64) -> NodeTlsFiles {
        NodeTlsFiles::in_dir(&self.dir.path().join("tls"), id)
    }

    async fn start_with(&mut self, mut config: ClusterConfig) {
        let id = config.node_id;
        config.retention_check = self.retention_check;
        (self.tweak)(&mut config);
        let engine = Arc::new(
            Engine::open(
                self.dir.path().join(format!("node-{id}")),
                self.options.clone(),
            )
            .unwrap(),
        );
        let node = ClusterNode::start(engine, &config).await.unwrap();
        self.nodes.insert(id, node);
    }

    /// Starts node `id` as one joining the running cluster: its own
    /// certificate from the cluster CA, its own address only.
    async fn start_joining(&mut self, id: u64) -> String {
        tls::issue_node_cert(&self.dir.path().join("tls"), id, &[]).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        self.peers.insert(id, addr.clone());
        let own = BTreeMap::from([(id, addr.clone())]);
        let mut config = ClusterConfig::new(id, own, self.tls_files(id));
        config.join = true;
        self.start_with(config).await;
        addr
    }

    async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.remove(&id).unwrap();
        let engine = Arc::clone(node.engine());
        node.shutdown().await.unwrap();
        // The engine is closed once the last holder lets go.
        eprintln!(
            "engine holders after shutdown: {}",
            Arc::strong_count(&engine)
        );
        drop(engine);
        for i in 0..100 {
            if std::net::UdpSocket::bind(&self.peers[&id]).is_ok() {
                eprintln!("port free after {i} tries");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader all running nodes agree on, waiting up to `within`.
    async fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<Option<u64>> =
                self.nodes.values().map(|n| n.status().leader).collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && self.nodes.contains_key(leader)
                && self.nodes[leader].status().role == "leader"
            {
                return *leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {leaders:?}"
            );
            if std::env::var_os("LODE_TRACE").is_some() {
                let s: Vec<_> = self.nodes.values().map(|n| n.status()).collect();
                eprintln!("{s:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes through whichever node leads, retrying while leadership
    /// moves (as a client does), for at most ten seconds.
    async fn write(&self, batch: EncodedBatch) -> lode_engine::SeqRange {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.leader(Duration::from_secs(10)).await;
            match self.nodes[&leader].write(batch.clone()).await {
                Ok(seqs) => return seqs,
                Err(Error::NotLeader { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    /// Waits until every running node applied what the leader applied,
    /// then checks that their logs and records are identical.
    async fn converge(&self, leader: u64) {
        // The leader's whole log: every entry in it is committed once the
        // writes returned (metrics may lag the engine by a moment).
        let engine = self.nodes[&leader].engine();
        let applied = match engine.log_bounds().unwrap() {
            Some(bounds) => bounds.last.1,
            // All of it purged through the snapshot.
            None => engine.applied_index().unwrap(),
        };
        for node in self.nodes.values() {
            node.wait_for_applied(applied, Duration::from_secs(10))
                .await
                .unwrap();
        }
        let reference = &self.nodes[&leader];
        let ids: Vec<u64> = std::iter::once(leader)
            .chain(self.nodes.keys().copied().filter(|id| *id != leader))
            .collect();
        let (from, logs) = common_logs(ids.iter().map(|id| &self.nodes[id]), applied);
        let logs: BTreeMap<u64, Log> = ids.iter().copied().zip(logs).collect();
        let (want_entries, want_records) = (logs[&leader].clone(), records(reference));
        assert_eq!(
            want_entries.len() as u64,
            (applied + 1).saturating_sub(from),
            "the log holds every entry from {from} on, no hole"
        );
        let sums = |n: &ClusterNode| -> BTreeMap<(u64, u64), Option<u32>> {
            n.engine()
                .segments()
                .into_iter()
                .map(|s| ((s.first_seq, s.last_seq), s.records_crc32c))
                .collect()
        };
        let want_sums = sums(reference);
        for (id, node) in &self.nodes {
            for (range, sum) in sums(node) {
                if let Some(want) = want_sums.get(&range) {
                    assert!(sum.is_some(), "node {id} checksums its records");
                    assert_eq!(sum, *want, "node {id}'s segment {range:?}'s records");
                }
            }
            assert_eq!(logs[id], want_entries, "node {id}'s log");
            let got = records(node);
            if got != want_records {
                for (i, n) in &self.nodes {
                    let st = n.engine().stats();
                    eprintln!(
                        "node {i}: {:?} engine applied {:?} next_seq {} wal {} unsealed {} sealed {}",
                        n.status(),
                        n.engine().applied_index(),
                        st.next_seq,
                        st.wal_segments,
                        st.unsealed_records,
                        st.sealed_records
                    );
                }
            }
            assert_eq!(got.len(), want_records.len(), "node {id}'s records");
            assert_eq!(got, want_records, "node {id}'s records");
        }
    }
}

/// A log as compared: (term, index, crc32c of the payload) per entry.
type Log = Vec<(u64, u64, u32)>;

/// A node's log from `from` through `through`.
fn log_entries(n: &ClusterNode, from: u64, through: u64) -> Log {
    n.engine()
        .read_entries(from..through + 1)
        .unwrap()
        .into_iter()
        .map(|e| (e.term, e.index, crc32c::crc32c(e.frame.payload())))
        .collect()
}

/// Each node's log through `through`, from the first index every one of
/// them still holds (below it, some purged their log through a
/// snapshot; their records show they hold it): that index and the logs,
/// in the order given. Each log is read once, then cut to the common
/// part, so a purge meanwhile (it only takes a prefix) changes nothing.
fn common_logs<'a>(
    nodes: impl IntoIterator<Item = &'a ClusterNode>,
    through: u64,
) -> (u64, Vec<Log>) {
    let read: Vec<(u64, Log)> = nodes
        .into_iter()
        .map(|n| {
            let applied = n.engine().applied_index();
            let entries = log_entries(n, 0, through);
            // An empty log holds nothing up to its applied entry.
            let first = entries
                .first()
                .map_or_else(|| applied.map_or(0, |a| a + 1), |e| e.1);
            (first, entries)
        })
        .collect();
    let from = read.iter().map(|(first, _)| *first).max().unwrap_or(0);
    let logs = read
        .into_iter()
        .map(|(_, entries)| entries.into_iter().filter(|e| e.1 >= from).collect())
        .collect();
    (from, logs)
}

/// A node's records with their seqs, in seq order.
fn records(n: &ClusterNode) -> Vec<(u64, LogRecord)> {
    n.engine()
        .scan(..)
        .map(|r| r.unwrap())
        .map(|r| (r.seq, r.log))
        .collect()
}

/// Retention in a cluster: the leader decides, every node carries it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_decided_by_the_leader_and_carried_out_alike_on_every_node() {
    trace();
    let options = Options {
        retention: lode_engine::Retention {
            max_age: None,
            max_bytes: Some(32 << 10),
        },
        tick: Duration::from_millis(100),
        ..replicated()
    };
    let mut cluster = Cluster::start_with_options(3, options, Duration::from_millis(300)).await;
    for i in 0..40 {
        cluster.write(batch(i * 500, 500)).await;
    }
    // Sealed segments go past the bound: the leader decides, and every
    // node drops the records below the same seq.
    let deadline = Instant::now() + Duration::from_secs(30);
    // What is kept comes to fit the bound (20 segments of ~8.6 KiB are
    // sealed), give or take the segment the policy measures against.
    let fits = |n: &ClusterNode| n.engine().stats().sealed_bytes <= (32 << 10) + (16 << 10);
    let first_seqs = loop {
        let first: Vec<u64> = cluster
            .nodes
            .values()
            .map(|n| n.engine().stats().first_seq)
            .collect();
        if first.iter().all(|f| *f > 1 && *f == first[0]) && cluster.nodes.values().all(fits) {
            break first;
        }
        if Instant::now() >= deadline {
            for n in cluster.nodes.values() {
                eprintln!("{:?} {:?}", n.status(), n.engine().stats());
            }
            panic!("retention on every node: {first:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.converge(leader).await;
    let kept = cluster.nodes[&leader].engine().scan(..).count() as u64;
    assert_eq!(
        kept,
        40 * 500 + 1 - first_seqs[0],
        "the records from the floor on"
    );
    for node in cluster.nodes.values() {
        let stats = node.engine().stats();
        assert!(
            stats.dropped_records > 0,
            "node {} dropped records",
            node.status().node_id
        );
    }
    // The decision is in the log: a restarted follower keeps it.
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.stop_node(follower).await;
    cluster.start_node(follower).await;
    cluster.write(batch(40 * 500, 10)).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.converge(leader).await;
    assert!(cluster.nodes[&follower].engine().stats().first_seq >= first_seqs[0]);
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop_node(id).await;
    }
}

/// `RUST_LOG=openraft=debug` shows what the nodes do.
fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_fail_over_and_catch_up() {
    trace();
    let mut cluster = Cluster::start(3).await;
    let mut written = Vec::new();
    for i in 0..40 {
        // Through whichever node leads: two clusters share the machine's
        // cores when tests run in parallel, and an early election may move
        // leadership.
        written.push(cluster.write(batch(i * 25, 25)).await);
    }
    let leader = cluster.leader(Duration::from_secs(10)).await;
    for (i, seqs) in written.iter().enumerate() {
        assert_eq!(
            (seqs.start, seqs.end),
            (1 + 25 * i as u64, 26 + 25 * i as u64),
            "seqs follow the log"
        );
    }
    cluster.converge(leader).await;

    // A follower asked to write only if it leads names the leader; asked
    // to write, it forwards to the leader.
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    match cluster.nodes[&follower].write_if_leader(batch(0, 1)).await {
        Err(Error::NotLeader {
            leader: Some((id, addr)),
            ..
        }) => {
            assert_eq!((id, &addr), (leader, &cluster.peers[&leader]));
        }
        other => panic!("a follower's write: {other:?}"),
    }
    for i in 40..45 {
        let seqs = cluster.nodes[&follower]
            .write(batch(i * 25, 25))
            .await
            .unwrap();
        assert_eq!(
            seqs.start,
            1 + 25 * i,
            "a forwarded write is committed in order"
        );
    }

    // The leader goes; the other two elect one and go on.
    let stopped_at = Instant::now();
    cluster.stop_node(leader).await;
    let new_leader = cluster.leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    eprintln!("new leader after {:?}", stopped_at.elapsed());
    for i in 45..50 {
        cluster.write(batch(i * 25, 25)).await;
    }

    // The old leader comes back as a follower and catches up.
    let restarting = Instant::now();
    cluster.start_node(leader).await;
    eprintln!("restarted in {:?}", restarting.elapsed());
    for i in 50..55 {
        cluster.write(batch(i * 25, 25)).await;
    }
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.converge(leader).await;
    let records = cluster.nodes[&leader].engine().scan(..).count();
    assert_eq!(records, 55 * 25, "every acknowledged record once");

    // Leadership moves on request.
    let target = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.nodes[&leader]
        .transfer_leader(target)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.leader(Duration::from_secs(10)).await != target {
        assert!(
            Instant::now() < deadline,
            "leadership did not move to {target}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.write(batch(55 * 25, 25)).await;
    cluster.converge(target).await;

    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop_node(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_learner_then_votes_and_a_leader_removes_itself() {
    trace();
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    for i in 0..20 {
        cluster.write(batch(i * 25, 25)).await;
    }

    // A joining node waits, knowing no leader, until it is added.
    let addr = cluster.start_joining(4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.nodes[&4].status().leader, None, "a joiner waits");
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| ![leader, 4].contains(id))
        .unwrap();
    assert!(
        matches!(
            cluster.nodes[&follower].add_node(4, addr.clone()).await,
            Err(Error::NotLeader { .. })
        ),
        "only the leader adds"
    );
    cluster.nodes[&leader]
        .add_node(4, addr.clone())
        .await
        .unwrap();
    let status = cluster.nodes[&leader].status();
    assert_eq!(status.voters, [1, 2, 3, 4].into());
    assert_eq!(status.addrs[&4], addr);
    assert!(
        matches!(
            cluster.nodes[&leader].add_node(4, addr).await,
            Err(Error::Config(_))
        ),
        "a voter is not added twice"
    );
    for i in 20..30 {
        cluster.write(batch(i * 25, 25)).await;
    }
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.converge(leader).await;

    // The leader removes itself: it steps down, the other three elect one
    // among them and go on.
    cluster.nodes[&leader].remove_node(leader).await.unwrap();
    cluster.stop_node(leader).await;
    let next = cluster.leader(Duration::from_secs(10)).await;
    assert_ne!(next, leader);
    let status = cluster.nodes[&next].status();
    assert!(
        !status.voters.contains(&leader) && !status.addrs.contains_key(&leader),
        "{status:?}"
    );
    assert_eq!(status.voters.len(), 3);
    for i in 30..35 {
        cluster.write(batch(i * 25, 25)).await;
    }
    cluster.converge(next).await;
    let records = cluster.nodes[&next].engine().scan(..).count();
    assert_eq!(records, 35 * 25, "every acknowledged record once");
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop_node(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_batch_is_written_once_however_often_it_is_retried() {
    trace();
    let mut cluster = Cluster::start(3).await;
    let keyed = |first: u64, sequence: u64| {
        batch(first, 10)
            .with_key(BatchKey {
                producer: 42,
                sequence,
            })
            .unwrap()
    };
    let first = cluster.write(keyed(0, 0)).await;
    assert_eq!(cluster.write(keyed(0, 0)).await, first, "a retry");

    // Two tries of one batch at once, on the leader and through a
    // follower: one is written, both answer its seqs.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let (a, b) = tokio::join!(
        cluster.nodes[&leader].write(keyed(10, 1)),
        cluster.nodes[&follower].write(keyed(10, 1)),
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(
        cluster.nodes[&follower].write(keyed(0, 0)).await.unwrap(),
        first,
        "a forwarded retry"
    );
    let unkeyed = cluster.write(batch(0, 10)).await;
    assert_ne!(unkeyed, first, "a batch without a key is always written");

    // Every node restarts: the keys come back from the logs.
    for id in [1, 2, 3] {
        cluster.stop_node(id).await;
    }
    for id in [1, 2, 3] {
        cluster.start_node(id).await;
    }
    assert_eq!(
        cluster.write(keyed(0, 0)).await,
        first,
        "a retry after restarts"
    );
    cluster.write(keyed(20, 2)).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.converge(leader).await;
    let records = cluster.nodes[&leader].engine().scan(..).count();
    assert_eq!(records, 40, "three keyed batches and one without a key");
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop_node(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_barrier_sees_every_acknowledged_write_and_needs_a_quorum() {
    trace();
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let followers: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    for round in 0..20u64 {
        cluster.write(batch(round * 25, 25)).await;
        // At once, with no waiting but the barrier's own.
        let asked = followers[(round % 2) as usize];
        cluster.nodes[&asked].read_barrier().await.unwrap();
        let held = cluster.nodes[&asked].engine().scan(..).count() as u64;
        assert_eq!(held, (round + 1) * 25, "node {asked} after write {round}");
    }
    cluster.nodes[&leader].read_barrier().await.unwrap();

    // With one node of three left, no barrier passes: the leader cannot
    // confirm it leads.
    cluster.stop_node(followers[0]).await;
    cluster.nodes[&leader].read_barrier().await.unwrap();
    cluster.stop_node(followers[1]).await;
    let started = Instant::now();
    let refused = cluster.nodes[&leader].read_barrier().await;
    assert!(refused.is_err(), "a barrier without a quorum: {refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "refused in time"
    );
    cluster.stop_node(leader).await;
}

/// A follower that missed more than one append message can carry (64
/// entries of 1.5 MB: over the peer link's 80 MiB message limit) still
/// catches up: the leader sends it what fits, a part at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_more_than_a_message_catches_up() {
    trace();
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let behind = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.stop_node(behind).await;
    let big = |serial: u64| {
        let records: Vec<LogRecord> = (serial..serial + 1500)
            .map(|i| LogRecord {
                ts: 1_800_000_000_000_000_000 + i as i64,
                message: format!("record {i} {}", "x".repeat(1000)),
                ..LogRecord::default()
            })
            .collect();
        EncodedBatch::encode(&records).unwrap()
    };
    for i in 0..70 {
        cluster.write(big(i * 1500)).await;
    }
    // The leader counts the bytes the stopped follower lacks: the whole
    // log it missed (70 batches of ~1.5 MB), from the frame table.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let lacking = cluster.nodes[&leader].status().lag_bytes[&behind];
    let written = cluster.nodes[&leader].engine().log_bytes(..);
    assert!(
        lacking > 70 * 1_500_000 && lacking <= written,
        "{lacking} of {written}"
    );
    cluster.start_node(behind).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.converge(leader).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes[&leader].status().lag_bytes.get(&behind) != Some(&0) {
        assert!(
            Instant::now() < deadline,
            "lag bytes fall to 0 once caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop_node(id).await;
    }
}

/// A node that led when it stopped comes back with an uncommitted vote
/// for itself in the same term: it must win a later term before it leads
/// again (it may have lost entries it had replicated before its own fsync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_does_not_resume_its_term() {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let engine = Arc::new(Engine::open(dir.path(), replicated()).unwrap());
        lode_replication::open(engine, 7).unwrap()
    };
    let (mut log, _sm) = open();
    log.save_vote(&lode_replication::Vote::new_committed(4, 7))
        .await
        .unwrap();
    assert!(log.read_vote().await.unwrap().unwrap().committed);
    drop((log, _sm));
    let (mut log, _sm) = open();
    let vote = log.read_vote().await.unwrap().unwrap();
    assert_eq!(
        (
            vote.leader_id.term,
            vote.leader_id.voted_for,
            vote.committed
        ),
        (4, 7, false)
    );
    log.save_vote(&lode_replication::Vote::new_committed(5, 3))
        .await
        .unwrap();
    drop((log, _sm));
    let (mut log, _sm) = open();
    let vote = log.read_vote().await.unwrap().unwrap();
    assert!(
        vote.committed,
        "another node's leadership is kept as it was"
    );
}

/// The seeded simulation: three nodes on [`SimNet`] with tokio's clock
/// paused, writers on every node, and a fault schedule (drops, delays,
/// duplicates, isolations, stops and restarts) drawn from the seed.
/// `LODE_SIM_SEED=N` runs seed N alone; a failure names its seed.
mod simulation {
    use super::*;
    use lode_replication::Status;
    use lode_replication::sim::{Faults, SimNet, SplitMix, seed_this_thread};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The seeds every CI run goes through.
    const SEEDS: std::ops::Range<u64> = 1..17;
    /// Fault events per run, each lasting up to 1.5 s of virtual time.
    const EVENTS: u64 = 10;
    const WRITERS: u64 = 4;

    fn lossy() -> Faults {
        Faults {
            lose: 0.02,
            duplicate: 0.02,
            slow_chance: 0.05,
            slow: Duration::from_millis(150),
            delay: (Duration::from_micros(200), Duration::from_millis(8)),
        }
    }

    /// Small segments, sealed often: snapshots (and so installs) come
    /// every few hundred milliseconds of a run.
    fn sim_options() -> Options {
        Options {
            segment_bytes: 16 << 10,
            ..replicated()
        }
    }

    type Nodes = Arc<Mutex<BTreeMap<u64, Arc<ClusterNode>>>>;

    /// One acknowledged batch: its record ids and the seqs it was given.
    type Acked = Arc<Mutex<Vec<(Vec<u64>, lode_engine::SeqRange)>>>;

    struct Sim {
        dir: tempfile::TempDir,
        net: SimNet,
        peers: BTreeMap<u64, String>,
        nodes: Nodes,
        /// Snapshots installed by nodes stopped so far.
        installs: std::sync::atomic::AtomicU64,
    }

    impl Sim {
        fn nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ClusterNode>>> {
            self.nodes.lock().unwrap()
        }

        async fn start_node(&self, id: u64) {
            let path = self.dir.path().join(format!("node-{id}"));
            // A stopped node's engine closes once its last task lets go.
            let mut tries = 0;
            let engine = loop {
                match Engine::open(&path, sim_options()) {
                    Ok(engine) => break Arc::new(engine),
                    Err(e) if tries < 500 => {
                        tries += 1;
                        if tries == 500 {
                            panic!("reopen node {id}: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("reopen node {id}: {e}"),
                }
            };
            let tls = NodeTlsFiles::in_dir(&self.dir.path().join("tls"), id);
            // Snapshots often, and no log kept for followers behind: a
            // node back from a stop catches up by a snapshot install.
            let config = ClusterConfig {
                snapshot_check: Duration::from_millis(200),
                keep_log_bytes: 0,
                ..ClusterConfig::new(id, self.peers.clone(), tls)
            };
            let node = ClusterNode::start_simulated(engine, &config, &self.net)
                .await
                .unwrap();
            self.nodes().insert(id, Arc::new(node));
        }

        async fn stop_node(&self, id: u64) {
            let node = self.nodes().remove(&id);
            if let Some(node) = node {
                self.count_installs(&node);
                node.shutdown().await.unwrap();
            }
        }

        fn count_installs(&self, node: &ClusterNode) {
            let installed = node
                .transfers()
                .counters()
                .into_iter()
                .find_map(|(name, _, n)| (name == "lode_snapshots_received_total").then_some(n));
            self.installs
                .fetch_add(installed.unwrap_or(0), Ordering::Relaxed);
        }

        /// Stops node `id` as a power loss would: its engine keeps only
        /// what it fsynced and drops what was queued, then Raft stops
        /// (failing, as its storage is gone).
        async fn crash_node(&self, id: u64) {
            let node = self.nodes().remove(&id);
            if let Some(node) = node {
                self.count_installs(&node);
                node.engine().crash();
                let _ = node.shutdown().await;
            }
        }

        fn leader(&self) -> Option<u64> {
            self.nodes()
                .values()
                .map(|n| n.status())
                .find(|s| s.role == "leader")
                .map(|s| s.node_id)
        }
    }

    /// A writer: batches of three records through a node it picks at
    /// random. Unkeyed batches are sent once (a failure leaves them
    /// unknown); keyed ones are retried until acknowledged.
    async fn writer(w: u64, seed: u64, nodes: Nodes, stop: Arc<AtomicBool>, acked: Acked) {
        let mut rng = SplitMix::new(seed ^ (w << 32));
        let keyed = w.is_multiple_of(2);
        let mut serial = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let ids: Vec<u64> = (0..3).map(|k| (w << 40) | (serial * 3 + k)).collect();
            let records: Vec<LogRecord> = ids.iter().map(|i| record(*i)).collect();
            let mut batch = EncodedBatch::encode(&records).unwrap();
            if keyed {
                let key = BatchKey {
                    producer: w,
                    sequence: serial,
                };
                batch = batch.with_key(key).unwrap();
            }
            serial += 1;
            for _ in 0..20 {
                let node = {
                    let nodes = nodes.lock().unwrap();
                    let live: Vec<_> = nodes.values().cloned().collect();
                    live.get(rng.below(live.len() as u64) as usize).cloned()
                };
                let Some(node) = node else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let wrote = tokio::time::timeout(Duration::from_secs(3), node.write(batch.clone()));
                if let Ok(Ok(seqs)) = wrote.await {
                    acked.lock().unwrap().push((ids.clone(), seqs));
                    break;
                }
                if !keyed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
        }
    }

    fn record(id: u64) -> LogRecord {
        LogRecord {
            ts: 1_800_000_000_000_000_000 + id as i64,
            level: Level::Info,
            service: "sim".into(),
            host: "h".into(),
            attrs: vec![("id".into(), id.to_string())],
            message: format!("record {id}"),
            tenant: String::new(),
        }
    }

    /// Every (term, leader) any node reported while leading, checked for
    /// two leaders in one term.
    async fn watch_leaders(nodes: Nodes, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<String>>>) {
        let mut leaders: HashMap<u64, u64> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let statuses: Vec<Status> =
                nodes.lock().unwrap().values().map(|n| n.status()).collect();
            for s in statuses.iter().filter(|s| s.role == "leader") {
                let first = *leaders.entry(s.term).or_insert(s.node_id);
                if first != s.node_id {
                    seen.lock().unwrap().push(format!(
                        "term {}: leaders {first} and {}",
                        s.term, s.node_id
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// What a run did, for the log and the replay check.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        events: Vec<String>,
        acked_batches: usize,
        last_index: u64,
        term: u64,
        /// Snapshots nodes installed (real threads seal, so this varies
        /// between replays of a seed).
        installs: u64,
    }

    fn simulate(seed: u64) -> Outcome {
        seed_this_thread(seed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(seed))
    }

    async fn run(seed: u64) -> Outcome {
        let mut rng = SplitMix::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let peers: BTreeMap<u64, String> = (1..=3)
            .map(|id| (id, format!("10.0.0.{id}:7410")))
            .collect();
        let sim = Sim {
            dir,
            net: SimNet::new(seed, lossy()),
            peers,
            nodes: Nodes::default(),
            installs: Default::default(),
        };
        tokio::spawn(sim.net.clone().hold_clock());
        for id in 1..=3 {
            sim.start_node(id).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Acked::default();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let watcher = tokio::spawn(watch_leaders(
            Arc::clone(&sim.nodes),
            Arc::clone(&stop),
            Arc::clone(&violations),
        ));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    w,
                    seed,
                    Arc::clone(&sim.nodes),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                ))
            })
            .collect();

        let mut events = Vec::new();
        for _ in 0..EVENTS {
            tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
            let lasting = Duration::from_millis(100 + rng.below(1400));
            let target = match rng.below(2) {
                0 => sim.leader().unwrap_or(1 + rng.below(3)),
                _ => 1 + rng.below(3),
            };
            match rng.below(5) {
                0 => {
                    events.push(format!("stop {target} for {lasting:?}"));
                    sim.stop_node(target).await;
                    tokio::time::sleep(lasting).await;
                    sim.start_node(target).await;
                }
                1 => {
                    events.push(format!("crash {target} for {lasting:?}"));
                    sim.crash_node(target).await;
                    tokio::time::sleep(lasting).await;
                    sim.start_node(target).await;
                }
                2 => {
                    events.push(format!("crash all for {lasting:?}"));
                    for id in 1..=3 {
                        sim.crash_node(id).await;
                    }
                    tokio::time::sleep(lasting).await;
                    for id in 1..=3 {
                        sim.start_node(id).await;
                    }
                }
                3 => {
                    events.push(format!("rolling restart, {lasting:?} each"));
                    for id in 1..=3 {
                        sim.crash_node(id).await;
                        tokio::time::sleep(lasting / 3).await;
                        sim.start_node(id).await;
                        tokio::time::sleep(lasting / 3).await;
                    }
                }
                _ => {
                    events.push(format!("isolate {target} for {lasting:?}"));
                    sim.net.isolate(target);
                    tokio::time::sleep(lasting).await;
                    sim.net.heal();
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        watcher.await.unwrap();
        sim.net.set_faults(Faults::none());
        eprintln!("seed {seed}: {events:?}, network {:?}", sim.net.counts());

        // Settle: a leader, one more write so that it commits in its term,
        // every node applied through the leader's log.
        let mut last = None;
        for _ in 0..300 {
            if let Some(leader) = sim.leader() {
                let node = Arc::clone(&sim.nodes()[&leader]);
                if let Ok(Ok(seqs)) =
                    tokio::time::timeout(Duration::from_secs(2), node.write(batch(0, 1))).await
                {
                    last = Some((leader, seqs));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (leader, _) = last.expect("a leader takes a write once the faults end");
        let nodes: Vec<(u64, Arc<ClusterNode>)> = sim
            .nodes()
            .iter()
            .map(|(id, n)| (*id, Arc::clone(n)))
            .collect();
        let leading = &nodes.iter().find(|(id, _)| *id == leader).unwrap().1;
        let last_index = leading.engine().log_bounds().unwrap().unwrap().last.1;
        // Virtual time: a snapshot transfer whose message was lost waits
        // out its timeout (30 s for a chunk) before it is sent again.
        for (id, node) in &nodes {
            node.wait_for_applied(last_index, Duration::from_secs(300))
                .await
                .unwrap_or_else(|e| panic!("node {id} applies through {last_index}: {e}"));
        }
        assert_eq!(
            *violations.lock().unwrap(),
            Vec::<String>::new(),
            "one leader per term"
        );
        check_identical(&nodes, last_index, &acked.lock().unwrap());
        let term = leading.status().term;
        for (id, _) in &nodes {
            sim.stop_node(*id).await;
        }
        let acked_batches = acked.lock().unwrap().len();
        Outcome {
            events,
            acked_batches,
            last_index,
            term,
            installs: sim.installs.load(Ordering::Relaxed),
        }
    }

    /// The nodes' logs are identical entry by entry, and their records
    /// too; every acknowledged record is there once, under the seqs its
    /// acknowledgement gave; no record is there twice.
    fn check_identical(
        nodes: &[(u64, Arc<ClusterNode>)],
        last_index: u64,
        acked: &[(Vec<u64>, lode_engine::SeqRange)],
    ) {
        let (from, logs) = common_logs(nodes.iter().map(|(_, n)| &**n), last_index);
        let (first_id, first) = &nodes[0];
        let (want_entries, want_records) = (&logs[0], records(first));
        assert_eq!(
            want_entries.len() as u64,
            (last_index + 1).saturating_sub(from),
            "no hole in the log from {from} on"
        );
        for ((id, node), log) in nodes[1..].iter().zip(&logs[1..]) {
            assert!(
                log == want_entries,
                "node {id}'s log differs from node {first_id}'s"
            );
            assert!(
                records(node) == want_records,
                "node {id}'s records differ from node {first_id}'s"
            );
        }
        let mut by_id: HashMap<u64, u64> = HashMap::new();
        for (seq, log) in &want_records {
            let Some((_, id)) = log.attrs.iter().find(|(k, _)| k == "id") else {
                continue;
            };
            let id: u64 = id.parse().unwrap();
            if let Some(before) = by_id.insert(id, *seq) {
                panic!("record {id} stored twice, at seqs {before} and {seq}");
            }
        }
        for (ids, seqs) in acked {
            let got: Vec<Option<u64>> = ids.iter().map(|i| by_id.get(i).copied()).collect();
            let want: Vec<Option<u64>> = (seqs.start..seqs.end).map(Some).collect();
            assert_eq!(
                got, want,
                "acknowledged records {ids:?} at the seqs they were given"
            );
        }
    }

    #[test]
    fn seeded_faults_lose_no_acknowledged_write_and_leave_identical_logs() {
        trace();
        let seeds: Vec<u64> = match std::env::var("LODE_SIM_SEED") {
            Ok(s) => vec![s.parse().expect("LODE_SIM_SEED is a number")],
            Err(_) => SEEDS.collect(),
        };
        let mut installs = 0;
        let runs = seeds.len();
        for seed in seeds {
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(|| simulate(seed));
            match outcome {
                Ok(outcome) => {
                    installs += outcome.installs;
                    eprintln!(
                        "seed {seed}: {} batches acknowledged, log through {} in term {}, {} snapshot installs, {:?} real time",
                        outcome.acked_batches,
                        outcome.last_index,
                        outcome.term,
                        outcome.installs,
                        started.elapsed()
                    )
                }
                Err(_) => panic!(
                    "simulation seed {seed} failed; replay it: LODE_SIM_SEED={seed} cargo test --release --workspace -- seeded_faults"
                ),
            }
        }
        assert!(
            runs < 4 || installs > 0,
            "{runs} runs installed no snapshot: the fault mix lacks installs"
        );
    }
}

/// A follower stopped while the leader seals and purges many segments
/// catches up by snapshot: the leader sends exactly the bytes of the
/// segments it lacks (those it sealed before stopping stay; every third
/// chunk is damaged in transit, refused and sent again), and its records
/// then equal the leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_catches_up_by_the_segments_it_lacks() {
    let mut cluster = Cluster::start_tweaked(3, replicated(), Duration::from_secs(10), |c| {
        c.keep_log_bytes = 0;
        c.snapshot_check = Duration::from_millis(100);
        c.snapshot_bytes_per_sec = None;
        c.snapshot_chunk_bytes = 16 << 10;
        c.damage_chunks_every = Some(3);
    })
    .await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let mut next = 0;
    let mut write_some = async |cluster: &Cluster, batches: u64| {
        for _ in 0..batches {
            cluster.write(batch(next, 200)).await;
            next += 200;
        }
    };
    write_some(&cluster, 20).await;
    cluster.converge(leader).await;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    // Its sealer runs idle-priority: on a busy machine it seals only
    // while someone waits for it.
    let hurry = lode_engine::hurry_background();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.nodes[&follower].engine().segments().is_empty() {
        assert!(Instant::now() < deadline, "the follower never sealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(hurry);
    cluster.stop_node(follower).await;
    // What it holds once stopped (it may seal while it stops).
    let held = Engine::open(
        cluster.dir.path().join(format!("node-{follower}")),
        cluster.options.clone(),
    )
    .unwrap()
    .segments();
    assert!(
        !held.is_empty(),
        "the follower sealed segments before it stopped"
    );
    write_some(&cluster, 60).await;
    // The leader's snapshot covers its last seal, and its log is purged
    // past everything the follower holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let held_through = held.last().unwrap().last_index;
    let snapshot = loop {
        let status = cluster.nodes[&leader].status();
        let sealed = cluster.nodes[&leader]
            .engine()
            .segments()
            .last()
            .unwrap()
            .last_index;
        if status.snapshot == Some(sealed) && status.purged.is_some_and(|p| p > held_through + 10) {
            break sealed;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot and purge: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let offered: Vec<_> = cluster.nodes[&leader]
        .engine()
        .segments()
        .into_iter()
        .filter(|s| s.last_index <= snapshot)
        .collect();
    let missing = lode_replication::snapshot::diff(&offered, &held).missing;
    let missing_bytes: u64 = missing.iter().map(|s| s.sst_bytes).sum();
    let all_bytes: u64 = offered.iter().map(|s| s.sst_bytes).sum();
    assert!(
        missing_bytes < all_bytes,
        "the follower's own segments are not sent"
    );
    cluster.start_node(follower).await;
    cluster.converge(leader).await;
    let counts = &cluster.nodes[&leader].transfers().counts;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&counts.snapshots_sent), 1, "one snapshot sent");
    // The follower may seal a segment of its own log as it restarts,
    // before the offer: it is not sent. Each segment it installed holds
    // the leader's file (an SST's bytes differ between nodes).
    let finally = cluster.nodes[&follower].engine().segments();
    let installed: Vec<_> = offered
        .iter()
        .filter(|o| {
            finally
                .iter()
                .any(|f| (f.first_seq, f.sst_crc32c) == (o.first_seq, o.sst_crc32c))
        })
        .collect();
    let installed_bytes: u64 = installed.iter().map(|s| s.sst_bytes).sum();
    assert!(
        installed.iter().all(|s| missing.contains(s)),
        "only segments it lacked were installed"
    );
    assert!(
        missing.len() - installed.len() <= 1,
        "at most the segment it sealed itself was not sent"
    );
    for own in &held {
        assert!(finally.contains(own), "its own segment {own:?} is kept");
    }
    assert_eq!(
        load(&counts.bytes_sent) - load(&counts.bytes_refused),
        installed_bytes,
        "the leader sent the bytes of the {} segments the follower lacked, and the damaged chunks again, no more",
        installed.len()
    );
    assert!(
        load(&counts.chunk_retries) > 0,
        "damaged chunks were sent again"
    );
    let received = &cluster.nodes[&follower].transfers().counts;
    assert_eq!(load(&received.snapshots_received), 1);
    // The follower goes on by log: later writes reach it.
    write_some(&cluster, 5).await;
    cluster.converge(leader).await;
}
