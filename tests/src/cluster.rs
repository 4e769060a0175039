//! A cluster of real processes on loopback: three children of this test
//! binary, each a `lode` server that is one node (TCP for clients, QUIC
//! with mutual TLS between nodes). Clients write to every node while the
//! leader (every fourth round, a random node) is killed with SIGKILL and
//! restarted, twenty times. Then, with every node stopped, each data
//! directory is opened and its committed log read back: every
//! acknowledged record is on every node exactly once, nothing appears
//! twice, and the committed logs are identical entry for entry.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lode_client::{ClientOptions, ClusterClient, RetryOptions};
use lode_engine::{Engine, LogRecord, Options};
use lode_server::{Cluster, Config, Server};

use crate::record_for;

const NODE_VAR: &str = "LODE_TEST_CLUSTER_NODE";
/// A node spec's tuning for the snapshot tests.
const SNAPSHOTS: &str = "snapshots";
/// The tune of the tokens test: auth required, a snapshot's catch-up.
const TOKENS: &str = "tokens";
/// The tune of the exactly-once tests: small segments purged at once, a
/// node away catches up by snapshot.
pub(crate) const PURGING: &str = "purging";
/// Nodes refuse writes below 16 MiB of free disk, with 1 MiB segments.
pub(crate) const DISK_FLOOR: &str = "disk-floor";
const TRANSFER_BYTES_PER_SEC: u64 = 512 << 10;
const TRANSFER_CHUNK: usize = 64 << 10;
const KILLS: usize = 20;
const NODES: u64 = 3;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One node, run by the parent as a child process: `id;peers;tls;data;tcp;http`.
#[test]
#[ignore = "a child process of the cluster tests"]
fn node_child() {
    let spec = std::env::var(NODE_VAR).expect("node spec");
    crate::die_with_parent();
    if std::env::var_os("LODE_TEST_NODE_LOGS").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
    let parts: Vec<&str> = spec.split(';').collect();
    let [id, peers, tls, data, tcp, http, tune] = parts[..] else {
        panic!("bad spec {spec}");
    };
    let mut config = Config {
        data: PathBuf::from(data),
        listen: tcp.parse().ok(),
        http: http.parse().ok(),
        quic: None,
        syslog: None,
        cluster: Some(Cluster {
            node_id: id.parse().unwrap(),
            peers: peers.split(',').map(str::to_owned).collect(),
            tls_dir: PathBuf::from(tls),
            heartbeat_ms: lode_server::HEARTBEAT_MS,
            election_timeout_ms: lode_server::ELECTION_TIMEOUT_MS,
            join: false,
        }),
        ..Config::default()
    };
    // The partition test's nodes listen beyond loopback, where auth and
    // TLS are on by default; these tests are about faults, not
    // credentials (but the tokens test's), and their harness speaks
    // plain HTTP.
    config.auth.mode = if tune == TOKENS { "required" } else { "off" }.into();
    config.tls.mode = "off".into();
    if tune == TOKENS || tune == PURGING {
        // Small segments and no log kept for a node that is away: it
        // catches up by snapshot.
        config.storage.segment_bytes = 64 << 10;
        config.replication.keep_log_bytes = 0;
    }
    if tune == DISK_FLOOR {
        config.storage.free_space_floor = Some(16 << 20);
        config.storage.segment_bytes = 1 << 20;
    }
    if tune == SNAPSHOTS {
        // Many small segments, no log kept for laggards, and a slow
        // transfer in small chunks: a follower that was away catches up
        // by snapshot, long enough to be killed many times on the way.
        config.storage.segment_bytes = 64 << 10;
        config.replication.keep_log_bytes = 0;
        config.replication.snapshot_bytes_per_sec = TRANSFER_BYTES_PER_SEC;
        config.replication.snapshot_chunk_bytes = TRANSFER_CHUNK;
    }
    runtime().block_on(async {
        let server = Server::start(config).await.expect("node starts");
        println!("listening {}", server.addresses().tcp.unwrap());
        std::future::pending::<()>().await;
    });
}

/// Where a node's stderr goes: nowhere, or with `LODE_TEST_NODE_LOGS=DIR`
/// appended to a file per node there (to read what a failed test's nodes
/// said).
fn node_log(spec: &str) -> Stdio {
    let Some(dir) = std::env::var_os("LODE_TEST_NODE_LOGS") else {
        return Stdio::null();
    };
    let name: String = spec
        .split(';')
        .nth(3)
        .unwrap_or(spec)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::path::Path::new(&dir).join(format!("{name}.log")))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// A port the system calls free that this process has not handed out
/// before (the system may give the same one to two calls in a row: a
/// node then fails to bind its second listener).
fn unused_port(bind: impl Fn() -> SocketAddr) -> SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let addr = bind();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.insert(addr.port()) {
            return addr;
        }
    }
}

fn free_tcp() -> SocketAddr {
    unused_port(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    })
}

fn free_udp() -> SocketAddr {
    unused_port(|| {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    })
}

pub(crate) struct Node {
    spec: String,
    pub(crate) data: PathBuf,
    pub(crate) tcp: SocketAddr,
    pub(crate) http: SocketAddr,
    /// The peer endpoint (QUIC).
    pub(crate) peer: SocketAddr,
    /// The network namespace the node runs in, if not this one.
    netns: Option<String>,
    child: Option<Child>,
    /// The token the harness's own requests carry, where the node asks.
    token: Option<String>,
}

impl Node {
    pub(crate) fn start(&mut self) {
        let exe = std::env::current_exe().unwrap();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args([
                "cluster::node_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(NODE_VAR, &self.spec)
            .stdout(Stdio::piped())
            .stderr(node_log(&self.spec))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("listening "));
        assert!(ready, "node {} started", self.spec);
        self.child = Some(child);
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Whether the node's process still runs (it did not panic or exit).
    pub(crate) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `GET path` on the node's HTTP API: the whole answer.
    pub(crate) fn get(&self, path: &str) -> Option<String> {
        self.get_within(path, Duration::from_secs(2))
    }

    /// `GET path`, answered within `wait`.
    pub(crate) fn get_within(&self, path: &str, wait: Duration) -> Option<String> {
        self.child.as_ref()?;
        let mut stream = TcpStream::connect_timeout(&self.http, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(wait)).ok()?;
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!("GET {path} HTTP/1.1\r\nHost: l\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// The node's view of its cluster, from `GET /api/v1/cluster`.
    pub(crate) fn status(&self) -> Option<serde_json::Value> {
        let response = self.get("/api/v1/cluster")?;
        let body = response.split("\r\n\r\n").nth(1)?;
        serde_json::from_str(body).ok()
    }
}

/// A test that fails midway still stops its nodes.
impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) struct Cluster3 {
    dir: tempfile::TempDir,
    pub(crate) nodes: BTreeMap<u64, Node>,
}

/// Fresh loopback addresses for a node.
fn on_loopback(_: u64) -> Placement {
    Placement {
        peer: free_udp(),
        tcp: free_tcp(),
        http: free_tcp(),
        netns: None,
    }
}

/// Where node `id` runs: its peer (UDP), binary (TCP) and HTTP addresses
/// and its network namespace.
struct Placement {
    peer: SocketAddr,
    tcp: SocketAddr,
    http: SocketAddr,
    netns: Option<String>,
}

impl Cluster3 {
    /// Three nodes on loopback.
    pub(crate) fn start() -> Cluster3 {
        Cluster3::start_tuned(on_loopback, "")
    }

    /// Three nodes on loopback, tuned for a test (see `node_child`).
    pub(crate) fn start_on_loopback(tune: &str) -> Cluster3 {
        Cluster3::start_tuned(on_loopback, tune)
    }

    fn start_placed(place: impl Fn(u64) -> Placement) -> Cluster3 {
        Cluster3::start_tuned(place, "")
    }

    fn start_tuned(place: impl Fn(u64) -> Placement, tune: &str) -> Cluster3 {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let ids: Vec<(u64, Vec<String>)> = (1..=NODES).map(|id| (id, Vec::new())).collect();
        lode_replication::tls::init_cluster(&tls, &ids).unwrap();
        let placed: BTreeMap<u64, Placement> = (1..=NODES).map(|id| (id, place(id))).collect();
        let peers: Vec<String> = placed
            .iter()
            .map(|(id, p)| format!("{id}={}", p.peer))
            .collect();
        let mut nodes = BTreeMap::new();
        for (id, placement) in placed {
            let data = dir.path().join(format!("node-{id}"));
            let (tcp, http) = (placement.tcp, placement.http);
            let spec = format!(
                "{id};{};{};{};{tcp};{http};{tune}",
                peers.join(","),
                tls.display(),
                data.display()
            );
            let mut node = Node {
                spec,
                data,
                tcp,
                http,
                peer: placement.peer,
                netns: placement.netns,
                child: None,
                token: None,
            };
            node.start();
            nodes.insert(id, node);
        }
        Cluster3 { dir, nodes }
    }

    /// Where the cluster CA and the nodes' certificates are.
    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Every node's id but `leader`'s.
    pub(crate) fn others(&self, leader: u64) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| *id != leader)
            .collect()
    }

    /// The node that says it leads and that a majority of the nodes
    /// follow, waiting up to `within`.
    pub(crate) fn leader(&self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        let mut statuses = Vec::new();
        while Instant::now() < deadline {
            statuses = self.nodes.values().map(Node::status).collect();
            let leads = |id: u64| {
                statuses
                    .iter()
                    .flatten()
                    .any(|s| s["node"].as_u64() == Some(id) && s["role"] == "leader")
            };
            for id in self.nodes.keys() {
                let followers = statuses
                    .iter()
                    .flatten()
                    .filter(|s| s["leader"].as_u64() == Some(*id))
                    .count() as u64;
                if leads(*id) && followers > NODES / 2 {
                    return Some(*id);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("no leader within {within:?}: {statuses:?}");
        None
    }

    /// One writing client per node (each starting at a different node),
    /// until `stop`; client `c` numbers its records from
    /// `(base + c + 1) * 1,000,000`.
    fn clients(&self, base: u64, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Sent>> {
        let addrs: Vec<SocketAddr> = self.nodes.values().map(|n| n.tcp).collect();
        (0..NODES as usize)
            .map(|c| {
                let mut mine = addrs.clone();
                mine.rotate_left(c);
                let stop = Arc::clone(stop);
                let first = (base + c as u64 + 1) * 1_000_000;
                std::thread::spawn(move || client(mine, first, stop))
            })
            .collect()
    }

    /// Waits until every node has applied the same, whole log; returns its
    /// last index.
    pub(crate) fn settle(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let states: Vec<(Option<u64>, Option<u64>)> = self
                .nodes
                .values()
                .map(|n| {
                    n.status().map_or((None, None), |s| {
                        (s["applied_index"].as_u64(), s["last_log_index"].as_u64())
                    })
                })
                .collect();
            let first = states[0];
            if let Some(applied) = first.0
                && first.0 == first.1
                && states.iter().all(|s| *s == first)
            {
                return applied;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tagged(id: u64) -> LogRecord {
    let mut record = record_for(id);
    record.attrs = vec![("id".into(), id.to_string())];
    record
}

/// What one client learned.
#[derive(Default)]
struct Sent {
    acked: Vec<u64>,
    /// Acknowledged, or given up on (sent at least once).
    sent: Vec<u64>,
    /// When each batch was acknowledged.
    acked_at: Vec<Instant>,
    /// Resends of a batch whose answer was lost (same key each time).
    retries: u64,
}

/// Writes keyed batches of 20 through a [`ClusterClient`] of every node
/// (`addrs[0]` first) until `stop`. A batch whose answer is lost is sent
/// again with its key, to the next node: the cluster must store it once.
fn client(addrs: Vec<SocketAddr>, first_id: u64, stop: Arc<AtomicBool>) -> Sent {
    let mut sent = Sent::default();
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let retry = RetryOptions {
        give_up_after: Duration::from_secs(20),
        ..RetryOptions::default()
    };
    let client = ClusterClient::with_options(&addrs, options, retry).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut id = first_id;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<LogRecord> = (id..id + 20).map(tagged).collect();
            sent.sent.extend(id..id + 20);
            if client.append(&batch).await.is_ok() {
                sent.acked.extend(id..id + 20);
                sent.acked_at.push(Instant::now());
            }
            id += 20;
        }
    });
    sent.retries = client.retries();
    sent
}

/// An entry as compared between nodes: term, index, payload.
type Entry = (u64, u64, Vec<u8>);

/// A stopped node's engine and Raft state file.
fn open_stopped(data: &Path) -> (Engine, lode_replication::wire::LogState) {
    let options = Options {
        replicated: true,
        ..Options::default()
    };
    let engine = Engine::open(data, options).unwrap();
    let state =
        lode_replication::wire::decode_state(&engine.log_state().unwrap().unwrap()).unwrap();
    (engine, state)
}

/// The log of a stopped node's data directory up to `through` (an index
/// every node applied, so committed), and its records. (The committed
/// index in the state file may lag what was applied: openraft saves it as
/// it goes, not on every advance.)
fn committed(data: &Path, through: u64) -> (Vec<Entry>, Vec<LogRecord>) {
    let (engine, state) = open_stopped(data);
    assert!(state.committed.is_some(), "a committed index is saved");
    let committed = through;
    engine.apply(committed).unwrap();
    let entries = engine
        .read_entries(..=committed)
        .unwrap()
        .into_iter()
        .map(|e| (e.term, e.index, e.frame.payload().to_vec()))
        .collect();
    let records = engine.scan(..).map(|r| r.unwrap().log).collect();
    engine.close().unwrap();
    (entries, records)
}

/// Where record `id` is in a stopped node's whole log (committed or not),
/// for a failure's report.
fn whereabouts(data: &Path, id: u64) -> String {
    let (engine, state) = open_stopped(data);
    let want = tagged(id);
    let mut at = Vec::new();
    for entry in engine.read_entries(..).unwrap() {
        if entry.kind() != lode_engine::FrameKind::Batch {
            continue;
        }
        let view = lode_codec::BatchView::parse(entry.frame.payload()).unwrap();
        for record in view.iter() {
            let record = record.unwrap();
            if record.message.as_str() == want.message
                && record
                    .attrs
                    .first()
                    .is_some_and(|a| a.1.as_str() == want.attrs[0].1)
            {
                at.push((entry.term, entry.index));
            }
        }
    }
    let bounds = engine.log_bounds().unwrap();
    format!(
        "record {id} in entries {at:?}; committed {:?}, vote {:?}, log {bounds:?}",
        state.committed, state.vote
    )
}

/// Each node's answer to a linearizable count of every record.
fn linearizable_counts(cluster: &Cluster3) -> Vec<u64> {
    cluster
        .nodes
        .values()
        .map(|n| {
            let answer = n
                .get_within(
                    "/api/v1/count?consistency=linearizable",
                    Duration::from_secs(20),
                )
                .unwrap_or_default();
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(body).map_or(0, |v| {
                v["count"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a count: {answer}"))
            })
        })
        .collect()
}

/// Once the cluster settles: every node ready and naming the leader in
/// its metrics; then, all stopped, every acknowledged record on every node
/// exactly once, nothing that was never sent, identical committed logs.
fn check_settled_cluster(cluster: &mut Cluster3, acked: &[u64], sent: &HashSet<u64>) {
    let through = cluster.settle(Duration::from_secs(30));
    let leader = cluster
        .leader(Duration::from_secs(10))
        .expect("a leader at the end");
    for (id, node) in &cluster.nodes {
        let ready = node.get("/ready").unwrap_or_default();
        assert!(
            ready.starts_with("HTTP/1.1 200"),
            "node {id} is ready: {ready}"
        );
        let metrics = node.get("/metrics").unwrap_or_default();
        assert!(
            metrics.contains(&format!("lode_raft_leader {leader}\n")),
            "node {id}'s metrics name the leader"
        );
        for name in [
            "lode_raft_append_seconds_count ",
            "lode_raft_leader_changes_total ",
        ] {
            assert!(metrics.contains(name), "node {id}'s metrics have {name}");
        }
        if *id == leader {
            for name in [
                "lode_raft_follower_lag_entries{peer=",
                "lode_raft_follower_lag_bytes{peer=",
            ] {
                assert!(metrics.contains(name), "the leader's metrics have {name}");
            }
            let body = metrics.split("\r\n\r\n").nth(1).unwrap_or_default();
            crate::clients::promtool_check(body);
            // The shipped dashboard and alerts ask for metrics a cluster's
            // leader has.
            for name in shipped_metric_names() {
                assert!(
                    body.contains(&format!("\n{name}")),
                    "{name}, which the dashboard or the alerts use, is in the leader's metrics"
                );
            }
        }
    }
    // `lode cluster verify`'s checksums agree, as the entries do below,
    // from the first entry every node still holds (a node may purge
    // through a new snapshot between the two asks: then ask again).
    let mut sums: Vec<String> = Vec::new();
    for _ in 0..10 {
        let from = cluster
            .nodes
            .values()
            .filter_map(|n| n.status()?["first_log_index"].as_u64())
            .max()
            .unwrap_or(0);
        sums = cluster
            .nodes
            .values()
            .map(|n| {
                let answer = n
                    .get(&format!(
                        "/api/v1/cluster/verify?from={from}&through={through}"
                    ))
                    .unwrap_or_default();
                answer
                    .split("\r\n\r\n")
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let ranges = |s: &String| {
            serde_json::from_str::<serde_json::Value>(s)
                .map(|v| v["ranges"].clone())
                .ok()
        };
        if sums.iter().all(|s| ranges(s) == ranges(&sums[0])) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(sums[0].contains("crc32c"), "checksums: {}", sums[0]);
    let parsed: Vec<serde_json::Value> = sums
        .iter()
        .map(|s| serde_json::from_str(s).expect("verify answers JSON"))
        .collect();
    assert!(
        parsed.iter().all(|p| p["ranges"] == parsed[0]["ranges"]),
        "the nodes' log checksums differ: {sums:?}"
    );
    // Nodes seal at their own boundaries (a restart starts a new WAL
    // file); where two cover the same seqs, their records agree.
    let mut by_range = std::collections::HashMap::new();
    for p in &parsed {
        for segment in p["segments"].as_array().into_iter().flatten() {
            let range = (segment["first_seq"].as_u64(), segment["last_seq"].as_u64());
            let sum = segment["records_crc32c"].as_u64();
            assert!(
                sum.is_some(),
                "every segment checksums its records: {segment}"
            );
            let first = *by_range.entry(range).or_insert(sum);
            assert_eq!(
                first, sum,
                "the records of segment {range:?} differ: {sums:?}"
            );
        }
    }
    // A linearizable count on any node sees every acknowledged record;
    // counts taken while nothing was applied are equal. (A batch a client
    // gave up on may still land after the cluster settled, from a
    // server's forward: then count again.)
    let mut counts = Vec::new();
    for _ in 0..5 {
        let before = cluster.settle(Duration::from_secs(30));
        counts = linearizable_counts(cluster);
        assert!(
            counts.iter().all(|c| *c >= acked.len() as u64),
            "linearizable counts {counts:?}, {} acknowledged",
            acked.len()
        );
        if cluster.settle(Duration::from_secs(30)) == before {
            break;
        }
    }
    assert!(
        counts.iter().all(|c| *c == counts[0]),
        "linearizable counts at one applied index differ: {counts:?}"
    );
    let logs = stopped_logs(cluster, through);
    for (i, records) in logs.iter().enumerate() {
        let mut found = HashSet::new();
        for record in records {
            let id: u64 = record.attrs[0].1.parse().unwrap();
            assert_eq!(record, &tagged(id), "record {id} intact");
            assert!(
                found.insert(id),
                "record {id} stored twice on node {}",
                i + 1
            );
            assert!(sent.contains(&id), "record {id} was never sent");
        }
        let lost: Vec<_> = acked.iter().filter(|id| !found.contains(id)).collect();
        if !lost.is_empty() {
            for node in cluster.nodes.values() {
                eprintln!(
                    "{}: {}",
                    node.data.display(),
                    whereabouts(&node.data, *lost[0])
                );
            }
        }
        assert!(
            lost.is_empty(),
            "node {}: {} acknowledged records lost: {:?}",
            i + 1,
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
}

/// Stops every node and compares their committed logs through `through`
/// (from the first entry all still hold), which must be identical;
/// returns each node's records.
pub(crate) fn stopped_logs(cluster: &mut Cluster3, through: u64) -> Vec<Vec<LogRecord>> {
    for node in cluster.nodes.values_mut() {
        node.kill();
    }
    let logs: Vec<_> = cluster
        .nodes
        .values()
        .map(|n| committed(&n.data, through))
        .collect();
    // Below the first entry every node holds, some purged through a
    // snapshot: their records show they hold it.
    let from = logs
        .iter()
        .map(|(entries, _)| entries.first().map_or(through + 1, |e| e.1))
        .max()
        .unwrap_or(0);
    let logs: Vec<(Vec<Entry>, Vec<LogRecord>)> = logs
        .into_iter()
        .map(|(entries, records)| {
            (
                entries.into_iter().filter(|e| e.1 >= from).collect(),
                records,
            )
        })
        .collect();
    let (reference, _) = &logs[0];
    for (i, (entries, _)) in logs.iter().enumerate() {
        assert_eq!(
            entries.len(),
            reference.len(),
            "node {}'s committed log length",
            i + 1
        );
        if let Some(at) = entries.iter().zip(reference).position(|(a, b)| a != b) {
            let show = |e: &Entry| (e.0, e.1, e.2.len());
            panic!(
                "node {}'s committed log differs from node 1's at position {at}: {:?} vs {:?}; {} entries",
                i + 1,
                show(&entries[at]),
                show(&reference[at]),
                entries.len()
            );
        }
    }
    logs.into_iter().map(|(_, records)| records).collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[test]
fn sigkill_of_the_leader_under_load_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let mut cluster = Cluster3::start();
    assert!(
        cluster.leader(Duration::from_secs(20)).is_some(),
        "a first leader"
    );
    let mut rng = lode_tools::SplitMix64::new(0x1ead);
    let mut acked = Vec::new();
    let mut sent = HashSet::new();
    let mut failovers = Vec::new();
    let mut retries = 0;
    for round in 0..KILLS as u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = cluster.clients(round * 10, &stop);
        std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
        let leader = cluster
            .leader(Duration::from_secs(10))
            .expect("a leader to kill");
        let victim = if round % 4 == 3 {
            1 + rng.below(NODES)
        } else {
            leader
        };
        let killed_at = Instant::now();
        cluster.nodes.get_mut(&victim).unwrap().kill();
        std::thread::sleep(Duration::from_millis(300 + rng.below(300)));
        cluster.nodes.get_mut(&victim).unwrap().start();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let mut first_ack_after = None::<Instant>;
        for handle in clients {
            let result = handle.join().unwrap();
            let after = result.acked_at.iter().find(|t| **t > killed_at).copied();
            first_ack_after = match (first_ack_after, after) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            acked.extend(result.acked);
            sent.extend(result.sent);
            retries += result.retries;
        }
        if let Some(at) = first_ack_after {
            let role = if victim == leader {
                "leader"
            } else {
                "follower"
            };
            eprintln!(
                "round {round}: node {victim} ({role}) killed, first ack after {:?}",
                at - killed_at
            );
            if victim == leader {
                failovers.push(at - killed_at);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(300), "too slow");
    }
    check_settled_cluster(&mut cluster, &acked, &sent);
    let max = failovers.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{KILLS} kills: {} acknowledged records on every node once, {retries} batches resent; first ack after a leader's kill: median {:?}, max {:?} (of {}); {:?} in all",
        acked.len(),
        median(failovers.clone()),
        max,
        failovers.len(),
        started.elapsed()
    );
    assert!(
        acked.len() > 1000,
        "the clients got work done ({})",
        acked.len()
    );
    assert!(
        retries >= KILLS as u64,
        "batches were resent across the kills ({retries}), so the check that none is stored twice tested the keys"
    );
}

fn signal(node: &Node, signal: libc::c_int) {
    let pid = node.child.as_ref().expect("a running node").id();
    #[allow(unsafe_code)]
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(sent, 0, "signal {signal} to {pid}");
}

/// A paused leader (SIGSTOP) cannot acknowledge; the other two elect a
/// leader and go on; resumed (SIGCONT), the old leader steps down and
/// catches up, and the logs converge.
#[test]
fn a_paused_leader_steps_down_and_the_majority_goes_on() {
    let mut cluster = Cluster3::start();
    let old = cluster
        .leader(Duration::from_secs(20))
        .expect("a first leader");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = cluster.clients(0, &stop);
    std::thread::sleep(Duration::from_millis(300));
    signal(&cluster.nodes[&old], libc::SIGSTOP);
    let paused_at = Instant::now();
    // The two others elect one of themselves; the paused node cannot
    // answer its status, so it counts for no one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let elected = cluster
            .nodes
            .iter()
            .filter(|(id, _)| **id != old)
            .find(|(_, n)| n.status().is_some_and(|s| s["role"] == "leader"));
        if let Some((id, _)) = elected {
            break *id;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(new, old, "the paused node does not lead");
    std::thread::sleep(Duration::from_millis(500));
    signal(&cluster.nodes[&old], libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut sent = HashSet::new();
    let mut acked_while_paused = 0;
    for handle in clients {
        let result = handle.join().unwrap();
        acked_while_paused += result.acked_at.iter().filter(|t| **t > paused_at).count();
        acked.extend(result.acked);
        sent.extend(result.sent);
    }
    assert!(
        acked_while_paused > 0,
        "writes went on without the paused leader"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes[&old]
        .status()
        .is_none_or(|s| s["role"] == "leader")
    {
        assert!(Instant::now() < deadline, "the resumed node stepped down");
        std::thread::sleep(Duration::from_millis(50));
    }
    check_settled_cluster(&mut cluster, &acked, &sent);
}

/// A pipelined ingest through `Batcher::for_cluster` (what `lode ingest
/// --server A,B,C` runs): the leader is SIGKILLed twice meanwhile, the
/// unacknowledged batches are resent through the next node, and every
/// record ends up on every node exactly once.
#[test]
fn a_cluster_batcher_resends_what_a_dead_leader_left_unacknowledged() {
    let mut cluster = Cluster3::start();
    cluster
        .leader(Duration::from_secs(20))
        .expect("a first leader");
    let addrs: Vec<String> = cluster.nodes.values().map(|n| n.tcp.to_string()).collect();
    const RECORDS: u64 = 120_000;
    let ingest = std::thread::spawn(move || {
        runtime().block_on(async {
            let client = Arc::new(ClusterClient::new(&addrs).unwrap());
            let mut batcher = lode_client::Batcher::for_cluster(Arc::clone(&client), 200, 8)
                .await
                .unwrap();
            for id in 0..RECORDS {
                batcher.push(tagged(id)).await.unwrap();
                if id % 20_000 == 0 {
                    // Paced, so that the kills land mid-ingest.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
            (batcher.finish().await.unwrap(), client.retries())
        })
    });
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(250));
        let leader = cluster.leader(Duration::from_secs(10)).expect("a leader");
        cluster.nodes.get_mut(&leader).unwrap().kill();
        std::thread::sleep(Duration::from_millis(300));
        cluster.nodes.get_mut(&leader).unwrap().start();
    }
    let (acknowledged, retries) = ingest.join().unwrap();
    assert_eq!(acknowledged, RECORDS, "every record acknowledged once");
    eprintln!("{RECORDS} records through two kills, {retries} resends");
    let ids: Vec<u64> = (0..RECORDS).collect();
    check_settled_cluster(&mut cluster, &ids, &ids.iter().copied().collect());
}

/// Three network namespaces, one per node, each with a veth to a bridge in
/// this namespace (where the test's clients run); deleted when dropped.
/// A node is cut off by taking its link down: nothing reaches it, nothing
/// leaves it, from its peers or its clients.
struct Netns {
    tag: String,
    subnet: u32,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let netns = Netns {
            tag: format!("l{}", pid % 100_000),
            subnet: 64 + pid % 128,
        };
        let bridge = netns.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{}.254/24", netns.subnet),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for id in 1..=NODES {
            let (ns, veth) = (netns.name(id), netns.veth(id));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            let addr = format!("{}/24", netns.addr(id));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", "eth0",
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(netns)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn name(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    fn veth(&self, id: u64) -> String {
        format!("{}v{id}", self.tag)
    }

    fn addr(&self, id: u64) -> std::net::IpAddr {
        std::net::IpAddr::from([10, 213, self.subnet as u8, id as u8])
    }

    fn placement(&self, id: u64) -> Placement {
        let at = |port| SocketAddr::new(self.addr(id), port);
        Placement {
            peer: at(7410),
            tcp: at(7400),
            http: at(7401),
            netns: Some(self.name(id)),
        }
    }

    fn cut(&self, id: u64) {
        ip(&["link", "set", &self.veth(id), "down"]).unwrap();
    }

    fn heal(&self, id: u64) {
        ip(&["link", "set", &self.veth(id), "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for id in 1..=NODES {
            let _ = ip(&["netns", "del", &self.name(id)]);
            let _ = ip(&["link", "del", &self.veth(id)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// A leader cut off from its followers and its clients (network
/// namespaces, its link down): it acknowledges nothing, the other two
/// elect a leader and go on taking writes, and once the link is back the
/// old leader steps down and all three hold the same log.
#[test]
fn a_partitioned_leader_acknowledges_nothing_and_the_majority_goes_on() {
    let started = Instant::now();
    let netns = Netns::create().unwrap_or_else(|e| {
        panic!("this test makes network namespaces (root and iproute2 needed): {e}")
    });
    let mut cluster = Cluster3::start_placed(|id| netns.placement(id));
    let old = cluster
        .leader(Duration::from_secs(20))
        .expect("a first leader");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = cluster.clients(0, &stop);
    std::thread::sleep(Duration::from_millis(500));

    // A client of the old leader alone, connected before the cut.
    let probe_addr = cluster.nodes[&old].tcp.to_string();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let probe = std::thread::spawn(move || {
        runtime().block_on(async {
            let client = lode_client::Client::connect_tcp(&probe_addr).await.unwrap();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let batch: Vec<LogRecord> = (9_000_000_000..9_000_000_005).map(tagged).collect();
            tokio::time::timeout(Duration::from_secs(4), client.append(&batch)).await
        })
    });
    ready.recv().unwrap();
    netns.cut(old);
    let cut_at = Instant::now();
    go.send(()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let views: Vec<Option<u64>> = cluster
            .nodes
            .iter()
            .filter(|(id, _)| **id != old)
            .map(|(_, n)| n.status().and_then(|s| s["leader"].as_u64()))
            .collect();
        if let Some(Some(leader)) = views.first()
            && *leader != old
            && views.iter().all(|v| *v == Some(*leader))
        {
            break *leader;
        }
        assert!(
            Instant::now() < deadline,
            "the majority elected no leader: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "node {new} leads {:?} after node {old} was cut off",
        cut_at.elapsed()
    );
    let probed = probe.join().unwrap();
    assert!(
        !matches!(probed, Ok(Ok(_))),
        "the cut-off leader acknowledged a write: {probed:?}"
    );
    std::thread::sleep(Duration::from_secs(2));

    netns.heal(old);
    let healed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.nodes[&old]
        .status()
        .is_none_or(|s| s["role"] == "leader")
    {
        assert!(
            Instant::now() < deadline,
            "the old leader did not step down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "node {old} stepped down {:?} after the link came back",
        healed_at.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut sent = HashSet::new();
    let mut acked_while_cut = 0;
    for handle in clients {
        let result = handle.join().unwrap();
        acked_while_cut += result
            .acked_at
            .iter()
            .filter(|t| **t > cut_at && **t < healed_at)
            .count();
        acked.extend(result.acked);
        sent.extend(result.sent);
    }
    assert!(
        acked_while_cut > 0,
        "the majority took writes while the leader was cut off"
    );
    sent.extend(9_000_000_000..9_000_000_005);
    check_settled_cluster(&mut cluster, &acked, &sent);
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "too slow: {:?}",
        started.elapsed()
    );
    drop(cluster);
    drop(netns);
}

/// A counter's value in a `/metrics` answer.
pub(crate) fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics"))
}

/// A follower away while the leader seals and purges megabytes of
/// segments is sent them by snapshot, and SIGKILLed at random points of
/// the transfer ten times: each restart goes on from what it had staged
/// (the leader sends the missing bytes plus at most one chunk per kill),
/// and the follower ends with the leader's records and log.
#[test]
fn a_follower_killed_during_a_snapshot_transfer_resumes_each_time() {
    const TRANSFER_KILLS: u64 = 10;
    let started = Instant::now();
    let mut cluster = Cluster3::start_tuned(
        |_| Placement {
            peer: free_udp(),
            tcp: free_tcp(),
            http: free_tcp(),
            netns: None,
        },
        SNAPSHOTS,
    );
    let leader = cluster.leader(Duration::from_secs(20)).expect("a leader");
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.nodes.get_mut(&follower).unwrap().kill();
    // Records whose text does not compress: megabytes of segments.
    let addrs: Vec<String> = [leader]
        .iter()
        .map(|id| cluster.nodes[id].tcp.to_string())
        .collect();
    let client =
        ClusterClient::with_options(&addrs, ClientOptions::default(), RetryOptions::default())
            .unwrap();
    let mut rng = lode_tools::SplitMix64::new(0x5eed);
    runtime().block_on(async {
        for b in 0..400u64 {
            let batch: Vec<LogRecord> = (0..100)
                .map(|i| {
                    let mut r = tagged(b * 100 + i);
                    r.message = (0..6).map(|_| format!("{:016x}", rng.next_u64())).collect();
                    r
                })
                .collect();
            client.append(&batch).await.unwrap();
        }
    });
    // The leader's snapshot covers its last seal and its log is purged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (snapshot, purged) = loop {
        let s = cluster.nodes[&leader].status().unwrap_or_default();
        let (snap, purged) = (s["snapshot_index"].as_u64(), s["purged_index"].as_u64());
        if let (Some(snap), Some(purged)) = (snap, purged)
            && purged == snap
            && snap + 2 >= s["last_log_index"].as_u64().unwrap_or(0)
        {
            break (snap, purged);
        }
        assert!(Instant::now() < deadline, "no snapshot and purge: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let verify = cluster.nodes[&leader]
        .get(&format!(
            "/api/v1/cluster/verify?from={}&through={snapshot}",
            snapshot + 1
        ))
        .unwrap_or_default();
    let body: serde_json::Value =
        serde_json::from_str(verify.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
    let missing: u64 = body["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["last_index"].as_u64().is_some_and(|l| l <= snapshot))
        .map(|s| s["sst_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        missing > 3 << 19,
        "megabytes to send: {missing} (purged through {purged})"
    );
    // Kill the follower at a random point of each transfer.
    let term = |cluster: &Cluster3| {
        cluster.nodes[&leader]
            .status()
            .and_then(|s| s["term"].as_u64())
            .unwrap_or(0)
    };
    let term_before = term(&cluster);
    let mut kills = 0;
    while kills < TRANSFER_KILLS {
        cluster.nodes.get_mut(&follower).unwrap().start();
        let deadline = Instant::now() + Duration::from_secs(20);
        let receiving = loop {
            let s = cluster.nodes[&follower].status().unwrap_or_default();
            let t = &s["transfers"][0];
            if t["bytes_done"].as_u64().is_some_and(|b| b > 0) {
                break true;
            }
            if s["applied_index"].as_u64().is_some_and(|a| a >= snapshot) {
                break false;
            }
            assert!(Instant::now() < deadline, "no transfer under way: {s}");
            std::thread::sleep(Duration::from_millis(10));
        };
        if !receiving {
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        cluster.nodes.get_mut(&follower).unwrap().kill();
        kills += 1;
    }
    assert_eq!(
        kills, TRANSFER_KILLS,
        "the transfer outlasted {TRANSFER_KILLS} kills"
    );
    cluster.nodes.get_mut(&follower).unwrap().start();
    cluster.settle(Duration::from_secs(60));
    // A busy machine may elect another leader meanwhile: its own files
    // (sealed by itself, not byte for byte the first leader's) are sent
    // whole once per such term.
    let elections = term(&cluster).saturating_sub(term_before);
    let (mut sent, mut resumes) = (0, 0);
    for (id, node) in &cluster.nodes {
        if *id != follower {
            let metrics = node.get("/metrics").unwrap_or_default();
            sent += metric(&metrics, "lode_snapshot_sent_bytes_total");
            resumes += metric(&metrics, "lode_snapshot_resumes_total");
        }
    }
    eprintln!(
        "{kills} kills: {missing} bytes missing, {sent} sent ({} over), {resumes} resumes, {elections} elections, {:?}",
        sent - missing.min(sent),
        started.elapsed()
    );
    assert!(
        sent >= missing,
        "every missing byte was sent ({sent} < {missing})"
    );
    assert!(
        sent <= missing * (1 + elections) + kills * TRANSFER_CHUNK as u64,
        "at most a chunk more per kill: {sent} sent for {missing}, {elections} elections"
    );
    assert!(resumes >= 1, "transfers resumed ({resumes})");
    assert_eq!(
        metric(
            &cluster.nodes[&follower].get("/metrics").unwrap_or_default(),
            "lode_snapshots_received_total"
        ),
        1
    );
    // Its index caught up from the installed records: queries answer as
    // the leader's do.
    for q in ["level:error", "service:svc-3", "service:svc-3 level:warn"] {
        let count = |id: u64| -> Option<u64> {
            let answer =
                cluster.nodes[&id].get(&format!("/api/v1/count?q={}", q.replace(' ', "%20")))?;
            let body: serde_json::Value =
                serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()?;
            body["count"].as_u64()
        };
        let want = count(leader).expect("the leader counts");
        assert!(want > 0, "{q} matches records");
        let deadline = Instant::now() + Duration::from_secs(60);
        while count(follower) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "the follower counts {:?} for {q}, the leader {want}",
                count(follower)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Stopped, the follower's records are the leader's.
    for node in cluster.nodes.values_mut() {
        node.kill();
    }
    let records = |id: u64| -> Vec<LogRecord> {
        let (engine, _) = open_stopped(&cluster.nodes[&id].data);
        let records = engine.scan(..).map(|r| r.unwrap().log).collect();
        engine.close().unwrap();
        records
    };
    let want = records(leader);
    assert_eq!(want.len(), 40_000);
    assert!(
        records(follower) == want,
        "the follower's records differ from the leader's"
    );
}

/// The metric names `docs/grafana/lode.json` and
/// `docs/prometheus/alerts.yml` use (a histogram's by its name).
fn shipped_metric_names() -> std::collections::BTreeSet<String> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut names = std::collections::BTreeSet::new();
    for file in ["grafana/lode.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(docs.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("lode_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            names.insert(name.strip_suffix("_bucket").unwrap_or(name).to_owned());
            rest = &tail[end..];
        }
    }
    assert!(names.len() > 20, "{names:?}");
    names
}

/// How many records match `query` on `node` (a linearizable count,
/// waiting up to 30 s for an answer).
pub(crate) fn linearizable_count(node: &Node, query: &str) -> u64 {
    let answer = node
        .get_within(
            &format!("/api/v1/count?q={query}&consistency=linearizable"),
            Duration::from_secs(30),
        )
        .unwrap_or_default();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["count"].as_u64())
        .unwrap_or_else(|| panic!("a count: {answer}"))
}

/// A request to a node's HTTP API carrying `token` (none if empty): the
/// status and body, or `None` when the node does not answer.
pub(crate) fn ask(
    node: &Node,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&node.http, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: l\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    Some((
        status,
        response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// Waits until `node` answers `GET /api/v1/count` with `token` by
/// `status`, at most `within`.
fn wait_answers(node: &Node, token: &str, status: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ask(node, "GET", "/api/v1/count", token, b"").is_some_and(|(s, _)| s == status) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Tokens are entries of the replicated log: one made on a follower
/// holds on every node; while a node is away a token is revoked and
/// another made, and the log is purged past both, so the node catches up
/// by snapshot and must take the new token and refuse the revoked one;
/// then every node restarts and the tokens still hold.
#[test]
fn tokens_hold_on_every_node_through_restarts_and_a_snapshot() {
    let mut cluster = Cluster3::start_on_loopback(TOKENS);
    // The leader makes the first admin token into its data directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = loop {
        let found = cluster
            .nodes
            .values()
            .find_map(|n| std::fs::read_to_string(n.data.join("auth/admin.token")).ok());
        if let Some(token) = found.filter(|t| t.ends_with('\n')) {
            break token.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no node wrote the first admin token"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for node in cluster.nodes.values_mut() {
        node.token = Some(admin.clone());
    }
    let leader = cluster.leader(Duration::from_secs(30)).expect("a leader");
    let followers = cluster.others(leader);
    let make = |node: &Node, tenant: &str| {
        let body = format!(r#"{{"tenant":"{tenant}","scopes":"ingest,read"}}"#);
        let (status, answer) =
            ask(node, "POST", "/api/v1/tokens", &admin, body.as_bytes()).expect("an answer");
        assert_eq!(status, 201, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        (
            answer["id"].as_str().unwrap().to_owned(),
            answer["token"].as_str().unwrap().to_owned(),
        )
    };
    let (_, kept) = make(&cluster.nodes[&followers[0]], "team-a");
    let (doomed_id, doomed) = make(&cluster.nodes[&followers[0]], "team-a");
    for (id, node) in &cluster.nodes {
        assert!(
            wait_answers(node, &kept, 200, Duration::from_secs(20)),
            "a token made on a follower holds on node {id}"
        );
    }
    let away = followers[1];
    cluster.nodes.get_mut(&away).unwrap().kill();
    let leader_node = &cluster.nodes[&leader];
    let (status, _) = ask(
        leader_node,
        "DELETE",
        &format!("/api/v1/tokens/{doomed_id}"),
        &admin,
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);
    let (_, fresh) = make(leader_node, "team-b");
    // Megabytes of records through the leader: many sealed segments, and
    // the log purged past the token changes.
    let mut rng = lode_tools::SplitMix64::new(29);
    for _ in 0..40 {
        let lines: String = (0..500)
            .map(|_| {
                format!(
                    "{{\"message\":\"{:016x}{:016x}{:016x}\"}}\n",
                    rng.next_u64(),
                    rng.next_u64(),
                    rng.next_u64()
                )
            })
            .collect();
        let (status, answer) = ask(
            leader_node,
            "POST",
            "/api/v1/ingest",
            &kept,
            lines.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = cluster.nodes[&leader].status().unwrap_or_default();
        let purged = s["purged_index"].as_u64().unwrap_or(0);
        let snapshot = s["snapshot_index"].as_u64().unwrap_or(0);
        if purged > 0
            && purged == snapshot
            && snapshot + 2 >= s["last_log_index"].as_u64().unwrap_or(0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot and purge: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.nodes.get_mut(&away).unwrap().start();
    let back = &cluster.nodes[&away];
    assert!(
        wait_answers(back, &fresh, 200, Duration::from_secs(60)),
        "the node back from away takes the token made meanwhile"
    );
    assert!(
        wait_answers(back, &doomed, 401, Duration::from_secs(10)),
        "and refuses the revoked one"
    );
    // The install's count follows the settings it made visible.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &back.get("/metrics").unwrap_or_default(),
        "lode_snapshots_received_total",
    ) == 0
    {
        assert!(Instant::now() < deadline, "it caught up by snapshot");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every node restarted: the tokens hold.
    for node in cluster.nodes.values_mut() {
        node.kill();
    }
    for node in cluster.nodes.values_mut() {
        node.start();
    }
    cluster
        .leader(Duration::from_secs(30))
        .expect("a leader after the restart");
    for (id, node) in &cluster.nodes {
        for token in [&kept, &fresh] {
            assert!(
                wait_answers(node, token, 200, Duration::from_secs(30)),
                "node {id} takes a token after a restart"
            );
        }
        assert!(
            wait_answers(node, &doomed, 401, Duration::from_secs(5)),
            "node {id} refuses the revoked one"
        );
    }
}
