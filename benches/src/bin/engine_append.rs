//! Durable append throughput: lode's engine beside a plain fsync'd file and
//! RocksDB, on the same generated records, in one run.
//!
//! Every variant runs in its own child process (so peak RSS is its own),
//! `--runs` times, interleaved; the table shows medians and ratios.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use lode_benches::{disk_bytes, median, peak_rss_kib, rss_kib, run_child};
use lode_engine::{Engine, LogRecord, Options};
use lode_tools::{Corpus, to_json_line};
use serde::{Deserialize, Serialize};

/// Append N generated records in batches, durably, with each store, and
/// print records/s, MB/s (of the records' JSON), bytes on disk per record
/// and peak RSS, with ratios.
///
/// Example:
///   cargo run --release -p lode-benches --bin engine-append -- --records 1000000 --runs 3
#[derive(Parser, Debug)]
#[command(verbatim_doc_comment)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Batches lode keeps in flight from its one producer thread.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Where the stores write (a disk, not tmpfs).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Internal: run one variant and print its result as JSON.
    #[arg(long, hide = true)]
    variant: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// zstd level of lode's sealed segments.
    #[arg(long, default_value_t = Options::default().zstd_level)]
    zstd_level: i32,
    /// Only these variants (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
struct Outcome {
    /// Seconds until the last batch was acknowledged durable.
    ack_secs: f64,
    /// Seconds until everything was sealed (lode only).
    sealed_secs: Option<f64>,
    disk_bytes: u64,
    peak_rss_kib: u64,
    base_rss_kib: u64,
    json_bytes: u64,
}

/// `lode-serial` waits for each batch before the next (one fsync per batch,
/// like the references); `lode` keeps `--in-flight` batches submitted from
/// its one thread, so group commit shares fsyncs.
const VARIANTS: [&str; 5] = [
    "file-json",
    "file-preencoded",
    "rocksdb",
    "lode-serial",
    "lode",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(variant) = &args.variant {
        let outcome = run_variant(&args, variant)?;
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    println!(
        "engine-append: {} records, batches of {}, {} runs, in {}",
        args.records,
        args.batch,
        args.runs,
        args.dir.display()
    );
    let mut results: Vec<(String, Vec<Outcome>)> = VARIANTS
        .iter()
        .map(|v| (v.to_string(), Vec::new()))
        .collect();
    for run in 0..args.runs {
        for (variant, outcomes) in &mut results {
            let child_args = vec![
                format!("--records={}", args.records),
                format!("--batch={}", args.batch),
                format!("--in-flight={}", args.in_flight),
                format!("--dir={}", args.dir.display()),
                format!("--seed={}", args.seed),
                format!("--zstd-level={}", args.zstd_level),
                format!("--variant={variant}"),
            ];
            let outcome: Outcome = run_child(&child_args)?;
            eprintln!("  run {} {variant:<16} {:.3}s", run + 1, outcome.ack_secs);
            outcomes.push(outcome);
        }
    }
    report(&args, &results);
    Ok(())
}

fn report(args: &Args, results: &[(String, Vec<Outcome>)]) {
    let n = args.records as f64;
    let med = |outcomes: &[Outcome], f: &dyn Fn(&Outcome) -> f64| {
        median(&mut outcomes.iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "\n{:<16} {:>12} {:>9} {:>14} {:>11} {:>11} {:>11}",
        "store", "acked rec/s", "MB/s", "sealed rec/s", "disk B/rec", "peak RSS MB", "+RSS MB"
    );
    let mut rates = std::collections::HashMap::new();
    for (variant, outcomes) in results {
        let ack = med(outcomes, &|o| n / o.ack_secs);
        let mbps = med(outcomes, &|o| o.json_bytes as f64 / o.ack_secs / 1e6);
        let sealed = outcomes
            .iter()
            .all(|o| o.sealed_secs.is_some())
            .then(|| med(outcomes, &|o| n / o.sealed_secs.unwrap_or(f64::NAN)));
        let disk = med(outcomes, &|o| o.disk_bytes as f64 / n);
        let peak = med(outcomes, &|o| o.peak_rss_kib as f64 / 1024.0);
        let delta = med(outcomes, &|o| {
            o.peak_rss_kib.saturating_sub(o.base_rss_kib) as f64 / 1024.0
        });
        println!(
            "{variant:<16} {ack:>12.0} {mbps:>9.1} {:>14} {disk:>11.1} {peak:>11.0} {delta:>11.0}",
            sealed.map_or("-".into(), |s| format!("{s:.0}"))
        );
        rates.insert(variant.as_str(), (ack, sealed, disk));
    }
    let json_per_record = results
        .first()
        .map_or(0.0, |(_, o)| med(o, &|o| o.json_bytes as f64) / n);
    println!(
        "\n(records' JSON averages {json_per_record:.0} bytes; medians of {} runs)",
        args.runs
    );
    let ratio = |a: &str, b: &str, what: &str, target: &str| {
        if let (Some(x), Some(y)) = (rates.get(a), rates.get(b)) {
            let label = format!("{a} acked / {b} ({what})");
            println!("{label:<62} {:>6.2}x  {target}", x.0 / y.0);
        }
    };
    ratio(
        "lode-serial",
        "file-json",
        "encode + write + fdatasync per batch",
        "(target >= 0.8)",
    );
    ratio(
        "lode-serial",
        "file-preencoded",
        "write + fdatasync only",
        "",
    );
    ratio("lode", "file-json", "group commit", "(target >= 0.8)");
    ratio("lode", "rocksdb", "WriteBatch, sync", "");
    for variant in ["lode-serial", "lode"] {
        if let (Some((_, Some(sealed), disk)), Some(rocks)) =
            (rates.get(variant), rates.get("rocksdb"))
        {
            let label = format!("{variant} sealed / rocksdb acked");
            println!("{label:<62} {:>6.2}x  (target >= 2)", sealed / rocks.0);
            let label = format!("{variant} disk bytes/record after sealing");
            println!("{label:<62} {disk:>6.1}   (target <= 45)");
        }
    }
}

fn run_variant(args: &Args, variant: &str) -> Result<Outcome, Box<dyn std::error::Error>> {
    let records = Corpus::new(args.seed).take_records(args.records);
    let mut json_bytes = 0u64;
    let mut line = Vec::new();
    for r in &records {
        line.clear();
        to_json_line(None, r, &mut line);
        json_bytes += line.len() as u64;
    }
    let dir = args
        .dir
        .join(format!("lode-bench-{variant}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let base_rss_kib = rss_kib();
    let result = match variant {
        "file-json" => plain_file(&dir, &records, args.batch, false),
        "file-preencoded" => plain_file(&dir, &records, args.batch, true),
        "rocksdb" => rocks(&dir, &records, args.batch),
        "lode" => lode(&dir, &records, args.batch, args.in_flight, args.zstd_level),
        "lode-serial" => lode(&dir, &records, args.batch, 1, args.zstd_level),
        other => Err(format!("unknown variant {other}").into()),
    };
    let (ack_secs, sealed_secs) = result?;
    let outcome = Outcome {
        ack_secs,
        sealed_secs,
        disk_bytes: disk_bytes(&dir),
        peak_rss_kib: peak_rss_kib(),
        base_rss_kib,
        json_bytes,
    };
    std::fs::remove_dir_all(&dir)?;
    Ok(outcome)
}

type Timing = Result<(f64, Option<f64>), Box<dyn std::error::Error>>;

/// The floor: each batch's JSON appended to one file and fdatasync'd.
fn plain_file(dir: &Path, records: &[LogRecord], batch: usize, preencode: bool) -> Timing {
    let encode = |chunk: &[LogRecord], buf: &mut Vec<u8>| {
        buf.clear();
        for r in chunk {
            to_json_line(None, r, buf);
        }
    };
    let pre: Vec<Vec<u8>> = if preencode {
        records
            .chunks(batch)
            .map(|c| {
                let mut buf = Vec::new();
                encode(c, &mut buf);
                buf
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut file = File::create(dir.join("log.jsonl"))?;
    let mut buf = Vec::new();
    let start = Instant::now();
    for (i, chunk) in records.chunks(batch).enumerate() {
        let bytes = match pre.get(i) {
            Some(bytes) => bytes,
            None => {
                encode(chunk, &mut buf);
                &buf
            }
        };
        file.write_all(bytes)?;
        file.sync_data()?;
    }
    Ok((start.elapsed().as_secs_f64(), None))
}

/// RocksDB as a user would drive it: key = seq, value = the record's JSON,
/// one WriteBatch per batch with `sync = true`, zstd.
fn rocks(dir: &Path, records: &[LogRecord], batch: usize) -> Timing {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Zstd);
    let db = rocksdb::DB::open(&opts, dir.join("db"))?;
    let mut write_opts = rocksdb::WriteOptions::default();
    write_opts.set_sync(true);
    let mut seq = 1u64;
    let mut value = Vec::new();
    let start = Instant::now();
    for chunk in records.chunks(batch) {
        let mut wb = rocksdb::WriteBatch::default();
        for r in chunk {
            value.clear();
            to_json_line(None, r, &mut value);
            wb.put(seq.to_be_bytes(), &value);
            seq += 1;
        }
        db.write_opt(wb, &write_opts)?;
    }
    let acked = start.elapsed().as_secs_f64();
    db.flush()?;
    db.compact_range(None::<&[u8]>, None::<&[u8]>);
    Ok((acked, None))
}

/// lode: one producer keeping `in_flight` batches submitted, each
/// acknowledged once fsync'd; then everything sealed.
fn lode(
    dir: &Path,
    records: &[LogRecord],
    batch: usize,
    in_flight: usize,
    zstd_level: i32,
) -> Timing {
    let engine = Engine::open(
        dir,
        Options {
            zstd_level,
            ..Options::default()
        },
    )?;
    let start = Instant::now();
    let mut tickets = VecDeque::new();
    for chunk in records.chunks(batch) {
        if tickets.len() >= in_flight.max(1)
            && let Some(ticket) = tickets.pop_front()
        {
            lode_engine::AppendTicket::wait(ticket)?;
        }
        tickets.push_back(engine.submit(chunk)?);
    }
    for ticket in tickets {
        ticket.wait()?;
    }
    let acked = start.elapsed().as_secs_f64();
    engine.seal()?;
    let sealed = start.elapsed().as_secs_f64();
    let stats = engine.stats();
    if stats.sealed_records != records.len() as u64 {
        return Err(format!(
            "sealed {} of {} records",
            stats.sealed_records,
            records.len()
        )
        .into());
    }
    engine.close()?;
    Ok((acked, Some(sealed)))
}
