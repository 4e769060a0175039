//! Catch-up of an empty node by snapshot, beside the floor of copying the
//! same segment files over loopback, in the same run.
//!
//! Three nodes of one cluster (in this process, QUIC with mutual TLS on
//! loopback) take in records until the leader holds `--gb` of sealed
//! segments; the leader snapshots and purges its log. Then:
//! 1. the floor: the same files through a plain TCP socket into files,
//!    each fsynced, the directory fsynced;
//! 2. ingest alone for `--seconds`: the leader's rate without a transfer;
//! 3. a fourth, empty node is added while the same ingest goes on: it is
//!    sent the segments, installs them, catches up by log and becomes a
//!    voter. Reported: seconds and MB/s until installed and until a voter,
//!    the ratio to the floor, and the ingest rate meanwhile.
//!
//!   snapshot-catchup --gb 1 --seconds 10

// The benchmark indexes only its own buffers and node map.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use lode_engine::{EncodedBatch, Engine, Level, LogRecord, Options};
use lode_replication::tls::{self, NodeTlsFiles};
use lode_replication::{ClusterConfig, ClusterNode};
use lode_tools::SplitMix64;

#[derive(Parser, Debug)]
#[command(verbatim_doc_comment)]
/// Snapshot catch-up benchmark.
///
///   snapshot-catchup --gb 1 --seconds 10
struct Args {
    /// Sealed segments the leader holds before the node is added, GB.
    #[arg(long, default_value_t = 1.0)]
    gb: f64,
    /// Seconds of ingest alone, the rate without a transfer.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The transfer's bandwidth cap, MB/s (0: none).
    #[arg(long, default_value_t = 0)]
    cap_mbps: u64,
    /// Bytes of file per chunk.
    #[arg(long, default_value_t = 2 << 20)]
    chunk: usize,
    /// Scratch directory (removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const RECORDS_PER_BATCH: u64 = 1000;
const IN_FLIGHT: usize = 8;

fn free_udp() -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("a free port");
    sock.local_addr().expect("its address").to_string()
}

/// A batch of records whose text barely compresses (hex of random bits),
/// so that the segments' bytes grow with what is written.
fn batch(rng: &mut SplitMix64, first: u64) -> EncodedBatch {
    let records: Vec<LogRecord> = (first..first + RECORDS_PER_BATCH)
        .map(|i| LogRecord {
            ts: 1_800_000_000_000_000_000 + i as i64,
            level: Level::Info,
            service: "bench".into(),
            host: "h1".into(),
            attrs: vec![("i".into(), i.to_string())],
            message: (0..6)
                .map(|_| format!("{:016x}", rng.next_u64()))
                .collect::<Vec<_>>()
                .join(" "),
            tenant: String::new(),
        })
        .collect();
    EncodedBatch::encode(&records).expect("encode a batch")
}

fn options() -> Options {
    Options {
        replicated: true,
        segment_bytes: 64 << 20,
        ..Options::default()
    }
}

struct Bench {
    dir: PathBuf,
    peers: BTreeMap<u64, String>,
    args: Args,
}

impl Bench {
    fn config(&self, id: u64, peers: BTreeMap<u64, String>) -> ClusterConfig {
        let tls = NodeTlsFiles::in_dir(&self.dir.join("tls"), id);
        let mut config = ClusterConfig::new(id, peers, tls);
        config.keep_log_bytes = 0;
        config.snapshot_check = Duration::from_millis(200);
        config.snapshot_bytes_per_sec = Some(self.args.cap_mbps * 1_000_000).filter(|&b| b > 0);
        config.snapshot_chunk_bytes = self.args.chunk;
        config
    }

    async fn start(&self, config: &ClusterConfig) -> Arc<ClusterNode> {
        let engine = Engine::open(self.dir.join(format!("node-{}", config.node_id)), options())
            .expect("open an engine");
        Arc::new(
            ClusterNode::start(Arc::new(engine), config)
                .await
                .expect("start a node"),
        )
    }
}

/// The node among `nodes` that leads now, if one says so.
fn leader_of(nodes: &[Arc<ClusterNode>]) -> Option<Arc<ClusterNode>> {
    nodes.iter().find(|n| n.status().role == "leader").cloned()
}

/// Writes batches into the leader among `nodes` until `stop`,
/// `IN_FLIGHT` at a time; counts the records acknowledged. A write the
/// leader refused (it moved) is dropped, and the next goes to the new one.
async fn ingest(
    nodes: Vec<Arc<ClusterNode>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    seed: u64,
) {
    let mut rng = SplitMix64::new(seed);
    let mut next = seed << 32;
    let mut pending = std::collections::VecDeque::new();
    let mut leader = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(to) = leader.clone().or_else(|| leader_of(&nodes)) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let b = batch(&mut rng, next);
        next += RECORDS_PER_BATCH;
        match to.submit(b).await {
            Ok(p) => {
                leader = Some(to);
                pending.push_back(p);
            }
            Err(_) => leader = None,
        }
        if pending.len() >= IN_FLIGHT
            && let Some(p) = pending.pop_front()
        {
            match p.wait().await {
                Ok(_) => {
                    acked.fetch_add(RECORDS_PER_BATCH, Ordering::Relaxed);
                }
                Err(_) => leader = None,
            }
        }
    }
    for p in pending {
        if p.wait().await.is_ok() {
            acked.fetch_add(RECORDS_PER_BATCH, Ordering::Relaxed);
        }
    }
}

fn sealed_bytes(node: &ClusterNode) -> u64 {
    node.engine().segments().iter().map(|s| s.sst_bytes).sum()
}

/// The floor: `files` through one loopback TCP socket into files under
/// `to`, each fsynced, then the directory; seconds.
fn copy_floor(files: &[PathBuf], to: &Path) -> f64 {
    std::fs::create_dir_all(to).expect("floor directory");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let to = to.to_path_buf();
    let count = files.len();
    let receiver = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..count {
            let mut len = [0u8; 8];
            sock.read_exact(&mut len).expect("length");
            let mut left = u64::from_le_bytes(len);
            let path = to.join(format!("{i}.sst"));
            let mut file = std::fs::File::create(&path).expect("create");
            while left > 0 {
                let n = sock
                    .read(&mut buf[..(left.min(1 << 20)) as usize])
                    .expect("read");
                assert!(n > 0, "the sender stopped early");
                file.write_all(&buf[..n]).expect("write");
                left -= n as u64;
            }
            file.sync_all().expect("fsync");
        }
        std::fs::File::open(&to)
            .and_then(|d| d.sync_all())
            .expect("fsync the directory");
    });
    let started = Instant::now();
    let mut sock = TcpStream::connect(addr).expect("connect");
    for path in files {
        let mut file = std::fs::File::open(path).expect("open a segment");
        let len = file.metadata().expect("stat").len();
        sock.write_all(&len.to_le_bytes()).expect("send");
        std::io::copy(&mut file, &mut sock).expect("send a file");
    }
    receiver.join().expect("receiver");
    started.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lode-snapshot-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args, dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn run(args: Args, dir: PathBuf) {
    let ids: Vec<(u64, Vec<String>)> = (1..=3).map(|id| (id, Vec::new())).collect();
    tls::init_cluster(&dir.join("tls"), &ids).expect("cluster certificates");
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_udp())).collect();
    let bench = Bench {
        dir: dir.clone(),
        peers: peers.clone(),
        args,
    };
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let node = bench.start(&bench.config(id, bench.peers.clone())).await;
        nodes.insert(id, node);
    }
    nodes[&1]
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let members: Vec<Arc<ClusterNode>> = nodes.values().cloned().collect();
    // Fill.
    let target = (bench.args.gb * 1e9) as u64;
    let started = Instant::now();
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let filling = tokio::spawn(ingest(
        members.clone(),
        Arc::clone(&stop),
        Arc::clone(&acked),
        1,
    ));
    while leader_of(&members).is_none_or(|l| sealed_bytes(&l) < target) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "filling: {:.2} GB sealed, {} records, {:.0} s",
            leader_of(&members).map_or(0, |l| sealed_bytes(&l)) as f64 / 1e9,
            acked.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
    stop.store(true, Ordering::Relaxed);
    filling.await.expect("fill");
    let leader = leader_of(&members).expect("a leader after the fill");
    // The snapshot covers the last seal, the log is purged.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = leader.status();
        let sealed = leader.engine().segments().last().map(|s| s.last_index);
        // Every finished WAL file sealed (the sealer runs behind, at
        // idle priority), the snapshot at the last seal, the log purged.
        let all_sealed = leader.engine().stats().wal_segments == 1;
        if all_sealed && s.snapshot.is_some() && s.snapshot == sealed && s.purged == s.snapshot {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot and purge: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let files: Vec<PathBuf> = leader
        .engine()
        .segments()
        .iter()
        .filter_map(|s| leader.engine().segment_file(s))
        .collect();
    let bytes = sealed_bytes(&leader);
    println!(
        "leader holds {} segments, {:.3} GB sealed",
        files.len(),
        bytes as f64 / 1e9
    );
    // 1. The floor.
    let floor_dir = dir.join("floor");
    let floor_secs = tokio::task::spawn_blocking({
        let (files, to) = (files.clone(), floor_dir.clone());
        move || copy_floor(&files, &to)
    })
    .await
    .expect("floor copy");
    let _ = std::fs::remove_dir_all(&floor_dir);
    let floor_mbps = bytes as f64 / 1e6 / floor_secs;
    println!("floor: {floor_secs:.2} s, {floor_mbps:.0} MB/s (loopback TCP into files, fsynced)");
    // 2. An empty node added, nothing else going on: beside the floor.
    let quiet = add_empty_node(&bench, &leader, 4, None).await;
    println!(
        "the leader holds {:.3} GB sealed after it",
        sealed_bytes(&leader) as f64 / 1e9
    );
    let mbps = quiet.sent as f64 / 1e6 / quiet.installed_secs;
    println!(
        "catch-up of an empty node: {:.3} GB sent, installed in {:.2} s ({mbps:.0} MB/s, {:.2}x the floor), a voter after {:.2} s",
        quiet.sent as f64 / 1e9,
        quiet.installed_secs,
        mbps / floor_mbps,
        quiet.voter_secs
    );
    // 3. Ingest alone, then another empty node added while it goes on.
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let writing = tokio::spawn(ingest(
        members.clone(),
        Arc::clone(&stop),
        Arc::clone(&acked),
        2,
    ));
    let alone_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(bench.args.seconds)).await;
    let alone = acked.swap(0, Ordering::Relaxed) as f64 / alone_started.elapsed().as_secs_f64();
    let busy = add_empty_node(&bench, &leader, 5, Some(&acked)).await;
    stop.store(true, Ordering::Relaxed);
    writing.await.expect("ingest");
    let mbps = busy.sent as f64 / 1e6 / busy.installed_secs;
    println!(
        "the same while ingest goes on: {:.3} GB sent, installed in {:.2} s ({mbps:.0} MB/s), a voter after {:.2} s",
        busy.sent as f64 / 1e9,
        busy.installed_secs,
        busy.voter_secs
    );
    println!(
        "leader's ingest: {alone:.0} records/s alone, {:.0} during the transfer ({:.2}x)",
        busy.ingest_rate,
        busy.ingest_rate / alone
    );
    let counters: Vec<String> = leader
        .transfers()
        .counters()
        .iter()
        .map(|(name, _, v)| format!("{name} {v}"))
        .collect();
    println!("leader: {}", counters.join(", "));
    for node in nodes.values().chain([&quiet.node, &busy.node]) {
        let _ = node.shutdown().await;
    }
}

struct CatchUp {
    node: Arc<ClusterNode>,
    /// Bytes the leader put on the wire for it.
    sent: u64,
    installed_secs: f64,
    voter_secs: f64,
    /// Records per second acknowledged until the snapshot was installed.
    ingest_rate: f64,
}

/// Starts node `id` empty and has `leader` add it; times its snapshot
/// install and its becoming a voter. `acked` counts an ingest going on.
async fn add_empty_node(
    bench: &Bench,
    leader: &Arc<ClusterNode>,
    id: u64,
    acked: Option<&AtomicU64>,
) -> CatchUp {
    tls::issue_node_cert(&bench.dir.join("tls"), id, &[]).expect("a certificate");
    let addr = free_udp();
    let mut config = bench.config(id, BTreeMap::from([(id, addr.clone())]));
    config.join = true;
    let node = bench.start(&config).await;
    let sent_before = leader.transfers().counts.bytes_sent.load(Ordering::Relaxed);
    let started = Instant::now();
    if let Some(acked) = acked {
        acked.store(0, Ordering::Relaxed);
    }
    let adding = tokio::spawn({
        let leader = Arc::clone(leader);
        async move { leader.add_node(id, addr).await }
    });
    let received = &node.transfers().counts.snapshots_received;
    while received.load(Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "no snapshot installed in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let installed_secs = started.elapsed().as_secs_f64();
    let ingest_rate = acked.map_or(0.0, |a| a.load(Ordering::Relaxed) as f64 / installed_secs);
    adding
        .await
        .expect("add")
        .expect("the node becomes a voter");
    CatchUp {
        sent: leader.transfers().counts.bytes_sent.load(Ordering::Relaxed) - sent_before,
        installed_secs,
        voter_secs: started.elapsed().as_secs_f64(),
        ingest_rate,
        node,
    }
}
