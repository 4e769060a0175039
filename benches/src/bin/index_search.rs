//! Search benchmark: ingest (durable and indexed) beside tantivy alone, bytes
//! on disk, and query latency beside SQLite FTS5 and ripgrep, on the same
//! generated records, in one run.

// A benchmark over its own generated data.
#![allow(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lode_benches::{disk_bytes, median};
use lode_engine::{Background, Engine, LogRecord, Options};
use lode_index::{Index, IndexOptions, Search};
use lode_query::tokens;
use lode_tools::{Corpus, SplitMix64};
use serde_json::json;

/// Index N generated records with lode (engine + index) and with tantivy
/// alone; then time seven queries on lode, SQLite FTS5 (Python's sqlite3)
/// and ripgrep over the same records as JSON lines.
///
/// Example:
///   cargo run --release -p lode-benches --bin index-search -- --records 1000000
#[derive(Parser, Debug)]
#[command(verbatim_doc_comment)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Timed repetitions of each query (ripgrep: a fifth of them, at least 3).
    #[arg(long, default_value_t = 40)]
    runs: usize,
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ingest repetitions (medians are compared).
    #[arg(long, default_value_t = 3)]
    ingest_runs: usize,
    /// Priority of lode's sealing and indexing threads: idle, nice:N or
    /// normal (the server's storage.background).
    #[arg(long, default_value = "idle", value_parser = parse_background)]
    background: Background,
    /// Skip the SQLite FTS5 reference (it takes minutes to load).
    #[arg(long)]
    no_sqlite: bool,
    /// Skip the ripgrep reference.
    #[arg(long)]
    no_ripgrep: bool,
    /// Keep word positions in the index (the server's
    /// storage.phrase_positions): phrases run on them.
    #[arg(long)]
    positions: bool,
    /// Keep the data directories (to inspect them) instead of deleting them.
    #[arg(long)]
    keep: bool,
}

/// One benchmark query, in each system's terms.
struct BenchQuery {
    name: &'static str,
    /// What lode is asked, as `index-pages --query` takes it.
    text: String,
    lode: Box<dyn Fn(&Index) -> usize>,
    /// Whether `lode` is a top-100 page (whose records are then also read
    /// alone, by seq, for the floor of what a page costs).
    page: bool,
    sqlite: serde_json::Value,
    rg: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = args
        .dir
        .join(format!("lode-bench-search-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("generating {} records", args.records);
    let records = Corpus::new(args.seed).take_records(args.records);
    let jsonl = dir.join("records.jsonl");
    write_jsonl(&jsonl, &records)?;

    // Ingest is repeated, alternating, and the medians compared; the last
    // lode run serves the queries.
    let (mut lode_runs, mut tantivy_runs) = (Vec::new(), Vec::new());
    let mut last = None;
    let mut tantivy_bytes = 0;
    for run in 0..args.ingest_runs.max(1) {
        let _ = std::fs::remove_dir_all(dir.join("data"));
        let _ = std::fs::remove_dir_all(dir.join("index"));
        let _ = std::fs::remove_dir_all(dir.join("tantivy"));
        drop(last.take());
        let (secs, bytes, engine, index) =
            lode_ingest(&dir, &records, args.background, args.positions)?;
        lode_runs.push(secs);
        let (tantivy_secs, alone_bytes) =
            tantivy_alone(&dir.join("tantivy"), &records, args.positions)?;
        tantivy_runs.push(tantivy_secs);
        tantivy_bytes = alone_bytes;
        eprintln!(
            "  ingest run {}: lode {secs:.2}s, tantivy {:.2}s",
            run + 1,
            tantivy_runs[run]
        );
        last = Some((bytes, engine, index));
    }
    let (lode_secs, tantivy_secs) = (median(&mut lode_runs), median(&mut tantivy_runs));
    let (lode_bytes, engine, index) = last.ok_or("no ingest run")?;
    let n = records.len() as f64;
    println!(
        "index-search: {} records (JSON lines {:.0} MB)",
        records.len(),
        disk_bytes(&jsonl) as f64 / 1e6
    );
    println!(
        "\ningest, durable and searchable (median of {} runs):",
        lode_runs.len()
    );
    println!("  lode engine + index   {:>10.0} records/s", n / lode_secs);
    println!(
        "  tantivy alone         {:>10.0} records/s",
        n / tantivy_secs
    );
    println!(
        "  ratio                 {:>10.2}x  (target >= 0.8)",
        tantivy_secs / lode_secs
    );
    let engine_bytes = disk_bytes(&dir.join("data"));
    println!(
        "bytes on disk per record when the last record is searchable: {:.1} (engine {:.1}, index {:.1})",
        lode_bytes as f64 / n,
        engine_bytes as f64 / n,
        (lode_bytes - engine_bytes) as f64 / n
    );
    let settled = settled_bytes(&dir.join("index"), Duration::from_secs(600));
    println!(
        "bytes on disk per record, everything, once merges settle: {:.1}  (target <= 80; engine {:.1}, index {:.1})",
        (engine_bytes + settled) as f64 / n,
        engine_bytes as f64 / n,
        settled as f64 / n
    );
    println!(
        "tantivy alone, the same fields (an index only: no record kept to return), merges settled: {:.1} bytes per record",
        tantivy_bytes as f64 / n
    );
    println!(
        "the records as JSON lines: {:.1} bytes per record; zstd -3 of them: {:.1}",
        disk_bytes(&jsonl) as f64 / n,
        lode_tools::zstd3_bytes(&jsonl)? as f64 / n
    );
    print_index_space(&dir.join("index"), n)?;
    println!(
        "  field bitmaps in memory per record: {:.2} bytes",
        index.stats().bitmap_bytes as f64 / n
    );

    let queries = pick_queries(&records);
    println!("\nqueries (as index-pages --query takes them):");
    for query in &queries {
        println!("  {:<28} {}", query.name, query.text);
    }
    let sqlite = (!args.no_sqlite)
        .then(|| sqlite_times(&dir, &jsonl, &queries, args.runs))
        .transpose()?;
    println!(
        "\n{:<28} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "query (median ms)", "lode", "lode p99", "sqlite fts5", "ripgrep", "sqlite/x", "rg/x"
    );
    for query in &queries {
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let start = Instant::now();
            std::hint::black_box((query.lode)(&index));
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let p99 = percentile(&mut times.clone(), 0.99);
        let lode = median(&mut times);
        let sqlite_ms = sqlite
            .as_ref()
            .and_then(|s| s.get(query.name))
            .map(|t| median(&mut t.clone()));
        let rg_ms = (!args.no_ripgrep)
            .then(|| ripgrep_ms(&query.rg, &jsonl, (args.runs / 5).max(3)))
            .transpose()?;
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        // Ratios under 10 keep two decimals: 0.07x is not 0x.
        let ratio = |v: Option<f64>| {
            v.map_or("-".to_owned(), |v| match v / lode {
                r if r < 10.0 => format!("{r:.2}x"),
                r => format!("{r:.0}x"),
            })
        };
        println!(
            "{:<28} {lode:>10.3} {p99:>10.3} {:>12} {:>12} {:>10} {:>10}",
            query.name,
            show(sqlite_ms),
            show(rg_ms),
            ratio(sqlite_ms),
            ratio(rg_ms)
        );
    }
    println!(
        "(targets at 10M records: rare word and phrase top-100 < 5 ms; >= 10x SQLite FTS5, >= 100x ripgrep)"
    );
    print_page_reads(&engine, &index, &queries, args.runs)?;
    drop(index);
    drop(engine);
    if args.keep {
        println!("kept {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn write_jsonl(path: &Path, records: &[LogRecord]) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        let line = json!({
            "ts_ns": r.ts, "level": r.level.as_str(), "service": r.service, "host": r.host, "message": r.message,
        });
        writeln!(out, "{line}")?;
    }
    out.flush()
}

type Ingest = (f64, u64, Arc<Engine>, Index);

fn parse_background(text: &str) -> Result<Background, String> {
    text.parse()
}

fn lode_ingest(
    dir: &Path,
    records: &[LogRecord],
    background: Background,
    positions: bool,
) -> Result<Ingest, Box<dyn std::error::Error>> {
    let engine = Arc::new(Engine::open(
        dir.join("data"),
        Options {
            background,
            ..Options::default()
        },
    )?);
    let index = Index::open(
        Arc::clone(&engine),
        dir.join("index"),
        IndexOptions {
            background,
            positions,
            ..IndexOptions::default()
        },
    )?;
    let start = Instant::now();
    let mut tickets = std::collections::VecDeque::new();
    for chunk in records.chunks(1000) {
        if tickets.len() >= 4
            && let Some(ticket) = tickets.pop_front()
        {
            lode_engine::AppendTicket::wait(ticket)?;
        }
        tickets.push_back(engine.submit(chunk)?);
    }
    for ticket in tickets {
        ticket.wait()?;
    }
    if !index.wait_indexed(records.len() as u64, Duration::from_secs(3600)) {
        return Err("index did not catch up".into());
    }
    let secs = start.elapsed().as_secs_f64();
    engine.seal()?;
    let bytes = disk_bytes(&dir.join("data")) + disk_bytes(&dir.join("index"));
    Ok((secs, bytes, engine, index))
}

/// The size of `dir` once it has not changed for 5 s (tantivy merges
/// segments in the background after the last commit), or after `limit`.
fn settled_bytes(dir: &Path, limit: Duration) -> u64 {
    let start = Instant::now();
    let (mut bytes, mut since) = (disk_bytes(dir), Instant::now());
    while since.elapsed() < Duration::from_secs(5) && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(250));
        let now = disk_bytes(dir);
        if now != bytes {
            (bytes, since) = (now, Instant::now());
        }
    }
    bytes
}

/// Bytes per record of each part of lode's index, from tantivy's own
/// accounting (a second reader of the same files).
fn print_index_space(dir: &Path, records: f64) -> Result<(), Box<dyn std::error::Error>> {
    let index = tantivy::Index::open_in_dir(dir)?;
    let usage = index.reader()?.searcher().space_usage()?;
    let mut parts: std::collections::BTreeMap<String, u64> = Default::default();
    for segment in usage.segments() {
        let per_field = [
            ("terms", segment.termdict()),
            ("postings", segment.postings()),
            ("positions", segment.positions()),
            ("column", segment.fast_fields()),
            ("norms", segment.fieldnorms()),
        ];
        for (part, fields) in per_field {
            for field in fields.fields() {
                let key = format!("{} {part}", field.field_name());
                *parts.entry(key).or_default() += field.total().get_bytes();
            }
        }
        *parts.entry("document store".into()).or_default() += segment.store().total().get_bytes();
        *parts.entry("deletes".into()).or_default() += segment.deletes().get_bytes();
    }
    let line: Vec<String> = parts
        .iter()
        .filter(|(_, bytes)| **bytes > 0)
        .map(|(part, bytes)| format!("{part} {:.2}", *bytes as f64 / records))
        .collect();
    println!(
        "  index bytes per record ({} segments): {}",
        usage.segments().len(),
        line.join(", ")
    );
    Ok(())
}

/// tantivy alone: the same fields, options (word positions or not) and
/// tokenizer, but every number a term of its own (lode puts long numbers
/// into buckets), one writer thread with the same memory, the same
/// records, one commit at the end.
/// Seconds to index `records` with tantivy alone (until committed), and
/// the index's bytes once its merges are done.
fn tantivy_alone(
    dir: &Path,
    records: &[LogRecord],
    positions: bool,
) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    use tantivy::schema::{FAST, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
    use tantivy::tokenizer::{LowerCaser, SimpleTokenizer, TextAnalyzer};
    std::fs::create_dir_all(dir)?;
    // The same fields and options as lode's index: nothing scored, no
    // norms; values lowercased as lode does.
    let indexing = |tokenizer: &str, option| {
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(option)
            .set_fieldnorms(false)
    };
    let mut builder = Schema::builder();
    let words = if positions {
        IndexRecordOption::WithFreqsAndPositions
    } else {
        IndexRecordOption::Basic
    };
    let text = TextOptions::default().set_indexing_options(indexing("lode", words));
    let plain =
        TextOptions::default().set_indexing_options(indexing("raw", IndexRecordOption::Basic));
    // Values and attributes as lode indexes them: terms, no column (`attr`
    // a `key\x1fvalue` term each).
    let seq = builder.add_u64_field("seq", FAST);
    let ts = builder.add_i64_field("ts", FAST);
    let message = builder.add_text_field("message", text);
    let level = builder.add_text_field("level", plain.clone());
    let service = builder.add_text_field("service", plain.clone());
    let host = builder.add_text_field("host", plain.clone());
    let attr = builder.add_text_field("attr", plain);
    let index = tantivy::Index::create_in_dir(dir, builder.build())?;
    index.tokenizers().register(
        "lode",
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .build(),
    );
    let mut writer: tantivy::IndexWriter =
        index.writer_with_num_threads(1, IndexOptions::default().writer_memory)?;
    let start = Instant::now();
    for (i, r) in records.iter().enumerate() {
        let mut doc = tantivy::TantivyDocument::default();
        doc.add_u64(seq, i as u64 + 1);
        doc.add_i64(ts, r.ts);
        doc.add_text(message, &r.message);
        doc.add_text(level, r.level.as_str().to_lowercase());
        doc.add_text(service, r.service.to_lowercase());
        doc.add_text(host, r.host.to_lowercase());
        for (key, value) in &r.attrs {
            doc.add_text(attr, format!("{key}\u{1f}{}", value.to_lowercase()));
        }
        writer.add_document(doc)?;
    }
    writer.commit()?;
    let secs = start.elapsed().as_secs_f64();
    writer.wait_merging_threads()?;
    Ok((secs, disk_bytes(dir)))
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(at).copied().unwrap_or(f64::NAN)
}

/// The seven queries, chosen from the records' own token frequencies.
/// The time of reading each page's records alone, by seq from the engine,
/// as the page does once the index has found them: what a page costs at
/// least whatever the index does.
fn print_page_reads(
    engine: &Engine,
    index: &Index,
    queries: &[BenchQuery],
    runs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("\nthe pages' records read alone by seq (engine get_many, median ms):");
    for query in queries.iter().filter(|q| q.page) {
        let search = Search {
            query: query.text.clone(),
            limit: Some(100),
            ..Search::default()
        };
        let seqs: Vec<u64> = index
            .search(&search)?
            .records
            .iter()
            .map(|r| r.seq)
            .collect();
        let mut times = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            std::hint::black_box(engine.get_many(&seqs)?);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "  {:<28} {:>4} records {:>10.3}",
            query.name,
            seqs.len(),
            median(&mut times)
        );
    }
    Ok(())
}

fn pick_queries(records: &[LogRecord]) -> Vec<BenchQuery> {
    let mut freq: HashMap<String, u32> = HashMap::new();
    for r in records {
        for t in tokens(&r.message) {
            *freq.entry(t).or_insert(0) += 1;
        }
    }
    let mut rare: Vec<&String> = freq
        .iter()
        .filter(|(t, n)| (2..=3).contains(*n) && t.len() >= 5)
        .map(|(t, _)| t)
        .collect();
    rare.sort();
    let rare = rare
        .get(rare.len() / 2)
        .map_or_else(|| "missing".to_owned(), |t| (*t).clone());
    let common = freq
        .iter()
        .filter(|(t, _)| t.len() >= 4 && t.chars().all(char::is_alphabetic))
        .max_by_key(|(t, n)| (**n, (*t).clone()))
        .map_or_else(|| "missing".to_owned(), |(t, _)| t.clone());
    let mut rng = SplitMix64::new(5);
    let phrase: Vec<String> = loop {
        let r = &records[rng.below(records.len() as u64) as usize];
        let toks: Vec<String> = tokens(&r.message)
            .filter(|t| t.chars().all(char::is_alphabetic))
            .collect();
        if toks.len() >= 3 {
            break toks[1..3].to_vec();
        }
    };
    let hdfs_word = {
        let mut f: HashMap<String, u32> = HashMap::new();
        for r in records.iter().filter(|r| r.service == "hdfs") {
            for t in
                tokens(&r.message).filter(|t| t.len() >= 4 && t.chars().all(char::is_alphabetic))
            {
                *f.entry(t).or_insert(0) += 1;
            }
        }
        f.into_iter()
            .max_by_key(|(t, n)| (*n, t.clone()))
            .map_or_else(|| "block".to_owned(), |(t, _)| t)
    };
    let (min_ts, max_ts) = (
        records.iter().map(|r| r.ts).min().unwrap_or(0),
        records.iter().map(|r| r.ts).max().unwrap_or(1),
    );
    let width = (max_ts + 1 - min_ts).div_euclid(24).max(1);
    let top = |q: String| -> Box<dyn Fn(&Index) -> usize> {
        Box::new(move |index: &Index| {
            index
                .search(&Search {
                    query: q.clone(),
                    limit: Some(100),
                    ..Search::default()
                })
                .map_or(0, |p| p.records.len())
        })
    };
    let phrase_text = format!("\"{}\"", phrase.join(" "));
    let count_phrase_text = phrase_text.clone();
    let phrase_rg = format!(r"\b{}\b", phrase.join(r"\W+"));
    let (count_word, hist_word, hist_sql_word) = (common.clone(), common.clone(), common.clone());
    vec![
        BenchQuery {
            name: "rare word top-100",
            page: true,
            text: rare.clone(),
            lode: top(rare.clone()),
            sqlite: json!({"name": "rare word top-100", "kind": "top", "words": [rare]}),
            rg: vec!["-i".into(), "-w".into(), rare.clone()],
        },
        BenchQuery {
            name: "phrase top-100",
            page: true,
            text: phrase_text.clone(),
            lode: top(phrase_text),
            sqlite: json!({"name": "phrase top-100", "kind": "top", "words": phrase}),
            rg: vec!["-i".into(), phrase_rg.clone()],
        },
        BenchQuery {
            name: "common word top-100",
            page: true,
            text: common.clone(),
            lode: top(common.clone()),
            sqlite: json!({"name": "common word top-100", "kind": "top", "words": [common]}),
            rg: vec!["-i".into(), "-w".into(), common.clone()],
        },
        BenchQuery {
            name: "service:hdfs + word top-100",
            page: true,
            text: format!("service:hdfs {hdfs_word}"),
            lode: top(format!("service:hdfs {hdfs_word}")),
            sqlite: json!({"name": "service:hdfs + word top-100", "kind": "field_top", "words": [hdfs_word], "service": "hdfs"}),
            rg: vec!["-i".into(), format!(r#""service":"hdfs".*\b{hdfs_word}\b"#)],
        },
        BenchQuery {
            name: "count common word",
            page: false,
            text: common.clone(),
            lode: Box::new(move |index: &Index| {
                index.count(&count_word, None, None, None).unwrap_or(0) as usize
            }),
            sqlite: json!({"name": "count common word", "kind": "count", "words": [common]}),
            rg: vec!["-c".into(), "-i".into(), "-w".into(), common.clone()],
        },
        // Phrases are settled by reading each candidate's message: a count
        // reads them all.
        BenchQuery {
            name: "count phrase",
            page: false,
            text: count_phrase_text.clone(),
            lode: Box::new(move |index: &Index| {
                index
                    .count(&count_phrase_text, None, None, None)
                    .unwrap_or(0) as usize
            }),
            sqlite: json!({"name": "count phrase", "kind": "count", "words": phrase}),
            rg: vec!["-c".into(), "-i".into(), phrase_rg],
        },
        BenchQuery {
            name: "24-bucket histogram",
            page: false,
            text: common.clone(),
            lode: Box::new(move |index: &Index| {
                index
                    .histogram(
                        &hist_word,
                        None,
                        Some(min_ts),
                        Some(max_ts + 1),
                        Some(width),
                    )
                    .map_or(0, |h| h.buckets.len())
            }),
            sqlite: json!({"name": "24-bucket histogram", "kind": "histogram", "words": [hist_sql_word], "start": min_ts, "width": width, "since": min_ts, "until": max_ts + 1}),
            rg: vec!["-c".into(), "-i".into(), "-w".into(), common],
        },
    ]
}

fn sqlite_times(
    dir: &Path,
    jsonl: &Path,
    queries: &[BenchQuery],
    runs: usize,
) -> Result<HashMap<String, Vec<f64>>, Box<dyn std::error::Error>> {
    let spec = dir.join("queries.json");
    std::fs::write(
        &spec,
        serde_json::to_string(&queries.iter().map(|q| &q.sqlite).collect::<Vec<_>>())?,
    )?;
    let script = lode_benches::sqlite_script()?;
    eprintln!("loading SQLite FTS5 (this takes a while)");
    let output = Command::new("python3")
        .arg(script)
        .args([&jsonl.display().to_string(), &spec.display().to_string()])
        .arg(dir.join("fts5.db"))
        .arg(runs.to_string())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "sqlite reference failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    eprintln!(
        "SQLite FTS5 loaded in {:.1} s",
        result["load_secs"].as_f64().unwrap_or(f64::NAN)
    );
    let mut times = HashMap::new();
    if let Some(queries) = result["queries"].as_object() {
        for (name, q) in queries {
            let t: Vec<f64> = q["times"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_f64())
                .map(|s| s * 1e3)
                .collect();
            times.insert(name.clone(), t);
        }
    }
    Ok(times)
}

fn ripgrep_ms(
    args: &[String],
    jsonl: &Path,
    runs: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let output = Command::new("rg").args(args).arg(jsonl).output()?;
        // rg exits 1 when nothing matches; 2 is an error.
        if output.status.code() == Some(2) {
            return Err(format!("rg {args:?}: {}", String::from_utf8_lossy(&output.stderr)).into());
        }
        // "top-100 newest" is the last 100 lines: rg reads everything anyway.
        std::hint::black_box(output.stdout.len());
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut times))
}
