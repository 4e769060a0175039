//! `lode bench --cost`: what a record costs, counted until it is
//! searchable and sealed, not only while it is acknowledged. The same
//! records go in two ways, each into a fresh directory:
//!
//! - as JSON lines over HTTP to a `lode serve` child: the server
//!   process's whole CPU (`/proc/PID/stat`, threads that ended included)
//!   from before the first request until its index lag is 0;
//! - through `lode import --data` of a JSON-lines file, a child process
//!   that returns once everything is searchable: its whole CPU
//!   (`cutime` and `cstime` of this process: the children it waited for).
//!
//! Then the directory's unsealed WAL tail is sealed in this process (its
//! CPU added: sealing is work every record gets) and the bytes on disk
//! are counted, beside the records as JSON lines and zstd -3 of them.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lode_tools::{disk_bytes, median, to_json_line};

use crate::CliError;
use crate::bench::{
    BenchArgs, Workload, background_config, children_cpu_ns, field, open_service, process_cpu_ns,
    spawn_serve, us_per_record,
};
use crate::bench_http::{self, Endpoint, Format};

/// One way in, one run: CPU in µs per record at each point, the wall
/// time until searchable, and the bytes on disk after the seal.
#[derive(Debug, Clone, Default)]
struct Run {
    /// Until the last record was acknowledged (the HTTP side only).
    acked_us: Option<f64>,
    searchable_us: f64,
    sealed_us: f64,
    searchable_secs: f64,
    bytes: Bytes,
}

/// Bytes on disk of a data directory, by part.
#[derive(Debug, Clone, Copy, Default)]
struct Bytes {
    /// RocksDB: the sealed records and the manifest.
    store: u64,
    index: u64,
    wal: u64,
    other: u64,
}

impl Bytes {
    fn of(dir: &Path) -> Bytes {
        let part = |name: &str| disk_bytes(&dir.join(name));
        let (store, index, wal) = (part("db"), part("index"), part("wal"));
        Bytes {
            store,
            index,
            wal,
            other: disk_bytes(dir).saturating_sub(store + index + wal),
        }
    }

    fn total(self) -> u64 {
        self.store + self.index + self.wal + self.other
    }
}

pub(crate) async fn bench_cost(args: &BenchArgs) -> Result<(), CliError> {
    let workload = Workload::new(args)?;
    let jsonl = workload.root.join("records.jsonl");
    let json_bytes = write_jsonl(&jsonl, &workload)?;
    let zstd_bytes = lode_tools::zstd3_bytes(&jsonl)?;
    let mut sides: [Vec<Run>; 2] = [vec![], vec![]];
    for run in 0..args.runs.max(1) {
        eprintln!("run {}/{}", run + 1, args.runs);
        let dir = workload.root.join(format!("http-{run}"));
        let http = over_http(&dir, &workload, args).await?;
        eprintln!("  http json lines      {:.2} us/record", http.sealed_us);
        sides[0].push(http);
        remove(&dir);
        let dir = workload.root.join(format!("import-{run}"));
        let import = by_import(&dir, &jsonl, &workload, args).await?;
        eprintln!("  lode import --data   {:.2} us/record", import.sealed_us);
        sides[1].push(import);
        remove(&dir);
    }
    let _ = std::fs::remove_file(&jsonl);
    report(args, &mut sides, json_bytes, zstd_bytes);
    Ok(())
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(dir.with_extension("toml"));
}

/// The records as the JSON lines HTTP ingest sends; their size.
fn write_jsonl(path: &Path, workload: &Workload) -> Result<u64, CliError> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut line = Vec::with_capacity(512);
    let mut bytes = 0u64;
    for record in workload.records.iter() {
        line.clear();
        to_json_line(None, record, &mut line);
        out.write_all(&line)?;
        bytes += line.len() as u64;
    }
    out.flush()?;
    Ok(bytes)
}

async fn over_http(dir: &Path, workload: &Workload, args: &BenchArgs) -> Result<Run, CliError> {
    let flags: Vec<String> = ["--http", "127.0.0.1:0"]
        .into_iter()
        .chain(["--listen", "off", "--quic", "off", "--syslog", "off"])
        .chain(["--auth", "off"])
        .map(str::to_owned)
        .collect();
    let (child, printed) = spawn_serve(dir, &flags, &background_config(&args.background))?;
    let pid = child.0.id();
    let addr = field(&printed, "http")?
        .trim_start_matches("http://")
        .to_owned();
    let endpoint = Endpoint::plain(&addr);
    let records = workload.records.len();
    let before = process_cpu_ns(Some(pid))?;
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        bench_http::ingest(
            Format::JsonLines,
            &endpoint,
            &workload.records,
            args.batch,
            args.http_connections,
        )
    })?;
    let acked = process_cpu_ns(Some(pid))?.saturating_sub(before);
    tokio::task::block_in_place(|| {
        bench_http::wait_searchable(&endpoint, Duration::from_secs(3600))
    })?;
    let searchable_secs = started.elapsed().as_secs_f64();
    let searchable = process_cpu_ns(Some(pid))?.saturating_sub(before);
    drop(child);
    let seal = seal(dir, args).await?;
    Ok(Run {
        acked_us: Some(us_per_record(acked, records)),
        searchable_us: us_per_record(searchable, records),
        sealed_us: us_per_record(searchable + seal, records),
        searchable_secs,
        bytes: Bytes::of(dir),
    })
}

async fn by_import(
    dir: &Path,
    jsonl: &Path,
    workload: &Workload,
    args: &BenchArgs,
) -> Result<Run, CliError> {
    let records = workload.records.len();
    let exe = std::env::current_exe()?;
    let before = children_cpu_ns()?;
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| {
        Command::new(&exe)
            .arg("import")
            .arg("--data")
            .arg(dir)
            .arg(jsonl)
            .stderr(std::process::Stdio::null())
            .status()
    })?;
    let searchable_secs = started.elapsed().as_secs_f64();
    let searchable = children_cpu_ns()?.saturating_sub(before);
    if !status.success() {
        return Err(CliError::new(format!("lode import --data: {status}")));
    }
    let seal = seal(dir, args).await?;
    Ok(Run {
        acked_us: None,
        searchable_us: us_per_record(searchable, records),
        sealed_us: us_per_record(searchable + seal, records),
        searchable_secs,
        bytes: Bytes::of(dir),
    })
}

/// Seals what `dir`'s WAL still holds, opened in this process; the CPU
/// it took this process, opening included (the sealer starts on the
/// finished WAL files as the directory opens).
async fn seal(dir: &Path, args: &BenchArgs) -> Result<u64, CliError> {
    let before = process_cpu_ns(None)?;
    let service = open_service(dir, args).await?;
    tokio::task::block_in_place(|| -> Result<u64, CliError> {
        service.engine().seal()?;
        let spent = process_cpu_ns(None)?.saturating_sub(before);
        service.close()?;
        Ok(spent)
    })
}

fn report(args: &BenchArgs, sides: &mut [Vec<Run>; 2], json_bytes: u64, zstd_bytes: u64) {
    let n = args.records.max(1) as f64;
    println!(
        "\nlode bench --cost: {} records (the loghub mix), medians of {} runs, background {}",
        args.records, args.runs, args.background
    );
    println!(
        "{:<34} {:>9} {:>11} {:>9} {:>8}   {:>6} {:>8} {:>6} {:>5} {:>6}",
        "cpu us/record until ...",
        "acked",
        "searchable",
        "+sealed",
        "wall s",
        "bytes",
        "records",
        "index",
        "wal",
        "other"
    );
    let names = [
        "http json lines (server process)",
        "lode import --data (process)",
    ];
    for (name, runs) in names.iter().zip(sides.iter_mut()) {
        let pick = |f: &dyn Fn(&Run) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        let acked = pick(&|r| r.acked_us.unwrap_or(f64::NAN));
        let acked = if acked.is_nan() {
            "-".to_owned()
        } else {
            format!("{acked:.2}")
        };
        let per = |bytes: u64| bytes as f64 / n;
        println!(
            "{name:<34} {acked:>9} {:>11.2} {:>9.2} {:>8.1}   {:>6.1} {:>8.1} {:>6.1} {:>5.1} {:>6.1}",
            pick(&|r| r.searchable_us),
            pick(&|r| r.sealed_us),
            pick(&|r| r.searchable_secs),
            pick(&|r| per(r.bytes.total())),
            pick(&|r| per(r.bytes.store)),
            pick(&|r| per(r.bytes.index)),
            pick(&|r| per(r.bytes.wal)),
            pick(&|r| per(r.bytes.other)),
        );
    }
    println!(
        "the same records as JSON lines: {:.1} bytes/record; zstd -3 of them: {:.1}",
        json_bytes as f64 / n,
        zstd_bytes as f64 / n
    );
    println!(
        "(cpu: the whole process, every thread, ended ones included, from before the\n\
         first record until the index had them all, then + sealing the WAL's tail;\n\
         bytes per record on disk after that seal: records = RocksDB, wal = unsealed)"
    );
}
