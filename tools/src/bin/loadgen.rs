//! Writes a deterministic corpus of log records as JSON lines.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Parser;
use lode_tools::{Corpus, to_json_line};

/// Generate realistic log records (loghub vocabulary, varied values) as JSON
/// lines, the same for a given seed on every machine.
///
/// Examples:
///   loadgen --records 1000000 --output corpus.jsonl
///   loadgen --records 10 --seed 7 | head -3
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// How many records to write.
    #[arg(long, short = 'n', default_value_t = 1_000_000)]
    records: u64,
    /// Seed of the generator; the same seed gives the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file (standard output when absent).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let mut corpus = Corpus::new(args.seed);
    let mut line = Vec::with_capacity(512);
    for _ in 0..args.records {
        line.clear();
        to_json_line(None, &corpus.next_record(), &mut line);
        match out.write_all(&line) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
