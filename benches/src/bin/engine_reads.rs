//! Reads of a search page: 100 records by seq, each beside the floor of
//! reading the same place in order (a scan of 100 consecutive records).
//! Also the encoding and decoding of a 100-record page on the wire.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use lode_benches::median;
use lode_engine::{Engine, Options};
use lode_protocol::wire::{FRAME_HEADER, Response, WireRecord, decode_response, encode_response};
use lode_tools::Corpus;

/// Append `--records` generated records (16 MiB segments, so most are
/// sealed), reopen, then time pages of 100 records read by seq.
///
/// Example:
///   cargo run --release -p lode-benches --bin engine-reads -- --records 500000
#[derive(Parser, Debug)]
#[command(verbatim_doc_comment)]
struct Args {
    #[arg(long, default_value_t = 500_000)]
    records: usize,
    /// Repetitions of each timing (medians are printed).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
}

const PAGE: u64 = 100;

fn options() -> Options {
    Options {
        segment_bytes: 16 << 20,
        ..Options::default()
    }
}

/// Milliseconds of `f`, median over `runs`.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut ms: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            black_box(f());
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&mut ms)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = args
        .dir
        .join(format!("lode-bench-reads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let records = Corpus::new(1).take_records(args.records);
    let engine = Engine::open(&dir, options())?;
    for chunk in records.chunks(1000) {
        engine.submit(chunk)?.wait()?;
    }
    engine.close()?;
    let engine = Engine::open(&dir, options())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.stats().sealed_records == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = engine.stats();
    let (sealed, end) = (stats.sealed_records, engine.next_seq());
    println!(
        "engine-reads: {} records, {sealed} sealed, pages of {PAGE}, medians of {} runs (ms)",
        args.records, args.runs
    );
    let scan = |from: u64| engine.scan(from..from + PAGE).count();
    let newest: Vec<u64> = (end - PAGE..end).rev().collect();
    let oldest: Vec<u64> = (1..=PAGE).collect();
    let spread: Vec<u64> = (0..PAGE).map(|i| 1 + i * (sealed / PAGE)).collect();
    // A common word's page (a match every 11 records) and a phrase's
    // candidates (every 25), in sealed records.
    let every = |gap: u64| -> Vec<u64> { (0..PAGE).map(|i| 1 + i * gap).collect() };
    let (every_11, every_25) = (every(11), every(25));
    let spread_first = time(1, || engine.get_many(&spread));
    let rows = [
        (
            "unsealed, consecutive: get each",
            time(args.runs, || {
                newest.iter().map(|&s| engine.get(s)).collect::<Vec<_>>()
            }),
            time(args.runs, || scan(end - PAGE)),
        ),
        (
            "unsealed, consecutive: get_many",
            time(args.runs, || engine.get_many(&newest)),
            time(args.runs, || scan(end - PAGE)),
        ),
        (
            "sealed, consecutive: get each",
            time(args.runs, || {
                oldest.iter().map(|&s| engine.get(s)).collect::<Vec<_>>()
            }),
            time(args.runs, || scan(1)),
        ),
        (
            "sealed, consecutive: get_many",
            time(args.runs, || engine.get_many(&oldest)),
            time(args.runs, || scan(1)),
        ),
        (
            "sealed, every 11th: get_many",
            time(args.runs, || engine.get_many(&every_11)),
            time(args.runs, || scan(1)),
        ),
        (
            "sealed, every 25th: get_many",
            time(args.runs, || engine.get_many(&every_25)),
            time(args.runs, || scan(1)),
        ),
        (
            "sealed, 100 blocks apart: get_many again",
            time(args.runs, || engine.get_many(&spread)),
            time(args.runs, || scan(1)),
        ),
    ];
    println!(
        "{:<44} {:>10} {:>14}",
        "page read by seq", "lode", "scan of 100"
    );
    println!(
        "{:<44} {spread_first:>10.3} {:>14}",
        "sealed, 100 blocks apart: get_many, first", "-"
    );
    for (name, lode, floor) in rows {
        println!("{name:<44} {lode:>10.3} {floor:>14.3}");
    }

    // A page on the wire: the same records, encoded and decoded.
    let page: Vec<WireRecord> = engine
        .get_many(&newest)?
        .into_iter()
        .map(|r| WireRecord::new(r.seq, r.log))
        .collect();
    let mut frame = Vec::new();
    let encode = time(args.runs, || {
        frame.clear();
        let response = Response::PageEnd {
            records: page.clone(),
            next_cursor: None,
        };
        encode_response(1, false, &response, &mut frame)
    });
    let payload = frame.get(FRAME_HEADER..).unwrap_or_default().to_vec();
    let decode = time(args.runs, || decode_response(&payload));
    println!(
        "a page on the wire ({} bytes): clone + encode {encode:.3}, decode (checked) {decode:.3}",
        frame.len()
    );
    engine.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
