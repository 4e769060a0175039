//! Search pages in process over a data directory `index-search --keep`
//! left behind (reopened, so every record is sealed): the figures of a
//! change to the read path, run with the binaries before and after it in
//! turn on the same directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lode_benches::median;
use lode_engine::{Engine, Options};
use lode_index::{Index, IndexOptions, Search};

/// Time top-100 pages of each `--query` over `DIR/data` and `DIR/index`.
///
/// Example:
///   index-search --records 1000000 --runs 1 --ingest-runs 1 --no-sqlite --no-ripgrep --keep --dir /var/tmp/k
///   index-pages --dir /var/tmp/k/lode-bench-search-NNN --query proxy --query '"unix sshd"'
#[derive(Parser, Debug)]
#[command(verbatim_doc_comment)]
struct Args {
    /// A directory kept by `index-search --keep` (holding `data` and `index`).
    #[arg(long)]
    dir: PathBuf,
    /// A query to time (repeatable).
    #[arg(long, required = true)]
    query: Vec<String>,
    /// Timed pages per query (the median is printed).
    #[arg(long, default_value_t = 3000)]
    runs: usize,
    /// Time a histogram of each query's matches over all time (24 buckets,
    /// as `index-search`) instead of a page.
    #[arg(long)]
    histogram: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let engine = Arc::new(Engine::open(args.dir.join("data"), Options::default())?);
    let index = Index::open(
        Arc::clone(&engine),
        args.dir.join("index"),
        IndexOptions::default(),
    )?;
    let last = engine.next_seq().saturating_sub(1);
    if !index.wait_indexed(last, Duration::from_secs(600)) {
        return Err("the index did not catch up with the engine in 600 s".into());
    }
    for query in &args.query {
        let search = Search {
            query: query.clone(),
            limit: Some(100),
            ..Search::default()
        };
        let mut found = 0;
        let mut ms: Vec<f64> = Vec::with_capacity(args.runs);
        for _ in 0..args.runs.max(1) {
            let started = Instant::now();
            found = if args.histogram {
                let histogram = index.histogram(query, None, None, None)?;
                histogram.buckets.iter().sum::<u64>() as usize
            } else {
                index.search(&search)?.records.len()
            };
            ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{query:<30} {found:>7} records  median {:.3} ms",
            median(&mut ms)
        );
    }
    index.close()?;
    Ok(())
}
