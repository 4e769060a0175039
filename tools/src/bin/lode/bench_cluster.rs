//! `lode bench --cluster N`: a cluster of N `lode serve` processes on this
//! machine beside one, and beside an etcd cluster of N members, in one
//! invocation:
//! - batched ingest (the binary protocol, into the leader) into the
//!   cluster beside the same ingest into a single node, with CPU per
//!   record on each node (its whole process, from the first batch until
//!   every node has every record searchable);
//! - single-record appends from many clients at once, each with its own
//!   connection, spread over the nodes, for a fixed time: writes/s and
//!   commit latency, beside etcd taking single-key puts the same way
//!   (its JSON gateway over HTTP/1.1, one connection per client);
//! - failover: the leader killed (SIGKILL) while writers keep writing
//!   through the other nodes, timed until a write sent after the kill is
//!   acknowledged.

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_client::Client;
use lode_engine::LogRecord;
use lode_tools::{median, to_json_line};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::CliError;
use crate::bench::{
    BenchArgs, Cpu, ServerChild, Workload, field, remote_ingest, spawn_serve, start_server,
    us_per_record, wait_searchable,
};

/// Figures of one run.
#[derive(Default)]
struct Run {
    single: f64,
    cluster: f64,
    /// Per node id: CPU per record (us) from the cluster's ingest until
    /// every node has every record searchable, and whether it led.
    cpu: BTreeMap<u64, (f64, bool)>,
    single_cpu: f64,
    lode_writes: Writes,
    etcd_writes: Option<Writes>,
    /// The burst of appends all in flight at once, if run.
    burst: Option<Writes>,
    /// From the leader's kill to the first write sent after it and
    /// acknowledged (none: the cluster is a single node).
    failover: Option<Duration>,
}

/// What the many-clients phase measured.
#[derive(Default, Clone)]
struct Writes {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// The first failure, to say what the errors were.
    first_error: Option<String>,
}

pub(crate) async fn bench_cluster(args: &BenchArgs, nodes: usize) -> Result<(), CliError> {
    if !(1..=7).contains(&nodes) {
        return Err(CliError::new(format!(
            "--cluster {nodes}: between 1 and 7 nodes"
        )));
    }
    let Workload {
        _temp,
        root,
        records,
        batches,
    } = Workload::new(args)?;
    let etcd = which("etcd");
    if etcd.is_none() {
        eprintln!(
            "etcd not found: its comparison is skipped (apt-get install etcd-server, or tools/with-deps --bench)"
        );
    }
    let mut runs = Vec::new();
    for run in 0..args.runs.max(1) {
        eprintln!("run {}/{}", run + 1, args.runs);
        let dir = root.join(format!("run-{run}"));
        let mut figures = Run::default();

        let (child, line) = start_server(
            &dir.join("single"),
            ["--listen", "127.0.0.1:0"],
            &args.background,
        )?;
        let client = Client::connect_tcp(&field(&line, "binary (tcp)")?).await?;
        let before = Cpu::now(Some(child.0.id()));
        figures.single =
            remote_ingest(std::slice::from_ref(&client), &batches, args.window).await?;
        wait_searchable(&client, args.records as u64, SEARCHABLE_WITHIN).await?;
        figures.single_cpu = server_cpu(&Cpu::now(Some(child.0.id())).since(&before), args.records);
        eprintln!("  single node       {:>12.0} records/s", figures.single);
        drop((client, child));

        let cluster = LodeCluster::start(&dir.join("cluster"), nodes, &args.background)?;
        let leader = cluster.leader(Duration::from_secs(20)).await?;
        let leader_tcp = cluster
            .tcp
            .get(&leader)
            .ok_or_else(|| CliError::new(format!("node {leader} leads but is not ours")))?;
        let client = Client::connect_tcp(leader_tcp).await?;
        let before: BTreeMap<u64, Cpu> = cluster
            .children
            .iter()
            .map(|(id, c)| (*id, Cpu::now(Some(c.0.id()))))
            .collect();
        figures.cluster =
            remote_ingest(std::slice::from_ref(&client), &batches, args.window).await?;
        // Each node's CPU is read once it has every record searchable.
        for (id, child) in &cluster.children {
            let (Some(start), Some(addr)) = (before.get(id), cluster.tcp.get(id)) else {
                continue;
            };
            let node = Client::connect_tcp(addr).await?;
            wait_searchable(&node, args.records as u64, SEARCHABLE_WITHIN).await?;
            let spent = Cpu::now(Some(child.0.id())).since(start);
            figures
                .cpu
                .insert(*id, (server_cpu(&spent, args.records), *id == leader));
        }
        eprintln!(
            "  cluster of {nodes}     {:>12.0} records/s",
            figures.cluster
        );
        drop(client);

        let addrs: Vec<String> = cluster.tcp.values().cloned().collect();
        let entries_before = cluster.last_index(leader).await;
        figures.lode_writes = single_writes::<Client>(&addrs, args, &records).await;
        let entries = cluster
            .last_index(leader)
            .await
            .saturating_sub(entries_before);
        let w = &figures.lode_writes;
        eprintln!(
            "  lode, {} clients  {:>12.0} writes/s, p50 {:.1} ms, p99 {:.1} ms, {:.1} writes per log entry",
            args.clients,
            w.per_sec,
            w.p50_ms,
            w.p99_ms,
            w.per_sec * args.seconds as f64 / entries.max(1) as f64
        );
        if args.burst > 0 {
            let w = burst(&addrs, args.burst, &records).await?;
            eprintln!(
                "  lode, {} at once {:>9.0} writes/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
                args.burst, w.per_sec, w.p50_ms, w.p99_ms, w.errors
            );
            figures.burst = Some(w);
        }
        let mut cluster = cluster;
        if nodes >= 3 {
            let took = failover(&mut cluster, &records).await?;
            eprintln!("  failover          {:>12.0} ms", took.as_secs_f64() * 1e3);
            figures.failover = Some(took);
        }
        drop(cluster);

        if let Some(etcd) = &etcd {
            let members = EtcdCluster::start(etcd, &dir.join("etcd"), nodes)?;
            members.healthy(Duration::from_secs(30)).await?;
            let w = single_writes::<EtcdWriter>(&members.clients, args, &records).await;
            eprintln!(
                "  etcd, {} clients  {:>12.0} writes/s, p50 {:.1} ms, p99 {:.1} ms",
                args.clients, w.per_sec, w.p50_ms, w.p99_ms
            );
            figures.etcd_writes = Some(w);
        }
        let _ = std::fs::remove_dir_all(&dir);
        runs.push(figures);
    }
    report(args, nodes, &runs);
    Ok(())
}

/// How long a node may take to have every record searchable.
const SEARCHABLE_WITHIN: Duration = Duration::from_secs(600);

/// CPU per record of the server process, threads that ended included.
fn server_cpu(cpu: &Cpu, records: usize) -> f64 {
    let ns = cpu.processes.get("server ").copied().unwrap_or(0);
    us_per_record(ns, records)
}

fn which(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

pub(crate) fn free_tcp() -> Result<u16, CliError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp() -> Result<u16, CliError> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// N `lode serve` nodes of one cluster, killed when dropped.
struct LodeCluster {
    children: BTreeMap<u64, ServerChild>,
    tcp: BTreeMap<u64, String>,
    http: BTreeMap<u64, String>,
}

impl LodeCluster {
    fn start(dir: &Path, nodes: usize, background: &str) -> Result<LodeCluster, CliError> {
        std::fs::create_dir_all(dir)?;
        let ids: Vec<u64> = (1..=nodes as u64).collect();
        let tls = dir.join("tls");
        let certs: Vec<(u64, Vec<String>)> = ids.iter().map(|id| (*id, Vec::new())).collect();
        lode_replication::tls::init_cluster(&tls, &certs)?;
        let mut peers = Vec::new();
        for id in &ids {
            peers.push(format!("{id}=127.0.0.1:{}", free_udp()?));
        }
        let peers = peers.join(",");
        let mut cluster = LodeCluster {
            children: BTreeMap::new(),
            tcp: BTreeMap::new(),
            http: BTreeMap::new(),
        };
        for id in ids {
            let tcp = format!("127.0.0.1:{}", free_tcp()?);
            let http = format!("127.0.0.1:{}", free_tcp()?);
            let args: Vec<String> = [
                "--listen",
                &tcp,
                "--http",
                &http,
                "--quic",
                "off",
                "--syslog",
                "off",
                "--node-id",
                &id.to_string(),
                "--peers",
                &peers,
                "--cluster-tls",
                &tls.display().to_string(),
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
            let (child, _) = spawn_serve(
                &dir.join(format!("node-{id}")),
                &args,
                &crate::bench::background_config(background),
            )?;
            cluster.children.insert(id, child);
            cluster.tcp.insert(id, tcp);
            cluster.http.insert(id, http);
        }
        Ok(cluster)
    }

    /// Node `id`'s last log index (0 when it does not answer).
    async fn last_index(&self, id: u64) -> u64 {
        let Some(http) = self.http.get(&id) else {
            return 0;
        };
        let status = http_get(http, "/api/v1/cluster").await.unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&status)
            .ok()
            .and_then(|v| v.get("last_log_index")?.as_u64())
            .unwrap_or(0)
    }

    /// The node all agree leads, waiting up to `within`.
    async fn leader(&self, within: Duration) -> Result<u64, CliError> {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for http in self.http.values() {
                let status = http_get(http, "/api/v1/cluster").await.unwrap_or_default();
                let leader = serde_json::from_str::<serde_json::Value>(&status)
                    .ok()
                    .and_then(|v| v.get("leader")?.as_u64());
                leaders.push(leader);
            }
            if let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*first))
            {
                return Ok(*first);
            }
            if Instant::now() > deadline {
                return Err(CliError::new(format!(
                    "the cluster elected no leader within {within:?}: {leaders:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Latencies of many writers, merged.
fn summarize(
    latencies: &mut [Duration],
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
) -> Writes {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Writes {
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        errors,
        first_error,
    }
}

/// One writer's connection: writes one record and returns once the system
/// acknowledged it.
trait Writer: Sized + Send + 'static {
    fn open(addr: String, writer: usize) -> impl Future<Output = Result<Self, String>> + Send;
    fn write(&mut self, record: &LogRecord) -> impl Future<Output = Result<(), String>> + Send;
}

/// lode: an append of one record over the binary protocol.
impl Writer for Client {
    async fn open(addr: String, _: usize) -> Result<Client, String> {
        Client::connect_tcp(&addr).await.map_err(|e| e.to_string())
    }

    async fn write(&mut self, record: &LogRecord) -> Result<(), String> {
        self.append(std::slice::from_ref(record))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// etcd: a put of the record's JSON line under the writer's own key.
struct EtcdWriter {
    conn: HttpConnection,
    key: String,
}

impl Writer for EtcdWriter {
    async fn open(addr: String, writer: usize) -> Result<EtcdWriter, String> {
        Ok(EtcdWriter {
            conn: HttpConnection::open(&addr)
                .await
                .map_err(|e| e.to_string())?,
            key: base64(format!("writer-{writer}").as_bytes()),
        })
    }

    async fn write(&mut self, record: &LogRecord) -> Result<(), String> {
        let mut line = Vec::new();
        to_json_line(None, record, &mut line);
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            self.key,
            base64(&line)
        );
        let answer = self
            .conn
            .post("/v3/kv/put", &body)
            .await
            .map_err(|e| e.to_string())?;
        if answer.contains("\"header\"") {
            Ok(())
        } else {
            Err(answer)
        }
    }
}

/// Runs `args.clients` writers for `args.seconds`, each its own
/// connection to `addrs[i % len]`, each write one record acknowledged.
async fn single_writes<W: Writer>(
    addrs: &[String],
    args: &BenchArgs,
    records: &Arc<Vec<LogRecord>>,
) -> Writes {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let addr = addrs.get(c % addrs.len()).cloned().unwrap_or_default();
        let records = Arc::clone(records);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut first = None;
            let mut writer = match W::open(addr, c).await {
                Ok(writer) => writer,
                Err(e) => return (latencies, 1, Some(e)),
            };
            let mut i = c;
            while Instant::now() < deadline {
                let Some(record) = records.get(i % records.len()) else {
                    break;
                };
                i += 7919;
                let at = Instant::now();
                match writer.write(record).await {
                    Ok(()) => latencies.push(at.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, first)
        }));
    }
    collect(tasks, started).await
}

/// `n` single-record appends sent at once, one task each, over as many
/// connections as keep each within the servers' 64 requests in flight,
/// spread over `addrs`; timed from the first send to the last answer.
async fn burst(
    addrs: &[String],
    n: usize,
    records: &Arc<Vec<LogRecord>>,
) -> Result<Writes, CliError> {
    let per_connection = lode_client::ClientOptions::default().max_in_flight;
    let mut clients = Vec::new();
    for c in 0..n.div_ceil(per_connection) {
        let addr = addrs.get(c % addrs.len()).cloned().unwrap_or_default();
        clients.push(Client::connect_tcp(&addr).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let Some(client) = clients.get(i % clients.len()).cloned() else {
            break;
        };
        let records = Arc::clone(records);
        tasks.push(tokio::spawn(async move {
            let Some(record) = records.get(i % records.len()) else {
                return (Vec::new(), 1, Some("no record".to_owned()));
            };
            let at = Instant::now();
            match client.append(std::slice::from_ref(record)).await {
                Ok(_) => (vec![at.elapsed()], 0, None),
                Err(e) => (Vec::new(), 1, Some(e.to_string())),
            }
        }));
    }
    Ok(collect(tasks, started).await)
}

/// Writers per surviving node while the leader is killed.
const FAILOVER_WRITERS: usize = 8;
/// The longest a failover is waited for.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// Kills the leader while writers keep appending single records through
/// every other node (each reconnecting after a failure), and returns the
/// time from the kill until a write sent after it is acknowledged: what
/// a client sees of an election under load.
async fn failover(
    cluster: &mut LodeCluster,
    records: &Arc<Vec<LogRecord>>,
) -> Result<Duration, CliError> {
    let leader = cluster.leader(Duration::from_secs(20)).await?;
    let survivors: Vec<String> = cluster
        .tcp
        .iter()
        .filter(|(id, _)| **id != leader)
        .map(|(_, addr)| addr.clone())
        .collect();
    let killed = Arc::new(std::sync::OnceLock::<Instant>::new());
    let (acked, mut first_ack) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut writers = Vec::new();
    for (w, addr) in survivors
        .iter()
        .cycle()
        .take(FAILOVER_WRITERS * survivors.len())
        .enumerate()
    {
        let (addr, killed, acked) = (addr.clone(), Arc::clone(&killed), acked.clone());
        let record = records.get(w % records.len().max(1)).cloned();
        writers.push(tokio::spawn(async move {
            let Some(record) = record else { return };
            let mut client = None;
            while !acked.is_closed() {
                if client.is_none() {
                    client = Client::connect_tcp(&addr).await.ok();
                }
                let Some(connected) = &client else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let sent = Instant::now();
                match connected.append(std::slice::from_ref(&record)).await {
                    Ok(_) if killed.get().is_some_and(|k| sent > *k) => {
                        let _ = acked.send(Instant::now());
                    }
                    Ok(_) => {}
                    Err(_) => client = None,
                }
            }
        }));
    }
    drop(acked);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    let _ = killed.set(killed_at);
    drop(cluster.children.remove(&leader));
    let first = tokio::time::timeout(FAILOVER_LIMIT, first_ack.recv()).await;
    first_ack.close();
    for writer in writers {
        writer.abort();
    }
    match first {
        Ok(Some(at)) => Ok(at - killed_at),
        _ => Err(CliError::new(format!(
            "no write was acknowledged within {FAILOVER_LIMIT:?} of the leader's kill"
        ))),
    }
}

/// What each writer task returns: its latencies, failures and first
/// failure.
type WriterResult = (Vec<Duration>, u64, Option<String>);

async fn collect(tasks: Vec<tokio::task::JoinHandle<WriterResult>>, started: Instant) -> Writes {
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        if let Ok((latencies, failed, first)) = task.await {
            all.extend(latencies);
            errors += failed;
            first_error = first_error.or(first);
        }
    }
    summarize(&mut all, errors, first_error, started.elapsed())
}

/// N etcd members of one cluster on loopback, killed when dropped.
struct EtcdCluster {
    _children: Vec<ServerChild>,
    /// Each member's client address, HOST:PORT.
    clients: Vec<String>,
}

impl EtcdCluster {
    fn start(etcd: &str, dir: &Path, members: usize) -> Result<EtcdCluster, CliError> {
        std::fs::create_dir_all(dir)?;
        let mut ports = Vec::new();
        for _ in 0..members {
            ports.push((free_tcp()?, free_tcp()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut children = Vec::new();
        let mut clients = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(etcd)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("e{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "lode-bench"])
                .args(["--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            children.push(ServerChild(child));
            clients.push(format!("127.0.0.1:{client}"));
        }
        Ok(EtcdCluster {
            _children: children,
            clients,
        })
    }

    /// Waits until every member answers healthy.
    async fn healthy(&self, within: Duration) -> Result<(), CliError> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = true;
            for addr in &self.clients {
                let health = http_get(addr, "/health").await.unwrap_or_default();
                all &= health.contains("\"health\":\"true\"");
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CliError::new(format!(
                    "the etcd cluster was not healthy within {within:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Standard base64 with padding (etcd's JSON gateway takes bytes so).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                let digit = ALPHABET.get(((n >> shift) & 63) as usize).copied();
                out.push(char::from(digit.unwrap_or(b'=')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A keep-alive HTTP/1.1 connection: one request at a time.
struct HttpConnection {
    addr: String,
    stream: BufReader<tokio::net::TcpStream>,
}

impl HttpConnection {
    async fn open(addr: &str) -> std::io::Result<HttpConnection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            addr: addr.to_owned(),
            stream: BufReader::new(stream),
        })
    }

    async fn post(&mut self, path: &str, body: &str) -> std::io::Result<String> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.request(head, body.as_bytes()).await
    }

    async fn get(&mut self, path: &str) -> std::io::Result<String> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.request(head, b"").await
    }

    /// Sends a request and reads its answer's body (by Content-Length or
    /// chunked).
    async fn request(&mut self, head: String, body: &[u8]) -> std::io::Result<String> {
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.stream.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut chunk = vec![0u8; n + 2];
                self.stream.read_exact(&mut chunk).await?;
                chunk.truncate(n);
                out.extend(chunk);
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut all = vec![0u8; length.unwrap_or(0)];
            self.stream.read_exact(&mut all).await?;
            out = all;
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// One GET on a fresh connection; the body.
async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut conn = tokio::time::timeout(Duration::from_secs(2), HttpConnection::open(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    tokio::time::timeout(Duration::from_secs(2), conn.get(path))
        .await
        .map_err(|_| std::io::Error::other("no answer"))?
}

fn report(args: &BenchArgs, nodes: usize, runs: &[Run]) {
    let med = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        median(&mut v)
    };
    println!(
        "\nlode bench --cluster {nodes}: {} records in batches of {}, {} in flight; {} single-record writers for {} s; medians of {} runs",
        args.records,
        args.batch,
        args.window,
        args.clients,
        args.seconds,
        runs.len()
    );
    println!(
        "{:<44} {:>14} {:>12} {:>12}",
        "batched ingest (acknowledged = committed)", "records/s", "vs single", "run ratios"
    );
    let single = med(&|r| r.single);
    let cluster = med(&|r| r.cluster);
    let ratio = med(&|r| r.cluster / r.single);
    println!(
        "{:<44} {single:>14.0} {:>11.2}x {:>11.2}x",
        "single node (1 process)", 1.0, 1.0
    );
    println!(
        "{:<44} {cluster:>14.0} {:>11.2}x {ratio:>11.2}x",
        format!("cluster of {nodes}, into the leader"),
        cluster / single
    );
    println!(
        "\n{:<44} {:>14} {:>12}",
        "cpu per record until searchable on every node", "us (median)", "vs single"
    );
    let single = med(&|r| r.single_cpu);
    println!("{:<44} {single:>14.2} {:>11.2}x", "single node", 1.0);
    // Nodes by role: the leader, then the followers.
    let leader = med(&|r| r.cpu.values().find(|c| c.1).map_or(0.0, |c| c.0));
    println!(
        "{:<44} {leader:>14.2} {:>11.2}x",
        "cluster leader",
        leader / single
    );
    for k in 0..nodes.saturating_sub(1) {
        let follower = med(&|r| {
            let mut followers: Vec<f64> = r.cpu.values().filter(|c| !c.1).map(|c| c.0).collect();
            followers.sort_by(f64::total_cmp);
            followers.get(k).copied().unwrap_or(0.0)
        });
        println!(
            "{:<44} {follower:>14.2} {:>11.2}x",
            format!("cluster follower {}", k + 1),
            follower / single
        );
    }
    println!(
        "\n{:<44} {:>12} {:>10} {:>10} {:>8}",
        format!("single-record writes, {} clients", args.clients),
        "writes/s",
        "p50 ms",
        "p99 ms",
        "errors"
    );
    let row = |name: &str, pick: &dyn Fn(&Run) -> Option<Writes>| {
        let have: Vec<Writes> = runs.iter().filter_map(pick).collect();
        if have.is_empty() {
            println!("{name:<44} {:>12}", "not run");
            return None;
        }
        let mut rate: Vec<f64> = have.iter().map(|w| w.per_sec).collect();
        let mut p50: Vec<f64> = have.iter().map(|w| w.p50_ms).collect();
        let mut p99: Vec<f64> = have.iter().map(|w| w.p99_ms).collect();
        let errors: u64 = have.iter().map(|w| w.errors).sum();
        let (rate, p50, p99) = (median(&mut rate), median(&mut p50), median(&mut p99));
        println!("{name:<44} {rate:>12.0} {p50:>10.1} {p99:>10.1} {errors:>8}");
        if let Some(first) = have.iter().find_map(|w| w.first_error.as_ref()) {
            println!("  first error: {first}");
        }
        Some(rate)
    };
    let lode = row(&format!("lode, cluster of {nodes}"), &|r| {
        Some(r.lode_writes.clone())
    });
    if args.burst > 0 {
        row(
            &format!("lode, {} appends in flight at once", args.burst),
            &|r| r.burst.clone(),
        );
    }

    let etcd = row(&format!("etcd {} members", nodes), &|r| {
        r.etcd_writes.clone()
    });
    if let (Some(lode), Some(etcd)) = (lode, etcd) {
        let mut ratios: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some(r.lode_writes.per_sec / r.etcd_writes.as_ref()?.per_sec))
            .collect();
        println!(
            "lode / etcd writes/s: {:.2}x (ratio of medians), {:.2}x (median of run ratios)",
            lode / etcd,
            median(&mut ratios)
        );
    }
    let mut failovers: Vec<f64> = runs
        .iter()
        .filter_map(|r| Some(r.failover?.as_secs_f64() * 1e3))
        .collect();
    if !failovers.is_empty() {
        let max = failovers.iter().copied().fold(0.0, f64::max);
        println!(
            "\n{:<44} {:>9.0} ms median, {max:.0} ms max (of {})",
            "failover: leader killed under writes",
            median(&mut failovers),
            failovers.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
