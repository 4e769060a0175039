//! The `lode` command line: run a server, send it logs, search them.

mod api;
mod backend;
mod bench;
mod bench_cluster;
mod bench_cost;
mod bench_grafana;
mod bench_http;
mod bench_secure;
mod bulk;
mod cluster;
mod output;
mod token;

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use api::Api;
use backend::{Backend, Target};
use clap::{Parser, Subcommand};
use lode_client::Filter;
use lode_engine::{Engine, LogRecord, Options, now_ns};
use lode_protocol::json::{Shape, parse_record};
use lode_server::{Config, Server};
use lode_tools::{Corpus, format_rfc3339};
use output::{Format, Printer};

/// Records are built on parser threads and freed on encoder and writer
/// threads; glibc's malloc spent a third of `lode import`'s CPU on that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h v3, as vendored by the
/// pinned libmimalloc-sys 0.1.49; the crate exports no name for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's `mi_option_allow_thp`, likewise.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Freed pages are given back to the OS after a second instead of 10 ms:
/// import frees and reallocates large buffers (chunks, batches) faster
/// than that, and refaulting them cost 11% of its CPU in `clear_page`
/// (perf; 1M lines: 1.09-1.14 s -> 0.81-0.94 s).
///
/// No transparent huge pages: mimalloc asks for them on its arenas, and
/// a page purged then touched again faults back as 2 MiB zeroed at once.
/// The option alone is not enough: mimalloc reads it when it starts,
/// before `main`, and had already advised its first arena for huge
/// pages (16 MiB of a fresh server's 40 MiB were huge pages, and
/// `clear_page_erms` under `do_huge_pmd_anonymous_page` was still a
/// third of a cluster node's async workers' CPU, perf). So the process
/// turns THP off for itself (`PR_SET_THP_DISABLE`, which the kernel
/// checks at each fault, also in mappings made before).
/// A cluster leader under single-record writes spent 20% of its CPU in
/// `clear_page_erms` under `do_huge_pmd_anonymous_page` (perf); without
/// them its CPU per record in batched ingest fell from 3.1-4.0 us to
/// 1.8-2.3 us, and a single node's from 1.0-1.4 us to 0.4-0.9 us
/// (`lode bench --cluster 3`, two runs each, alternating).
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mi_option_set only stores an integer option; it is called
    // once, before the threads that allocate are started.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 1000);
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
    }
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integers only and
    // changes nothing but this process's THP flag.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// lode: a log database. Takes in logs over its binary protocol, HTTP
/// (JSON lines, Elasticsearch _bulk) and syslog; finds them again by words,
/// phrases and fields; follows them live.
///
/// Start a server (data in ./lode-data, loopback only):
///   lode serve
/// Send it logs, one JSON object per line:
///   echo '{"level":"error","service":"api","message":"upstream timed out"}' | lode ingest
///   loadgen -n 100000 | lode ingest
/// Search, newest first:
///   lode query 'timed out' --since 1h
///   lode query 'service:api level:>=warn "connection refused"' --limit 20
///   lode count 'level:error' --since 24h
///   lode tail 'service:api'                 follow new records
///   lode stats
/// Without a server, open a data directory in this process:
///   lode query 'error' --data ./lode-data
/// Move logs in and out in bulk:
///   lode import --data ./lode-data app.log.gz syslog.zst   formats detected
///   lode export 'level:error' --since 24h -o errors.jsonl.zst
///
/// Query language: words (all must appear), "a phrase", OR, NOT or -word,
/// parentheses, field:value on level, service, host and attrs.KEY,
/// level:>=warn, prefixes conn*, and * for everything.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server: binary protocol (TCP and QUIC), HTTP and syslog.
    ///
    /// Listeners take HOST:PORT, or `off`. Flags override the config file.
    /// A cluster node also takes its id, every initial node's peer address
    /// and the certificates `lode cluster init` made:
    ///   lode serve --node-id 1 --peers 1=127.0.0.1:7410,2=127.0.0.1:7420,3=127.0.0.1:7430 \
    ///     --cluster-tls ./cluster-tls --data d1 --listen 127.0.0.1:7400 ...
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Set up and inspect a cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Make, list and revoke the tokens clients act with (admin).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Make certificates for TLS on the client listeners: a server's, and
    /// clients' of a tenant (journald's upload, syslog over TLS), signed
    /// by a CA made in the same directory.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Send JSON lines (a file, or - for standard input) to lode.
    ///
    /// Each line: {"ts":"2026-01-01T10:00:00Z" or ns, "level", "service",
    /// "host", "attrs":{...}, "message"}; other fields become attrs.
    /// Lines are parsed on one thread, as they come (a stream, a pipe).
    /// For large files or other formats, use
    /// `lode import`, which parses on every core:
    ///   lode import --server 127.0.0.1:7400 big.jsonl.zst
    #[command(verbatim_doc_comment)]
    Ingest {
        /// File of JSON lines; - or nothing reads standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// Records per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Print the newest records matching a query.
    Query {
        /// The query; empty or * for everything.
        #[arg(default_value = "*")]
        query: String,
        #[command(flatten)]
        range: Range,
        /// Most records to print.
        #[arg(long, short = 'n', default_value_t = 100)]
        limit: u64,
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Default)]
        output: Format,
        #[command(flatten)]
        target: Target,
    },
    /// Count the records matching a query.
    Count {
        #[arg(default_value = "*")]
        query: String,
        #[command(flatten)]
        range: Range,
        #[command(flatten)]
        target: Target,
    },
    /// The most frequent values of a field among the records matching a
    /// query, with their counts.
    ///
    ///   lode top service 'level:>=warn' --since 1h
    ///   lode top host -k 20
    #[command(verbatim_doc_comment)]
    Top {
        /// level, service or host.
        field: String,
        #[arg(default_value = "*")]
        query: String,
        /// How many values.
        #[arg(long, short = 'k', default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        range: Range,
        #[command(flatten)]
        target: Target,
    },
    /// Records matching a query over time, as a bar chart.
    ///
    ///   lode histogram 'level:error' --since 24h --width 1h
    #[command(verbatim_doc_comment)]
    Histogram {
        #[arg(default_value = "*")]
        query: String,
        /// Bucket width: 30s, 5m, 1h ... (default: about 60 buckets over
        /// the records' span).
        #[arg(long)]
        width: Option<String>,
        #[command(flatten)]
        range: Range,
        #[command(flatten)]
        target: Target,
    },
    /// Follow new records matching a query as they arrive (Ctrl-C stops).
    Tail {
        #[arg(default_value = "*")]
        query: String,
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Default)]
        output: Format,
        #[command(flatten)]
        target: Target,
    },
    /// Print the figures of a server or data directory.
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// Import log files (plain, .gz, .zst, or - for standard input).
    ///
    ///   lode import --data ./lode-data app.log.gz             offline, fastest
    ///   lode import --format log4j --multiline app.log         to the running server
    ///   lode import -f 'regex:^(?P<ts>\S+) (?P<level>\w+) (?P<message>.*)$' x.log
    ///   lode import -f jsonl --ts-field time --msg-field text events.jsonl
    #[command(verbatim_doc_comment)]
    Import(bulk::ImportArgs),
    /// Export records (a query and time range) as JSON lines or raw text.
    ///
    ///   lode export --data ./lode-data -o all.jsonl.zst
    ///   lode export 'level:error' --since 24h -f raw
    #[command(verbatim_doc_comment)]
    Export(bulk::ExportArgs),
    /// Measure ingest over the binary protocol (TCP, QUIC) and HTTP (JSON
    /// lines, Loki protobuf push, OTLP protobuf) beside embedded ingest,
    /// and query round trips beside in-process calls. Also prints the CPU
    /// time per record that every thread ran during each ingest (this
    /// process and the server), foreground and idle.
    ///
    ///   lode bench                       1,000,000 records, 3 runs
    ///   lode bench --records 200000 --runs 5
    ///   lode bench --runs 5 --window 16 --connections 2   the README's figures
    ///   lode bench --grafana --records 10000000 --queries 20   Grafana's questions, Loki API beside lode's
    ///   lode bench --secure --runs 5     HTTPS with a tenant's token beside plain HTTP
    ///   lode bench --cost                CPU and bytes per record until searchable and sealed
    #[command(verbatim_doc_comment)]
    Bench(bench::BenchArgs),
    /// Store generated sample logs into a data directory (no server).
    Demo {
        /// Data directory (created if missing).
        #[arg(long, default_value = "./lode-data")]
        data: PathBuf,
        /// Records to store.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Seed of the sample generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Range {
    /// Only records at or after this: RFC 3339, or a duration ago (15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Config file (TOML); see the README for its keys.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory [default: ./lode-data].
    #[arg(long, short = 'd')]
    data: Option<PathBuf>,
    /// Binary protocol over TCP [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<String>,
    /// Binary protocol over QUIC [default: 127.0.0.1:7400 (UDP)].
    #[arg(long)]
    quic: Option<String>,
    /// HTTP: JSON API, Elasticsearch _bulk, /metrics [default: 127.0.0.1:7401].
    #[arg(long)]
    http: Option<String>,
    /// Syslog over TCP and UDP [default: 127.0.0.1:7514].
    #[arg(long)]
    syslog: Option<String>,
    /// This node's id in its cluster (with --peers).
    #[arg(long, requires = "peers")]
    node_id: Option<u64>,
    /// Every initial node of the cluster, ID=HOST:PORT (peer addresses,
    /// QUIC), comma-separated, this node included. Read only when the
    /// node first starts: members then come and go through the log.
    #[arg(long, value_delimiter = ',', requires = "node_id")]
    peers: Vec<String>,
    /// Join a running cluster rather than form one: --peers gives only
    /// this node's own address, and `lode cluster add` on the leader makes
    /// it a member.
    #[arg(long, requires = "node_id")]
    join: bool,
    /// Directory of the cluster CA and node certificates
    /// [default: ./cluster-tls].
    #[arg(long)]
    cluster_tls: Option<PathBuf>,
    /// Whether clients must present a token: `required`, `off`, or
    /// `auto` (required as soon as a client listener binds beyond
    /// loopback) [default: auto, or the config's auth.mode].
    #[arg(long, value_parser = ["auto", "required", "off"])]
    auth: Option<String>,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// A server certificate (DIR/server.pem, DIR/server-key.pem) valid for
    /// the names and addresses clients reach it by, and loopback; then
    /// `[tls] cert`, `key` name them and clients trust DIR/ca.pem.
    ///
    ///   lode cert server --name logs.example.com,10.0.0.5 --dir ./lode-tls
    #[command(verbatim_doc_comment)]
    Server {
        /// Host names and IP addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        name: Vec<String>,
        #[arg(long, default_value = "./lode-tls")]
        dir: PathBuf,
    },
    /// A client certificate of a tenant (DIR/client-NAME.pem and -key.pem):
    /// with `[tls] client_ca = "DIR/ca.pem"`, a client presenting it writes
    /// that tenant's records without a token (systemd-journal-upload's
    /// --cert, an RFC 5425 syslog sender).
    ///
    ///   lode cert client --tenant team-a --dir ./lode-tls
    #[command(verbatim_doc_comment)]
    Client {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "./lode-tls")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Make a cluster CA and one certificate per node (mutual TLS between
    /// nodes): DIR/ca.pem, DIR/ca-key.pem, DIR/node-ID.pem, DIR/node-ID-key.pem.
    /// Give each node its own pair and ca.pem; keep ca-key.pem elsewhere.
    ///
    ///   lode cluster init --nodes 1=10.0.0.1,2=10.0.0.2,3=10.0.0.3 --dir ./cluster-tls
    #[command(verbatim_doc_comment)]
    Init {
        /// Nodes as ID or ID=NAME (a host name or IP address the node's
        /// certificate is also valid for), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[arg(long, default_value = "./cluster-tls")]
        dir: PathBuf,
    },
    /// Issue a certificate for a node joining the cluster, with the CA
    /// `lode cluster init` made.
    ///
    ///   lode cluster cert --node 4=10.0.0.4 --dir ./cluster-tls
    #[command(verbatim_doc_comment)]
    Cert {
        /// The node as ID or ID=NAME (a host name or IP address the
        /// certificate is also valid for).
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "./cluster-tls")]
        dir: PathBuf,
    },
    /// Add a node: it joins as a learner, receives the log, and becomes a
    /// voter once it has caught up. Start it first with
    /// `lode serve --join --node-id ID --peers ID=HOST:PORT ...`.
    ///
    ///   lode cluster add 4 10.0.0.4:7410 --http 10.0.0.1:7401,10.0.0.2:7401
    #[command(verbatim_doc_comment)]
    Add {
        /// The new node's id.
        node: u64,
        /// Its peer address (QUIC), HOST:PORT.
        addr: String,
        #[command(flatten)]
        api: Api,
    },
    /// Remove a node from the cluster (a voter or a learner). Removing the
    /// leader makes it step down once the change is committed.
    ///
    ///   lode cluster remove 3 --http 10.0.0.1:7401,10.0.0.2:7401
    #[command(verbatim_doc_comment)]
    Remove {
        /// The node to remove.
        node: u64,
        #[command(flatten)]
        api: Api,
    },
    /// Each node's role, term, leader and indexes, and each follower's lag,
    /// as the nodes' HTTP APIs report them.
    ///
    ///   lode cluster status --http 10.0.0.1:7401,10.0.0.2:7401,10.0.0.3:7401
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        api: Api,
    },
    /// Check that the nodes hold the same log: each hashes its entries up
    /// to the index every node has applied, by ranges; any range that
    /// differs is named.
    ///
    ///   lode cluster verify --http 10.0.0.1:7401,10.0.0.2:7401,10.0.0.3:7401
    #[command(verbatim_doc_comment)]
    Verify {
        #[command(flatten)]
        api: Api,
    },
    /// Hand leadership to another node (asked of the current leader).
    TransferLeader {
        /// The node to lead.
        node: u64,
        #[command(flatten)]
        api: Api,
    },
}

/// An error for the user: printed as `lode: MESSAGE`.
#[derive(Debug)]
pub(crate) struct CliError(String);

impl CliError {
    pub(crate) fn new(message: impl Into<String>) -> CliError {
        CliError(message.into())
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> CliError {
        CliError(e.to_string())
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lode: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(message)) if message.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(CliError(message)) => {
            eprintln!("lode: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Cluster(ClusterCommand::Init { nodes, dir }) => cluster_init(&nodes, &dir),
        Command::Cluster(ClusterCommand::Cert { node, dir }) => cluster_cert(&node, &dir),
        Command::Cluster(ClusterCommand::Add { node, addr, api }) => {
            cluster::add(node, &addr, &api)
        }
        Command::Cluster(ClusterCommand::Remove { node, api }) => cluster::remove(node, &api),
        Command::Cluster(ClusterCommand::Status { api }) => cluster::status(&api),
        Command::Cluster(ClusterCommand::Verify { api }) => cluster::verify(&api),
        Command::Cluster(ClusterCommand::TransferLeader { node, api }) => {
            cluster::transfer_leader(node, &api)
        }
        Command::Token(command) => token::run(command),
        Command::Cert(CertCommand::Server { name, dir }) => {
            let files = lode_server::tls::issue_server(&dir, &name)?;
            println!("server certificate {}", files.cert.display());
            println!("its key            {} (0600)", files.key.display());
            println!(
                "the CA             {} (clients trust this; keep ca-key.pem off the servers)",
                dir.join("ca.pem").display()
            );
            println!(
                "in lode.toml:\n  [tls]\n  cert = \"{}\"\n  key = \"{}\"",
                files.cert.display(),
                files.key.display()
            );
            Ok(())
        }
        Command::Cert(CertCommand::Client { tenant, dir }) => {
            let files = lode_server::tls::issue_client(&dir, &tenant)?;
            println!(
                "client certificate of tenant {tenant}: {}",
                files.cert.display()
            );
            println!(
                "its key                       {} (0600)",
                files.key.display()
            );
            println!(
                "servers accept it with:\n  [tls]\n  client_ca = \"{}\"",
                dir.join("ca.pem").display()
            );
            Ok(())
        }
        Command::Ingest {
            file,
            batch,
            target,
        } => ingest(&file, batch.max(1), &target).await,
        Command::Query {
            query,
            range,
            limit,
            output,
            target,
        } => {
            let backend = Backend::connect(&target).await?;
            let result = print_query(&backend, filter(query, &range)?, limit, output).await;
            backend.close()?;
            result
        }
        Command::Count {
            query,
            range,
            target,
        } => {
            let backend = Backend::connect(&target).await?;
            println!("{}", backend.count(filter(query, &range)?).await?);
            backend.close()
        }
        Command::Top {
            field,
            query,
            k,
            range,
            target,
        } => {
            let backend = Backend::connect(&target).await?;
            let mut top = backend.top(filter(query, &range)?, &field, k).await?;
            for (value, _) in &mut top {
                if value.is_empty() {
                    "(none)".clone_into(value);
                }
            }
            print!("{}", output::bars(&top));
            backend.close()
        }
        Command::Histogram {
            query,
            width,
            range,
            target,
        } => {
            let width = width.as_deref().map(bucket_width).transpose()?;
            let backend = Backend::connect(&target).await?;
            let h = backend.histogram(filter(query, &range)?, width).await?;
            let rows: Vec<(String, u64)> = h
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        lode_engine::format_rfc3339(h.start + i as i64 * h.width),
                        *n,
                    )
                })
                .collect();
            print!("{}", output::bars(&rows));
            backend.close()
        }
        Command::Tail {
            query,
            output,
            target,
        } => {
            let backend = Backend::connect(&target).await?;
            let mut printer = Printer::new(output);
            backend
                .tail(&query, |record| {
                    printer.print(record)?;
                    printer.flush()
                })
                .await
        }
        Command::Stats { target } => {
            let backend = Backend::connect(&target).await?;
            let figures = backend.stats().await?;
            let width = figures.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (name, value) in figures {
                println!("{name:<width$}  {value}");
            }
            backend.close()
        }
        Command::Bench(args) => bench::bench(args).await,
        Command::Import(args) => bulk::import_command(args).await,
        Command::Export(args) => bulk::export_command(args).await,
        Command::Demo {
            data,
            records,
            seed,
        } => demo(&data, records, seed),
    }
}

pub(crate) fn time_range(range: &Range) -> Result<(Option<i64>, Option<i64>), CliError> {
    let time = |text: &Option<String>, name: &str| {
        text.as_deref()
            .map(|t| {
                lode_index::parse_time(t, now_ns())
                    .map_err(|e| CliError::new(format!("--{name}: {e}")))
            })
            .transpose()
    };
    Ok((time(&range.since, "since")?, time(&range.until, "until")?))
}

/// A bucket width: 30s, 5m, 1h, or ns.
fn bucket_width(text: &str) -> Result<i64, CliError> {
    if let Ok(ns) = text.parse::<i64>() {
        return Ok(ns);
    }
    // A relative time is that long before 0: its negation is the width.
    lode_index::parse_time(text, 0)
        .map(|t| -t)
        .ok()
        .filter(|w| *w > 0)
        .ok_or_else(|| {
            CliError::new(format!(
                "--width {text}: expected a duration like 30s, 5m, 1h"
            ))
        })
}

fn filter(query: String, range: &Range) -> Result<Filter, CliError> {
    let (since, until) = time_range(range)?;
    Ok(Filter {
        query,
        since,
        until,
    })
}

async fn print_query(
    backend: &Backend,
    filter: Filter,
    limit: u64,
    format: Format,
) -> Result<(), CliError> {
    let mut printer = Printer::new(format);
    let mut left = limit;
    let mut cursor = None;
    while left > 0 {
        let page_size = left.min(1000) as u32;
        let page = backend.query(filter.clone(), page_size, cursor).await?;
        for record in &page.records {
            printer.print(record)?;
        }
        left = left.saturating_sub(page.records.len() as u64);
        match page.next_cursor {
            Some(next) if !page.records.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    Ok(printer.flush()?)
}

/// Reads JSON lines and sends them in batches; malformed lines are
/// reported with their numbers and skipped.
async fn ingest(file: &std::path::Path, batch: usize, target: &Target) -> Result<(), CliError> {
    let reader: Box<dyn BufRead + Send> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let opened = std::fs::File::open(file)
            .map_err(|e| CliError::new(format!("{}: {e}", file.display())))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, opened))
    };
    let backend = Backend::connect(target).await?;
    let started = Instant::now();
    let shape = Shape::default();
    let mut rejected = 0u64;
    let mut pending: Vec<LogRecord> = Vec::with_capacity(batch);
    let mut batcher = backend.batcher(batch).await?;
    let mut sent_local = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| CliError::new(format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_record(&line, &shape, now_ns()) {
            Ok((record, _)) => match &mut batcher {
                Some(batcher) => batcher.push(record).await?,
                None => {
                    pending.push(record);
                    if pending.len() >= batch {
                        sent_local += backend.append(std::mem::take(&mut pending)).await?;
                    }
                }
            },
            Err(error) => {
                rejected += 1;
                if rejected <= 10 {
                    eprintln!("lode: line {}: {error}", i + 1);
                }
            }
        }
    }
    let durable = match batcher {
        Some(batcher) => batcher.finish().await?,
        None => sent_local + backend.append(pending).await?,
    };
    let elapsed = started.elapsed();
    if std::io::stderr().is_terminal() || rejected > 0 {
        eprintln!(
            "ingested {durable} records in {elapsed:.2?} ({:.0} records/s){}",
            durable as f64 / elapsed.as_secs_f64().max(1e-9),
            if rejected > 0 {
                format!(", {rejected} lines rejected")
            } else {
                String::new()
            }
        );
    }
    backend.close()?;
    if rejected > 0 {
        return Err(CliError::new(format!("{rejected} lines were not records")));
    }
    Ok(())
}

fn listener(
    flag: &Option<String>,
    current: Option<SocketAddr>,
    name: &str,
) -> Result<Option<SocketAddr>, CliError> {
    match flag.as_deref() {
        None => Ok(current),
        Some("off") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| {
            CliError::new(format!("--{name} {text}: {e} (expected HOST:PORT or off)"))
        }),
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(data) = &args.data {
        config.data = data.clone();
    }
    if let Some(mode) = &args.auth {
        config.auth.mode = mode.clone();
    }
    config.listen = listener(&args.listen, config.listen, "listen")?;
    config.quic = listener(&args.quic, config.quic, "quic")?;
    config.http = listener(&args.http, config.http, "http")?;
    config.syslog = listener(&args.syslog, config.syslog, "syslog")?;
    if let Some(node_id) = args.node_id {
        config.cluster = Some(lode_server::Cluster {
            node_id,
            peers: args.peers.clone(),
            tls_dir: args
                .cluster_tls
                .clone()
                .unwrap_or_else(|| PathBuf::from("./cluster-tls")),
            heartbeat_ms: lode_server::HEARTBEAT_MS,
            election_timeout_ms: lode_server::ELECTION_TIMEOUT_MS,
            join: args.join,
        });
    } else if let (Some(dir), Some(cluster)) = (&args.cluster_tls, config.cluster.as_mut()) {
        cluster.tls_dir = dir.clone();
    }
    let data = config.data.clone();
    let server = Server::start(config).await?;
    let a = server.addresses();
    println!(
        "lode {} serving {}",
        env!("CARGO_PKG_VERSION"),
        data.display()
    );
    if let Some(addr) = a.tcp {
        let tls = if a.tcp_tls {
            " (tls: lode --server tls://HOST:PORT --cert CA)"
        } else {
            ""
        };
        println!("  binary (tcp)   {addr}{tls}");
    }
    if let (Some(addr), Some(cert)) = (a.quic, &a.cert) {
        println!("  binary (quic)  {addr}  cert {}", cert.display());
    }
    if let Some(addr) = a.http {
        let scheme = if a.http_tls { "https" } else { "http" };
        println!("  http           {scheme}://{addr}");
    }
    if let (Some(cert), true) = (&a.cert, a.tcp_tls || a.http_tls) {
        println!("  tls            certificate {}", cert.display());
    }
    if let Some(addr) = a.syslog {
        println!("  syslog         {addr} (tcp, udp)");
    }
    if let Some(addr) = a.syslog_tls {
        println!("  syslog (tls)   {addr} (RFC 5425; client certificates of a tenant)");
    }
    match server.service().auth {
        lode_server::auth::Mode::Required => println!(
            "  auth           required: a token on every request (the first admin token: {})",
            lode_server::auth::admin_token_path(&data).display()
        ),
        lode_server::auth::Mode::Off => {
            println!("  auth           off (loopback only, or --auth off)")
        }
    }
    if let Some(node) = server.service().cluster() {
        let addr = node
            .peer_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        println!(
            "  cluster        node {} peers on {addr} (quic, mutual tls)",
            node.status().node_id
        );
    }
    wait_for_signal().await;
    eprintln!("lode: shutting down");
    Ok(server.shutdown().await?)
}

/// A node given as ID or ID=NAME: its id and the names its certificate
/// is also valid for.
fn node_names(node: &str) -> Result<(u64, Vec<String>), CliError> {
    let (id, name) = match node.split_once('=') {
        Some((id, name)) => (id, Some(name.trim().to_owned())),
        None => (node, None),
    };
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| CliError::new(format!("'{node}' is not ID or ID=NAME")))?;
    Ok((id, name.into_iter().collect()))
}

/// `lode cluster init`: the CA and a certificate per node.
fn cluster_init(nodes: &[String], dir: &Path) -> Result<(), CliError> {
    let parsed = nodes
        .iter()
        .map(|n| node_names(n))
        .collect::<Result<Vec<_>, _>>()?;
    lode_replication::tls::init_cluster(dir, &parsed)?;
    println!(
        "cluster CA and {} node certificates in {}",
        parsed.len(),
        dir.display()
    );
    println!("  give node N: ca.pem, node-N.pem, node-N-key.pem; keep ca-key.pem off the nodes");
    Ok(())
}

/// `lode cluster cert`: one more node's certificate from the cluster CA.
fn cluster_cert(node: &str, dir: &Path) -> Result<(), CliError> {
    let (id, names) = node_names(node)?;
    let files = lode_replication::tls::issue_node_cert(dir, id, &names)?;
    println!(
        "node {id}: {} and {} (with {})",
        files.cert.display(),
        files.key.display(),
        dir.join("ca.pem").display()
    );
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn demo(data: &std::path::Path, records: usize, seed: u64) -> Result<(), CliError> {
    let engine = Engine::open(data, Options::default())?;
    let before = engine.stats().next_seq;
    let mut corpus = Corpus::new(seed);
    let start = Instant::now();
    let mut left = records;
    while left > 0 {
        let n = left.min(1000);
        engine.append(&corpus.take_records(n))?;
        left -= n;
    }
    let appended = start.elapsed();
    engine.seal()?;
    println!(
        "stored {records} records in {appended:.2?} ({:.0} records/s durable), sealed after {:.2?}",
        records as f64 / appended.as_secs_f64(),
        start.elapsed()
    );
    println!("\nlast records:");
    let stats = engine.stats();
    for record in engine.scan(stats.next_seq.saturating_sub(5).max(before)..) {
        let r = record?;
        println!(
            "  #{:<8} {} {:<5} {:<10} {:<13} {}",
            r.seq,
            format_rfc3339(r.ts),
            r.level,
            r.service,
            r.host,
            r.message
        );
    }
    println!(
        "\n{} records, {} sealed segments, {:.1} bytes/record sealed\ndata directory: {}",
        stats.records,
        stats.sealed_segments,
        stats.sealed_bytes as f64 / stats.sealed_records.max(1) as f64,
        data.display()
    );
    Ok(engine.close()?)
}
