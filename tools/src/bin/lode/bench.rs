//! `lode bench`: ingest over the binary protocol (TCP and QUIC) from this
//! process into a `lode serve` child process, beside the embedded ingest of
//! the same records in this process; HTTP ingest in JSON lines, Loki's
//! protobuf push and OTLP protobuf (`bench_http`); and query
//! round trips beside the in-process call. Fresh data directories for
//! every measurement; medians over runs, in one invocation.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_client::{Client, ClientOptions, Filter};
use lode_engine::{EncodedBatch, LogRecord};
use lode_server::{Config, Service};
use lode_tools::{Corpus, median};

use crate::CliError;
use crate::bench_http::{self, Format};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Records ingested by each transport in each run.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) records: usize,
    /// Records per batch (binary) or per HTTP request.
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,
    /// Batches in flight at once, embedded and over the wire alike.
    #[arg(long, default_value_t = 8)]
    pub(crate) window: usize,
    /// Connections the binary ingest spreads its batches over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Runs; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Round trips per query for the latency figures.
    #[arg(long, default_value_t = 300)]
    pub(crate) queries: usize,
    /// Concurrent HTTP connections for JSON-lines ingest.
    #[arg(long, default_value_t = 4)]
    pub(crate) http_connections: usize,
    /// Where the data directories go (a temporary directory by default).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Benchmark a cluster of this many nodes on this machine instead:
    /// batched ingest beside one node, CPU per record per node, and
    /// single-record appends from --clients clients beside an etcd cluster
    /// of as many members (if `etcd` is installed), and failover: the
    /// leader killed under writes (3 nodes or more).
    #[arg(long)]
    pub(crate) cluster: Option<usize>,
    /// Concurrent single-record writers, each with its own connection
    /// (--cluster).
    #[arg(long, default_value_t = 1000)]
    pub(crate) clients: usize,
    /// Seconds of single-record writes per system (--cluster).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Single-record appends sent at once, all in flight together, spread
    /// over the nodes on as many connections as the servers' limits need
    /// (--cluster; 0 skips it).
    #[arg(long, default_value_t = 131_072)]
    pub(crate) burst: usize,
    /// Benchmark Grafana's questions instead: the newest 1000 lines of a
    /// selector and a line filter, and the logs volume, over --records
    /// records spread over the last hour, through the Loki API beside
    /// lode's own; --queries rounds (try --records 10000000 --queries 20).
    #[arg(long)]
    pub(crate) grafana: bool,
    /// Benchmark what TLS and a token cost instead: the same records as
    /// JSON lines over HTTP with auth off beside HTTPS with a tenant's
    /// token, CPU per record until searchable, and query round trips.
    #[arg(long, conflicts_with_all = ["cluster", "grafana"])]
    pub(crate) secure: bool,
    /// Benchmark what a record costs until it is searchable and sealed
    /// instead: CPU per record of the whole server process (JSON lines
    /// over HTTP) and of `lode import --data`, and bytes on disk per
    /// record after the seal, beside the JSON and zstd -3 of it.
    #[arg(long, conflicts_with_all = ["cluster", "grafana", "secure"])]
    pub(crate) cost: bool,
    /// Priority of sealing and indexing, embedded and in the server alike:
    /// idle, nice:N or normal (the config key storage.background).
    #[arg(long, default_value = "idle")]
    pub(crate) background: String,
}

/// Queries timed over the wire and in process: name, query, kind.
const QUERIES: [(&str, &str, bool); 4] = [
    ("ping (no work)", "", false),
    ("rare word, top 100", "timed", false),
    ("service + word, top 100", "service:hdfs block", false),
    ("count level:error", "level:error", true),
];

struct Figures {
    embedded: Vec<f64>,
    tcp: Vec<f64>,
    quic: Vec<f64>,
    /// HTTP ingest in each of [`Format::ALL`], with the server's CPU.
    http: [Vec<f64>; 3],
    http_cpu: [Vec<Cpu>; 3],
    /// Batches per WAL group commit, embedded, over tcp and over quic.
    per_commit: [Vec<f64>; 3],
    /// Per query: in-process and over-the-wire times, ms.
    timings: Vec<(Vec<f64>, Vec<f64>)>,
    /// CPU the threads ran while ingesting, embedded, over tcp and over
    /// quic (this process and the server together).
    cpu: [Vec<Cpu>; 3],
}

/// What every benchmark run takes: where its data directories go (a
/// temporary directory, removed when dropped, unless `--dir`), the
/// generated records, and the same records in batches.
pub(crate) struct Workload {
    pub(crate) _temp: Option<TempDir>,
    pub(crate) root: PathBuf,
    pub(crate) records: Arc<Vec<LogRecord>>,
    pub(crate) batches: Arc<Vec<Vec<LogRecord>>>,
}

impl Workload {
    pub(crate) fn new(args: &BenchArgs) -> Result<Workload, CliError> {
        let (temp, root) = match &args.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = TempDir::new()?;
                let root = temp.0.clone();
                (Some(temp), root)
            }
        };
        eprintln!("generating {} records ...", args.records);
        let records = Arc::new(Corpus::new(1).take_records(args.records));
        let batches = Arc::new(
            records
                .chunks(args.batch.max(1))
                .map(<[_]>::to_vec)
                .collect(),
        );
        Ok(Workload {
            _temp: temp,
            root,
            records,
            batches,
        })
    }
}

pub(crate) async fn bench(args: BenchArgs) -> Result<(), CliError> {
    check_args(&args)?;
    if let Some(nodes) = args.cluster {
        return crate::bench_cluster::bench_cluster(&args, nodes).await;
    }
    if args.grafana {
        return crate::bench_grafana::bench_grafana(&args).await;
    }
    if args.secure {
        return crate::bench_secure::bench_secure(&args).await;
    }
    if args.cost {
        return crate::bench_cost::bench_cost(&args).await;
    }
    let Workload {
        _temp,
        root,
        records,
        batches,
    } = Workload::new(&args)?;
    let mut f = Figures {
        embedded: vec![],
        tcp: vec![],
        quic: vec![],
        http: [vec![], vec![], vec![]],
        http_cpu: [vec![], vec![], vec![]],
        per_commit: [vec![], vec![], vec![]],
        timings: vec![(vec![], vec![]); QUERIES.len()],
        cpu: [vec![], vec![], vec![]],
    };
    for run in 0..args.runs.max(1) {
        eprintln!("run {}/{}", run + 1, args.runs);
        let embedded_dir = root.join(format!("embedded-{run}"));
        let service = embedded(&embedded_dir, &batches, &args, &mut f).await?;
        // Each measurement starts on a quiet machine: the embedded index
        // catches up, and the embedded service is closed (its index merges
        // would compete with the server) until the query timings.
        tokio::task::block_in_place(|| {
            service.wait_indexed(Duration::from_secs(600));
            service.close()
        })?;
        let tcp_dir = root.join(format!("tcp-{run}"));
        let (child, line) = start_server(&tcp_dir, ["--listen", "127.0.0.1:0"], &args.background)?;
        let addr = field(&line, "binary (tcp)")?;
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            clients.push(Client::connect_tcp(&addr).await?);
        }
        let before = Cpu::now(Some(child.0.id()));
        let rate = remote_ingest(&clients, &batches, args.window).await?;
        f.cpu[1].push(Cpu::now(Some(child.0.id())).since(&before));
        f.per_commit[1].push(batches_per_commit(&clients).await?);
        f.tcp.push(rate);
        eprintln!("  binary over tcp   {rate:>12.0} records/s");
        let service = open_service(&embedded_dir, &args).await?;
        if let Some(client) = clients.first() {
            latency(&service, client, args.queries, &mut f).await?;
        }
        drop(clients);
        drop(child);
        tokio::task::block_in_place(|| service.close())?;

        let (child, line) = start_server(
            &root.join(format!("quic-{run}")),
            ["--quic", "127.0.0.1:0"],
            &args.background,
        )?;
        let addr: SocketAddr = field(&line, "binary (quic)")?
            .parse()
            .map_err(|e| CliError::new(format!("quic address: {e}")))?;
        let cert = PathBuf::from(field(&line, "cert")?);
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            clients.push(Client::connect_quic(addr, &cert, "localhost").await?);
        }
        let before = Cpu::now(Some(child.0.id()));
        let rate = remote_ingest(&clients, &batches, args.window).await?;
        f.cpu[2].push(Cpu::now(Some(child.0.id())).since(&before));
        f.per_commit[2].push(batches_per_commit(&clients).await?);
        f.quic.push(rate);
        eprintln!("  binary over quic  {rate:>12.0} records/s");
        drop(clients);
        drop(child);

        for (i, format) in Format::ALL.into_iter().enumerate() {
            let dir = root.join(format!("http-{run}-{i}"));
            let (child, line) = start_server(&dir, ["--http", "127.0.0.1:0"], &args.background)?;
            let addr = field(&line, "http")?
                .trim_start_matches("http://")
                .to_owned();
            let before = Cpu::now(Some(child.0.id()));
            let rate = tokio::task::block_in_place(|| {
                bench_http::ingest(
                    format,
                    &bench_http::Endpoint::plain(&addr),
                    &records,
                    args.batch,
                    args.http_connections,
                )
            })?;
            let cpu = Cpu::now(Some(child.0.id())).since(&before).of_server();
            if let (Some(cpus), Some(rates)) = (f.http_cpu.get_mut(i), f.http.get_mut(i)) {
                cpus.push(cpu);
                rates.push(rate);
            }
            eprintln!("  {:<30} {rate:>12.0} records/s", format.name());
            drop(child);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(dir.with_extension("toml"));
        }
        for dir in ["embedded", "tcp", "quic", "http"] {
            let _ = std::fs::remove_dir_all(root.join(format!("{dir}-{run}")));
            let _ = std::fs::remove_file(root.join(format!("{dir}-{run}.toml")));
        }
    }
    report(&args, &mut f);
    Ok(())
}

/// The engine and index of `dir`, opened in this process.
pub(crate) async fn open_service(dir: &Path, args: &BenchArgs) -> Result<Service, CliError> {
    let mut config = Config {
        data: dir.to_owned(),
        ..Config::default()
    };
    config.storage.background.clone_from(&args.background);
    let service = tokio::task::spawn_blocking(move || Service::open(&config))
        .await
        .map_err(|e| CliError::new(e.to_string()))??;
    Ok(service)
}

/// The embedded reference: the same batches through an engine and index
/// opened in this process, `window` appends in flight from one thread.
async fn embedded(
    dir: &Path,
    batches: &Arc<Vec<Vec<LogRecord>>>,
    args: &BenchArgs,
    f: &mut Figures,
) -> Result<Service, CliError> {
    let service = open_service(dir, args).await?;
    let window = args.window.max(1);
    let before = Cpu::now(None);
    let rate = tokio::task::block_in_place(|| -> Result<f64, CliError> {
        let started = Instant::now();
        let mut in_flight: VecDeque<lode_engine::AppendTicket> = VecDeque::new();
        let mut acked = 0u64;
        for batch in batches.iter() {
            if in_flight.len() >= window
                && let Some(ticket) = in_flight.pop_front()
            {
                acked += ticket.wait()?.len();
            }
            in_flight.push_back(service.engine().submit(batch)?);
        }
        for ticket in in_flight {
            acked += ticket.wait()?.len();
        }
        Ok(acked as f64 / started.elapsed().as_secs_f64())
    })?;
    f.cpu[0].push(Cpu::now(None).since(&before));
    let stats = service.engine().stats();
    f.per_commit[0].push(stats.appends as f64 / stats.group_commits.max(1) as f64);
    f.embedded.push(rate);
    eprintln!("  embedded          {rate:>12.0} records/s");
    Ok(service)
}

/// Sends every batch, round robin over `clients`, `window` in flight in
/// all; records per second acknowledged (durable on the server).
pub(crate) async fn remote_ingest(
    clients: &[Client],
    batches: &Arc<Vec<Vec<LogRecord>>>,
    window: usize,
) -> Result<f64, CliError> {
    let started = Instant::now();
    let mut in_flight: VecDeque<lode_client::PendingAppend> = VecDeque::new();
    let mut acked = 0u64;
    for (batch, client) in batches.iter().zip(clients.iter().cycle()) {
        if in_flight.len() >= window.max(1)
            && let Some(pending) = in_flight.pop_front()
        {
            let done = pending.wait().await?;
            acked += done.end - done.start;
        }
        let encoded = EncodedBatch::encode(batch)?;
        in_flight.push_back(client.submit_encoded(encoded).await?);
    }
    for pending in in_flight {
        let done = pending.wait().await?;
        acked += done.end - done.start;
    }
    Ok(acked as f64 / started.elapsed().as_secs_f64())
}

/// Waits until the server `client` talks to holds at least `records`
/// records and its index has them all (a follower's too: it counts what
/// it applied).
pub(crate) async fn wait_searchable(
    client: &Client,
    records: u64,
    within: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + within;
    loop {
        let stats = client.stats().await?;
        if figure(&stats, "records") >= records && figure(&stats, "index_lag") == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::new(format!(
                "not searchable within {within:?}: {} records, index lag {}",
                figure(&stats, "records"),
                figure(&stats, "index_lag")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Batches the server's WAL wrote per group commit (write and fsync).
async fn batches_per_commit(clients: &[Client]) -> Result<f64, CliError> {
    let Some(client) = clients.first() else {
        return Ok(0.0);
    };
    let stats = client.stats().await?;
    Ok(figure(&stats, "wal_appends") as f64 / figure(&stats, "group_commits").max(1) as f64)
}

/// The server's figure `name` among its stats (0 when absent).
fn figure(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}

fn filter(query: &str) -> Filter {
    Filter {
        query: query.to_owned(),
        ..Filter::default()
    }
}

/// Times each query over the wire and in process, alternating.
async fn latency(
    service: &Service,
    client: &Client,
    rounds: usize,
    f: &mut Figures,
) -> Result<(), CliError> {
    // Both sides must have every record searchable first.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let lag = figure(&client.stats().await?, "index_lag");
        if lag == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| service.wait_indexed(Duration::from_secs(300)));
    for ((_, query, is_count), (local_ms, remote_ms)) in QUERIES.iter().zip(f.timings.iter_mut()) {
        for _ in 0..rounds {
            let started = Instant::now();
            match (query.is_empty(), is_count) {
                (true, _) => {
                    client.ping().await?;
                }
                (false, true) => {
                    client.count(filter(query)).await?;
                }
                (false, false) => {
                    client.query(filter(query), 100, None).await?;
                }
            }
            remote_ms.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            match (query.is_empty(), is_count) {
                (true, _) => {}
                (false, true) => {
                    service
                        .count(&lode_server::Caller::everything(), filter(query))
                        .await?;
                }
                (false, false) => {
                    service
                        .query(&lode_server::Caller::everything(), filter(query), 100, None)
                        .await?;
                }
            }
            local_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(())
}

/// Starts `lode serve` on a fresh directory with only the listener asked
/// for; returns the child and what it printed about its listeners.
pub(crate) fn start_server(
    dir: &Path,
    listener: [&str; 2],
    background: &str,
) -> Result<(ServerChild, String), CliError> {
    let mut args = Vec::new();
    for flag in ["--listen", "--quic", "--http", "--syslog"] {
        let value = if flag == listener[0] {
            listener[1]
        } else {
            "off"
        };
        args.extend([flag.to_owned(), value.to_owned()]);
    }
    spawn_serve(dir, &args, &background_config(background))
}

/// A server's config of sealing and indexing at `background` (checked
/// by `check_args`: a plain word).
pub(crate) fn background_config(background: &str) -> String {
    format!("[storage]\nbackground = \"{background}\"\n")
}

/// Starts `lode serve ARGS` on a fresh directory `dir` with the config
/// `config_text` (TOML); returns the child and what it printed about its
/// listeners.
pub(crate) fn spawn_serve(
    dir: &Path,
    args: &[String],
    config_text: &str,
) -> Result<(ServerChild, String), CliError> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.with_extension("toml");
    std::fs::write(&config, config_text)?;
    let mut child = ServerChild(
        Command::new(exe)
            .arg("serve")
            .args(args)
            .arg("--data")
            .arg(dir)
            .arg("--config")
            .arg(&config)
            // openraft's warnings of slow heartbeats under a benchmark's
            // load are not the figures.
            .env("RUST_LOG", "warn,openraft=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| CliError::new("no stdout from the server"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    for line in lines.by_ref() {
        let line = line?;
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("  auth") {
            // The line after its listeners': the server is up.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((child, printed));
        }
    }
    drop(child);
    Err(CliError::new(format!(
        "the server did not start: {printed}"
    )))
}

/// Refuses settings that cannot run: an append holds one of a
/// connection's `max_in_flight` slots until it is acknowledged and waited
/// for, so a window wider than all the connections' slots would wait
/// forever for a slot only its own unread acknowledgements hold.
fn check_args(args: &BenchArgs) -> Result<(), CliError> {
    let slots = args.connections.max(1) * ClientOptions::default().max_in_flight;
    if args.window > slots {
        return Err(CliError::new(format!(
            "--window {} exceeds the {slots} appends {} connection(s) may have in flight \
             ({} each); raise --connections or lower --window",
            args.window,
            args.connections.max(1),
            ClientOptions::default().max_in_flight
        )));
    }
    args.background
        .parse::<lode_engine::Background>()
        .map_err(|e| CliError::new(format!("--background {e}")))?;
    Ok(())
}

/// The value after `name` on the server's listener line.
pub(crate) fn field(printed: &str, name: &str) -> Result<String, CliError> {
    printed
        .lines()
        .filter(|line| line.starts_with("  "))
        .find_map(|line| {
            let at = line.find(name)?;
            line.get(at + name.len()..)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .ok_or_else(|| CliError::new(format!("the server did not print '{name}': {printed}")))
}

/// CPU per record while ingesting, split by scheduling class: on a
/// machine where foreground threads fill the cores, a transport's rate is
/// bound by cores / foreground CPU per record.
fn report_cpu(args: &BenchArgs, f: &Figures) {
    println!(
        "\n{:<40} {:>12} {:>12} {:>12}  busiest foreground threads (last run)",
        "cpu per record (median us)", "processes", "foreground", "idle"
    );
    let names = [
        "embedded",
        "binary over tcp (both)",
        "binary over quic (both)",
    ];
    for (name, runs) in names.iter().zip(&f.cpu) {
        let mut split: [Vec<f64>; 3] = [vec![], vec![], vec![]];
        for run in runs {
            for (into, us) in split.iter_mut().zip(run.per_record(args.records)) {
                into.push(us);
            }
        }
        let [all, fg, idle] = split.map(|mut v| median(&mut v));
        let busiest = runs
            .last()
            .map_or(String::new(), |c| c.busiest(args.records, 4));
        println!("{name:<40} {all:>12.3} {fg:>12.3} {idle:>12.3}  {busiest}");
    }
    println!(
        "(processes: their whole CPU, threads that ended included; foreground and\n\
         idle: the live threads, idle ones SCHED_IDLE, sealing and indexing with\n\
         --background idle; over the wire: this process, the client, and the\n\
         server together; all during the ingest, not until searchable: see --cost)"
    );
}

/// A `lode serve` child, killed when dropped (on errors too).
pub(crate) struct ServerChild(pub(crate) Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Result<TempDir, CliError> {
        let dir = std::env::temp_dir().join(format!("lode-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report(args: &BenchArgs, f: &mut Figures) {
    // Per-run ratios first: `median` sorts its argument.
    let ratios = |rates: &[f64]| -> f64 {
        let mut r: Vec<f64> = rates
            .iter()
            .zip(&f.embedded)
            .map(|(rate, embedded)| rate / embedded)
            .collect();
        median(&mut r)
    };
    let run_ratios = [1.0, ratios(&f.tcp), ratios(&f.quic), ratios(&f.http[0])];
    let http = http_rows(args, f);
    let embedded = median(&mut f.embedded);
    println!(
        "\nlode bench: {} records, batches of {}, {} in flight, medians of {} runs, background {}",
        args.records, args.batch, args.window, args.runs, args.background
    );
    println!(
        "{:<40} {:>14} {:>12} {:>12} {:>12}",
        "ingest (acknowledged = durable)", "records/s", "vs embedded", "run ratios", "per commit"
    );
    let rows = [
        ("embedded (engine + index, in process)", embedded),
        ("binary protocol over tcp (2 processes)", median(&mut f.tcp)),
        (
            "binary protocol over quic (2 processes)",
            median(&mut f.quic),
        ),
        ("http json lines", median(&mut f.http[0].clone())),
    ];
    let per_commit: Vec<String> = f
        .per_commit
        .iter_mut()
        .map(|v| format!("{:.1}", median(v)))
        .chain(["-".to_owned()])
        .collect();
    for (((name, rate), run_ratio), per_commit) in rows.into_iter().zip(run_ratios).zip(per_commit)
    {
        println!(
            "{name:<40} {rate:>14.0} {:>11.2}x {run_ratio:>11.2}x {per_commit:>12}",
            rate / embedded
        );
    }
    println!(
        "(vs embedded: ratio of the medians; run ratios: median over runs of\n\
         each run's rate over the embedded rate of the same run; per commit:\n\
         batches the WAL wrote per group commit, a write and an fsync)"
    );
    report_cpu(args, f);
    println!(
        "\n{:<40} {:>12} {:>12} {:>12}",
        "query round trip (median ms)", "in process", "over tcp", "added"
    );
    for ((name, _, _), (local_ms, remote_ms)) in QUERIES.iter().zip(f.timings.iter_mut()) {
        let local = median(local_ms);
        let remote = median(remote_ms);
        println!(
            "{name:<40} {local:>12.3} {remote:>12.3} {:>12.3}",
            remote - local
        );
    }
    println!(
        "\n{:<40} {:>14} {:>12} {:>14}",
        "http ingest, by format", "records/s", "vs tcp", "server us/rec"
    );
    for row in http {
        println!("{row}");
    }
    println!(
        "(vs tcp: median over runs of each run's rate over the binary protocol's\n\
         over tcp in the same run; server us/rec: the server process's CPU per\n\
         record during the ingest, every thread, ended ones included)"
    );
}

/// One line per HTTP format: rate, its ratio to the binary protocol over
/// tcp run by run, and the server's CPU per record.
fn http_rows(args: &BenchArgs, f: &Figures) -> Vec<String> {
    Format::ALL
        .iter()
        .zip(f.http.iter().zip(&f.http_cpu))
        .map(|(format, (rates, cpu))| {
            let mut ratios: Vec<f64> = rates.iter().zip(&f.tcp).map(|(r, t)| r / t).collect();
            let mut us: Vec<f64> = cpu.iter().map(|c| c.per_record(args.records)[0]).collect();
            format!(
                "{:<40} {:>14.0} {:>11.2}x {:>14.3}",
                format.name(),
                median(&mut rates.clone()),
                median(&mut ratios),
                median(&mut us)
            )
        })
        .collect()
}

/// CPU time the threads of some processes ran, per thread name (digits
/// trimmed, the server's prefixed with `server `) and scheduling class,
/// from `/proc/PID/task/TID/schedstat` (ns on a CPU) and `stat`; and each
/// process's whole CPU time (`/proc/PID/stat`), which also counts the
/// threads that ended (tantivy's indexing threads end at every commit).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cpu {
    pub(crate) threads: HashMap<(String, bool), u64>,
    /// Per process, by the prefix of its threads' names.
    pub(crate) processes: HashMap<String, u64>,
}

/// `SCHED_IDLE`: the policy of sealing and indexing (`--background idle`).
const SCHED_IDLE: u32 = 5;

impl Cpu {
    /// The CPU time so far of this process's threads and those of
    /// `server` (a child process).
    pub(crate) fn now(server: Option<u32>) -> Cpu {
        let mut cpu = Cpu::default();
        cpu.add(std::process::id(), "");
        if let Some(pid) = server {
            cpu.add(pid, "server ");
        }
        cpu
    }

    fn add(&mut self, pid: u32, prefix: &str) {
        if let Ok(ns) = process_cpu_ns(Some(pid)) {
            self.processes.insert(prefix.to_owned(), ns);
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let read = |file: &str| std::fs::read_to_string(path.join(file)).ok();
            let (Some(schedstat), Some(stat)) = (read("schedstat"), read("stat")) else {
                continue; // the thread ended meanwhile
            };
            if let Some((name, idle, ns)) = parse_thread(&stat, &schedstat) {
                *self
                    .threads
                    .entry((format!("{prefix}{name}"), idle))
                    .or_insert(0) += ns;
            }
        }
    }

    /// Only the server's threads.
    pub(crate) fn of_server(self) -> Cpu {
        let server = |name: &String| name.starts_with("server ");
        Cpu {
            threads: self
                .threads
                .into_iter()
                .filter(|((name, _), _)| server(name))
                .collect(),
            processes: self
                .processes
                .into_iter()
                .filter(|(name, _)| server(name))
                .collect(),
        }
    }

    /// What ran since `before` (a thread that ended in between counts
    /// nothing among the threads, but does in its process's total).
    pub(crate) fn since(&self, before: &Cpu) -> Cpu {
        fn minus<K: Clone + Eq + std::hash::Hash>(
            now: &HashMap<K, u64>,
            before: &HashMap<K, u64>,
        ) -> HashMap<K, u64> {
            now.iter()
                .map(|(key, &ns)| {
                    let earlier = before.get(key).copied().unwrap_or(0);
                    (key.clone(), ns.saturating_sub(earlier))
                })
                .collect()
        }
        Cpu {
            threads: minus(&self.threads, &before.threads),
            processes: minus(&self.processes, &before.processes),
        }
    }

    /// Microseconds per record: of the whole processes (threads that
    /// ended included), of the live threads not idle, of the idle ones.
    pub(crate) fn per_record(&self, records: usize) -> [f64; 3] {
        let us = |idle: bool| {
            let ns: u64 = self
                .threads
                .iter()
                .filter(|((_, i), _)| *i == idle)
                .map(|(_, ns)| ns)
                .sum();
            us_per_record(ns, records)
        };
        let all: u64 = self.processes.values().sum();
        [us_per_record(all, records), us(false), us(true)]
    }

    /// The busiest threads not idle, with microseconds per record.
    fn busiest(&self, records: usize, n: usize) -> String {
        let mut threads: Vec<(&str, u64)> = self
            .threads
            .iter()
            .filter(|((_, idle), _)| !idle)
            .map(|((name, _), ns)| (name.as_str(), *ns))
            .collect();
        threads.sort_by_key(|&(_, ns)| std::cmp::Reverse(ns));
        let shown: Vec<String> = threads
            .iter()
            .take(n)
            .map(|(name, ns)| format!("{name} {:.2}", us_per_record(*ns, records)))
            .collect();
        shown.join(", ")
    }
}

/// CPU time of a whole process so far (this one for `None`), threads
/// that ended included, from `/proc/PID/stat` (utime + stime, in clock
/// ticks of 10 ms).
pub(crate) fn process_cpu_ns(pid: Option<u32>) -> Result<u64, CliError> {
    let path = pid.map_or("/proc/self/stat".to_owned(), |pid| {
        format!("/proc/{pid}/stat")
    });
    // After the name: state is field 3; utime and stime are 14 and 15.
    stat_ticks_ns(&path, 11)
}

/// CPU time of every child process this one has waited for, threads
/// included (`cutime` + `cstime` of `/proc/self/stat`).
pub(crate) fn children_cpu_ns() -> Result<u64, CliError> {
    stat_ticks_ns("/proc/self/stat", 13)
}

/// The sum of the two clock-tick fields of a `/proc` `stat` file that
/// start at `at` (counted from 0 after the name: the state is 0), in ns.
fn stat_ticks_ns(path: &str, at: usize) -> Result<u64, CliError> {
    let stat = std::fs::read_to_string(path)?;
    let after_name = stat
        .rfind(')')
        .and_then(|at| stat.get(at + 2..))
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (ticks(at), ticks(at + 1)) {
        (Some(user), Some(system)) => Ok((user + system) * 10_000_000),
        _ => Err(CliError::new(format!("cannot read {path}"))),
    }
}

pub(crate) fn us_per_record(ns: u64, records: usize) -> f64 {
    ns as f64 / 1e3 / records.max(1) as f64
}

/// A thread's name (trailing digits trimmed), whether it is `SCHED_IDLE`,
/// and its ns on a CPU, from its `/proc` `stat` ("tid (comm) state ...",
/// where the name may hold spaces and parentheses) and `schedstat`.
fn parse_thread(stat: &str, schedstat: &str) -> Option<(String, bool, u64)> {
    let ns = schedstat.split_whitespace().next()?.parse().ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?;
    // The policy is the 41st field, the 39th after the name.
    let policy: u32 = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(38)?
        .parse()
        .ok()?;
    let name = name.trim_end_matches(|c: char| c.is_ascii_digit());
    Some((name.to_owned(), policy == SCHED_IDLE, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_lines_parse() {
        // Fields after the name: state, then 37 more, then the policy.
        let after: Vec<String> = (0..38).map(|i| i.to_string()).collect();
        let stat = format!("4242 (a) b (c7) S {} 5 0 0", after[1..].join(" "));
        assert_eq!(
            parse_thread(&stat, "123456 10 20\n"),
            Some(("a) b (c".to_owned(), true, 123_456))
        );
        let stat = format!("4242 (lode-writer) S {} 0 0 0", after[1..].join(" "));
        assert_eq!(
            parse_thread(&stat, "9 1 1"),
            Some(("lode-writer".to_owned(), false, 9))
        );
        assert_eq!(parse_thread("4242 (x) S 1 2", "9 1 1"), None);
        assert_eq!(parse_thread(&stat, ""), None);
    }

    #[test]
    fn this_process_has_run() {
        // Spins until the threads' accounting shows 20 ms of CPU: on a busy
        // machine that takes longer than 20 ms of wall time. Broken
        // accounting never gets there and fails at the wall limit.
        let spin = Instant::now();
        let (all, foreground, idle) = loop {
            std::hint::black_box(0);
            let [all, foreground, idle] = Cpu::now(None).per_record(1);
            if foreground + idle >= 20_000.0 || spin.elapsed() > Duration::from_secs(60) {
                break (all, foreground, idle);
            }
        };
        assert!(foreground + idle >= 20_000.0, "{foreground} + {idle} us");
        // The process's total counts the threads that ended too, in 10 ms
        // ticks of user and of system time, each rounded down.
        assert!(all + 20_000.0 >= foreground + idle, "{all} us");
    }
}
