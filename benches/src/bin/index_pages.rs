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
use lode_index::{FacetField, Index, IndexOptions, Search};

/// Time top-100 pages (or counts, histograms, top services: `--kind`) of
/// each `--query` over `DIR/data` and `DIR/index`.
///
/// Example:
///   index-search --records 1000000 --runs 1 --ingest-runs 1 --no-sqlite --no-ripgrep --keep --dir /var/tmp/k
///   index-pages --dir /var/tmp/k/lode-bench-search-NNN --query proxy --query '"unix sshd"'
///   index-pages --dir /var/tmp/k/lode-bench-search-NNN --kind top-services --query '*'
///   index-pages --dir /var/tmp/k/lode-bench-search-NNN --kind count --no-field-bitmaps --query 'level:error'
///   index-pages --dir /var/tmp/k/lode-bench-search-NNN --kind top-services --since 0 --query '*'
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
    /// What to time for each query.
    #[arg(long, value_enum, default_value_t = Kind::Page)]
    kind: Kind,
    /// Answer counts and top values of field filters through tantivy, not
    /// the field bitmaps (`IndexOptions::field_bitmaps`): the bitmaps'
    /// figures are the same queries with and without this.
    #[arg(long)]
    no_field_bitmaps: bool,
    /// Counts, histograms and top values of records from this time on
    /// (nanoseconds since the epoch; 0 is every generated record): a time
    /// range, which field bitmaps alone do not answer.
    #[arg(long)]
    since: Option<i64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Kind {
    /// The newest 100 matches.
    Page,
    /// How many records match.
    Count,
    /// A histogram of the matches over all time (24 buckets).
    Histogram,
    /// The 5 most frequent services among the matches.
    TopServices,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let engine = Arc::new(Engine::open(args.dir.join("data"), Options::default())?);
    let index = Index::open(
        Arc::clone(&engine),
        args.dir.join("index"),
        IndexOptions {
            field_bitmaps: !args.no_field_bitmaps,
            ..IndexOptions::default()
        },
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
            found = match args.kind {
                Kind::Page => index.search(&search)?.records.len() as u64,
                Kind::Count => index.count(query, None, args.since, None)?,
                Kind::Histogram => index
                    .histogram(query, None, args.since, None, None)?
                    .buckets
                    .iter()
                    .sum(),
                Kind::TopServices => index
                    .top_values(query, None, args.since, None, FacetField::Service, 5)?
                    .iter()
                    .map(|(_, n)| n)
                    .sum(),
            };
            ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{query:<30} {found:>8} records  median {:.3} ms",
            median(&mut ms)
        );
    }
    index.close()?;
    Ok(())
}
