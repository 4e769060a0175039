//! The `lode` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use lode_engine::{Engine, Options, Stats};
use lode_tools::{Corpus, format_rfc3339};

/// lode: a log database. Stores log records durably and reads them back.
///
/// Examples:
///   lode demo                      store 100,000 sample records in ./lode-data
///   lode demo --records 1000000    ... a million
///   lode stats --data ./lode-data  what a data directory holds
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store generated sample logs (loghub vocabulary) into a data
    /// directory, seal them, and print what was stored.
    Demo {
        /// Data directory (created if missing).
        #[arg(long, default_value = "./lode-data")]
        data: PathBuf,
        /// Records to store.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Records per append.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Seed of the sample generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Print the figures of a data directory.
    Stats {
        #[arg(long, default_value = "./lode-data")]
        data: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lode: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Demo {
            data,
            records,
            batch,
            seed,
        } => demo(&data, records, batch.max(1), seed),
        Command::Stats { data } => {
            let engine = Engine::open(&data, Options::default())?;
            print_stats(&engine.stats());
            Ok(engine.close()?)
        }
    }
}

fn demo(
    data: &std::path::Path,
    records: usize,
    batch: usize,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::open(data, Options::default())?;
    let before = engine.stats().next_seq;
    let mut corpus = Corpus::new(seed);
    let start = Instant::now();
    let mut left = records;
    while left > 0 {
        let n = left.min(batch);
        engine.append(&corpus.take_records(n))?;
        left -= n;
    }
    let appended = start.elapsed();
    engine.seal()?;
    let sealed = start.elapsed();
    println!(
        "stored {records} records in {:.2?} ({:.0} records/s durable), sealed after {:.2?}",
        appended,
        records as f64 / appended.as_secs_f64(),
        sealed
    );
    let stats = engine.stats();
    println!("\nlast records:");
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
    println!();
    print_stats(&stats);
    println!("\ndata directory: {}", data.display());
    Ok(engine.close()?)
}

fn print_stats(s: &Stats) {
    println!(
        "records        {} (seq {} .. {})",
        s.records,
        s.first_seq,
        s.next_seq.saturating_sub(1)
    );
    println!(
        "sealed         {} segments, {} records, {} bytes ({:.1} bytes/record)",
        s.sealed_segments,
        s.sealed_records,
        s.sealed_bytes,
        s.sealed_bytes as f64 / s.sealed_records.max(1) as f64
    );
    println!(
        "wal            {} segments, {} bytes, {} unsealed records",
        s.wal_segments, s.wal_bytes, s.unsealed_records
    );
    println!(
        "retention      {} segments dropped ({} records)",
        s.dropped_segments, s.dropped_records
    );
    for cut in &s.recovery_cuts {
        println!(
            "recovery       cut {} bytes at {}:{} ({})",
            cut.bytes,
            cut.path.display(),
            cut.offset,
            cut.reason
        );
    }
    if let Some(cause) = &s.poisoned {
        println!("POISONED       {cause}");
    }
}
