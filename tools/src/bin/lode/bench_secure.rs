//! `lode bench --secure`: what TLS and a token cost. The same records as
//! JSON lines to two servers in the same run: one over plain HTTP with
//! auth off, one over HTTPS that requires a token, sent a tenant's
//! `ingest,read` token (so its reads are scoped to the tenant, as a
//! client's are). Which goes first alternates run by run. Each server's
//! CPU is counted from its first request until every record is
//! searchable; this process's (the client's TLS) beside it. Then query
//! round trips on one keep-alive connection to each, alternating.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_tools::median;
use serde_json::{Value, json};

use crate::CliError;
use crate::bench::{
    BenchArgs, Cpu, ServerChild, Workload, background_config, field, process_cpu_ns, spawn_serve,
};
use crate::bench_http::{self, Endpoint, Format, Session};

/// The tenant the secure side's token writes and reads.
const TENANT: &str = "bench";

/// Query round trips timed on each side: name, path, query.
const QUERIES: [(&str, &str, &str); 4] = [
    ("GET /health (no work)", "/health", ""),
    ("rare word, top 100", "/api/v1/query", "timed"),
    (
        "service + word, top 100",
        "/api/v1/query",
        "service:hdfs block",
    ),
    ("count level:error", "/api/v1/count", "level:error"),
];

/// One server of the comparison and how to reach it.
struct Side {
    _child: ServerChild,
    pid: u32,
    endpoint: Endpoint,
}

/// Per side (plain, secure): figures of every run.
#[derive(Default)]
struct Figures {
    rate: Vec<f64>,
    /// The server's CPU per record, all threads, until searchable.
    server_us: Vec<f64>,
    /// The same, of its foreground threads (not sealing and indexing).
    foreground_us: Vec<f64>,
    /// This process's CPU per record (the client).
    client_us: Vec<f64>,
    /// Per query, ms.
    query_ms: Vec<Vec<f64>>,
}

pub(crate) async fn bench_secure(args: &BenchArgs) -> Result<(), CliError> {
    let workload = Workload::new(args)?;
    let mut sides: [Figures; 2] = Default::default();
    for side in &mut sides {
        side.query_ms = vec![Vec::new(); QUERIES.len()];
    }
    for run in 0..args.runs.max(1) {
        eprintln!("run {}/{}", run + 1, args.runs);
        let started = [false, true].map(|secure| {
            let dir = workload
                .root
                .join(format!("{}-{run}", name(secure).replace(' ', "-")));
            Side::start(&dir, secure, &args.background)
        });
        let [plain, secure] = started;
        let servers = [plain?, secure?];
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (Some(server), Some(figures)) = (servers.get(i), sides.get_mut(i)) else {
                continue;
            };
            tokio::task::block_in_place(|| server.ingest(&workload, args, figures))?;
            eprintln!(
                "  {:<24} {:>12.0} records/s",
                name(i == 1),
                figures.rate.last().copied().unwrap_or_default()
            );
        }
        tokio::task::block_in_place(|| time_queries(&servers, args.queries, &mut sides))?;
        drop(servers);
        for secure in [false, true] {
            let dir = workload
                .root
                .join(format!("{}-{run}", name(secure).replace(' ', "-")));
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(dir.with_extension("toml"));
        }
    }
    report(args, &mut sides);
    Ok(())
}

fn name(secure: bool) -> &'static str {
    if secure {
        "https + token"
    } else {
        "http, auth off"
    }
}

impl Side {
    /// A server on a fresh `dir` with only HTTP: plain with auth off, or
    /// TLS with auth required; for the latter a tenant's token is made
    /// with the first admin token.
    fn start(dir: &Path, secure: bool, background: &str) -> Result<Side, CliError> {
        let mut flags: Vec<String> = ["--http", "127.0.0.1:0"]
            .into_iter()
            .chain(["--listen", "off", "--quic", "off", "--syslog", "off"])
            .map(str::to_owned)
            .collect();
        flags.extend([
            "--auth".to_owned(),
            if secure { "required" } else { "off" }.to_owned(),
        ]);
        let config = format!(
            "{}[tls]\nmode = \"{}\"\n",
            background_config(background),
            if secure { "on" } else { "off" }
        );
        let (child, printed) = spawn_serve(dir, &flags, &config)?;
        let pid = child.0.id();
        let http = field(&printed, "http")?;
        let addr = http
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        let mut endpoint = Endpoint::plain(&addr);
        if secure {
            let cert = PathBuf::from(field(&printed, "certificate")?);
            let tls = lode_client::tls_client_config(&cert)
                .map_err(|e| CliError::new(format!("{}: {e}", cert.display())))?;
            endpoint.tls = Some(Arc::new(tls));
            endpoint.token = Some(admin_token(dir)?);
            endpoint.token = Some(tenant_token(&endpoint)?);
        }
        Ok(Side {
            _child: child,
            pid,
            endpoint,
        })
    }

    /// Sends every record as JSON lines, then waits until all are
    /// searchable; the rate (acknowledged) and CPU per record (until
    /// searchable) go to `figures`.
    fn ingest(
        &self,
        workload: &Workload,
        args: &BenchArgs,
        figures: &mut Figures,
    ) -> Result<(), CliError> {
        let records = workload.records.len();
        let server_before = Cpu::now(Some(self.pid)).of_server();
        let client_before = process_cpu_ns(None)?;
        let rate = bench_http::ingest(
            Format::JsonLines,
            &self.endpoint,
            &workload.records,
            args.batch,
            args.http_connections,
        )?;
        let client_ns = process_cpu_ns(None)?.saturating_sub(client_before);
        bench_http::wait_searchable(&self.endpoint, Duration::from_secs(600))?;
        let server = Cpu::now(Some(self.pid)).of_server().since(&server_before);
        figures.rate.push(rate);
        let [all, foreground, _] = server.per_record(records);
        figures.server_us.push(all);
        figures.foreground_us.push(foreground);
        figures
            .client_us
            .push(crate::bench::us_per_record(client_ns, records));
        Ok(())
    }
}

/// The first admin token a server with auth required wrote.
fn admin_token(dir: &Path) -> Result<String, CliError> {
    let path = lode_server::auth::admin_token_path(dir);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    Ok(text.trim().to_owned())
}

/// A new `ingest,read` token of [`TENANT`], made by `admin`.
fn tenant_token(admin: &Endpoint) -> Result<String, CliError> {
    let body = json!({"tenant": TENANT, "scopes": "ingest,read"}).to_string();
    let mut session = admin.connect().map_err(CliError::new)?;
    let (status, answer) = session
        .send(
            "POST",
            "/api/v1/tokens",
            "application/json",
            body.as_bytes(),
        )
        .map_err(CliError::new)?;
    let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
    match answer.get("token").and_then(Value::as_str) {
        Some(token) if status == 201 => Ok(token.to_owned()),
        _ => Err(CliError::new(format!("making a token: {status} {answer}"))),
    }
}

/// Each query on one keep-alive connection per side, alternating which
/// side goes first; both must give the same answer size.
fn time_queries(
    servers: &[Side; 2],
    rounds: usize,
    sides: &mut [Figures; 2],
) -> Result<(), CliError> {
    let mut sessions = Vec::new();
    for server in servers {
        sessions.push(server.endpoint.connect().map_err(CliError::new)?);
    }
    for (q, (label, path, query)) in QUERIES.iter().enumerate() {
        let mut answers = [0usize; 2];
        for round in 0..rounds.max(1) {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (Some(session), Some(figures)) = (sessions.get_mut(i), sides.get_mut(i)) else {
                    continue;
                };
                let started = Instant::now();
                let size = ask(session, path, query)?;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                if let (Some(times), Some(answer)) =
                    (figures.query_ms.get_mut(q), answers.get_mut(i))
                {
                    times.push(ms);
                    *answer = size;
                }
            }
        }
        if answers[0] != answers[1] {
            return Err(CliError::new(format!(
                "{label}: the sides answered differently ({} and {})",
                answers[0], answers[1]
            )));
        }
    }
    Ok(())
}

/// One query; the size of its answer (records, or the count).
fn ask(session: &mut Session, path: &str, query: &str) -> Result<usize, CliError> {
    if query.is_empty() {
        let (status, _) = session
            .send("GET", path, "text/plain", b"")
            .map_err(CliError::new)?;
        return if status == 200 {
            Ok(0)
        } else {
            Err(CliError::new(format!("{path}: {status}")))
        };
    }
    let answer = session.get_json(
        path,
        &[("q", query.to_owned()), ("limit", "100".to_owned())],
    )?;
    if let Some(records) = answer.get("records").and_then(Value::as_array) {
        return Ok(records.len());
    }
    answer
        .get("count")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| CliError::new(format!("{path}: unexpected answer {answer}")))
}

fn report(args: &BenchArgs, sides: &mut [Figures; 2]) {
    // Run by run ratios first: `median` sorts its argument.
    let ratio = |of: fn(&Figures) -> &Vec<f64>, sides: &[Figures; 2]| -> f64 {
        let mut r: Vec<f64> = of(&sides[1])
            .iter()
            .zip(of(&sides[0]))
            .map(|(secure, plain)| secure / plain)
            .collect();
        median(&mut r)
    };
    let ratios = [
        ratio(|f| &f.rate, sides),
        ratio(|f| &f.server_us, sides),
        ratio(|f| &f.foreground_us, sides),
        ratio(|f| &f.client_us, sides),
    ];
    println!(
        "\nlode bench --secure: {} records as JSON lines, {} per request, {} connections, medians of {} runs",
        args.records, args.batch, args.http_connections, args.runs
    );
    println!(
        "{:<28} {:>12} {:>14} {:>14} {:>14}",
        "ingest until searchable", "records/s", "server us/rec", "foreground", "client us/rec"
    );
    for (secure, f) in [false, true].into_iter().zip(sides.iter_mut()) {
        println!(
            "{:<28} {:>12.0} {:>14.3} {:>14.3} {:>14.3}",
            name(secure),
            median(&mut f.rate),
            median(&mut f.server_us),
            median(&mut f.foreground_us),
            median(&mut f.client_us)
        );
    }
    println!(
        "{:<28} {:>11.2}x {:>13.2}x {:>13.2}x {:>13.2}x",
        "https + token / http", ratios[0], ratios[1], ratios[2], ratios[3]
    );
    println!(
        "(server us/rec: the server process's CPU from the first request until\n\
         every record is searchable, every thread, ended ones included;\n\
         foreground: its live threads other than sealing and indexing; client:\n\
         this process; ratios: median over runs of each run's ratio)"
    );
    println!(
        "\n{:<28} {:>14} {:>18} {:>10}",
        "query round trip (median ms)", "http", "https + token", "ratio"
    );
    for (q, (label, _, _)) in QUERIES.iter().enumerate() {
        let [plain, secure] = [0, 1].map(|i| {
            sides
                .get_mut(i)
                .and_then(|f| f.query_ms.get_mut(q))
                .map_or(0.0, |v| median(v))
        });
        println!(
            "{label:<28} {plain:>14.3} {secure:>18.3} {:>9.2}x",
            secure / plain.max(1e-9)
        );
    }
    println!(
        "(one keep-alive connection each, alternating; the secure side's reads are scoped to its tenant)"
    );
}
