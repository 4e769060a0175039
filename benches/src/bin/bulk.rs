//! Bulk import and export, each beside its references in the same run:
//! `lode import --data` (embedded, offline) beside `lode ingest` of the same
//! file into a running `lode serve`, and beside SQLite FTS5 loading it; then
//! `lode export` of everything. Every tool runs as its own process, as a
//! user would run it; medians over runs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use clap::Parser;
use lode_benches::median;
use lode_tools::{Corpus, to_json_line};

/// Import/export benchmark.
///
///   bulk --records 1000000 --runs 3
#[derive(Parser, Debug)]
#[command(verbatim_doc_comment)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip the SQLite FTS5 reference (it takes minutes at 10M).
    #[arg(long)]
    no_sqlite: bool,
    /// Scratch directory (removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn lode() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    exe.parent().expect("target dir").join("lode")
}

/// Runs a command to completion; its wall time in seconds.
fn timed(command: &mut Command) -> f64 {
    let started = Instant::now();
    let output = command.output().expect("run a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed().as_secs_f64()
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `lode serve` with only the binary protocol; its address.
fn serve(data: &Path) -> (Serving, String) {
    let mut child = Command::new(lode())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--quic",
            "off",
            "--http",
            "off",
            "--syslog",
            "off",
            "--data",
        ])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lode serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("binary (tcp)").nth(1).map(|a| a.trim().to_owned()))
        .expect("the server's address");
    std::thread::spawn(move || lines.for_each(drop));
    (Serving(child), addr)
}

fn main() {
    let args = Args::parse();
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("lode-bulk-{}", std::process::id())));
    std::fs::create_dir_all(&root).expect("scratch dir");
    let input = root.join("records.jsonl");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&input).expect("input"));
        let mut corpus = Corpus::new(1);
        let mut line = Vec::new();
        for _ in 0..args.records {
            line.clear();
            to_json_line(None, &corpus.next_record(), &mut line);
            out.write_all(&line).expect("write input");
        }
    }
    let input_bytes = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
    let (mut import, mut ingest, mut sqlite, mut export, mut export_bytes) =
        (vec![], vec![], vec![], vec![], 0u64);
    for run in 0..args.runs.max(1) {
        let data = root.join(format!("import-{run}"));
        import.push(timed(
            Command::new(lode())
                .args(["import", "--data"])
                .arg(&data)
                .arg(&input),
        ));
        let out = root.join("export.jsonl");
        export.push(timed(
            Command::new(lode())
                .args(["export", "--data"])
                .arg(&data)
                .arg("-o")
                .arg(&out),
        ));
        export_bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_dir_all(&data);

        let served = root.join(format!("serve-{run}"));
        let (server, addr) = serve(&served);
        ingest.push(timed(
            Command::new(lode())
                .args(["ingest", "--server", &addr])
                .arg(&input),
        ));
        drop(server);
        let _ = std::fs::remove_dir_all(&served);

        if !args.no_sqlite {
            let db = root.join("fts.db");
            let script = lode_benches::sqlite_script().expect("the SQLite reference script");
            let output = Command::new("python3")
                .arg(script)
                .arg(&input)
                .arg("--load-only")
                .arg(&db)
                .output()
                .expect("python3");
            let text = String::from_utf8_lossy(&output.stdout);
            let secs: f64 = serde_json::from_str::<serde_json::Value>(text.trim())
                .ok()
                .and_then(|v| v.get("load_secs").and_then(serde_json::Value::as_f64))
                .expect("sqlite load time");
            sqlite.push(secs);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
        eprintln!("run {} done", run + 1);
    }
    let n = args.records as f64;
    let rate = |secs: &mut Vec<f64>| n / median(secs);
    let import_rate = rate(&mut import);
    let ingest_rate = rate(&mut ingest);
    println!(
        "bulk: {} generated JSON lines ({:.0} MB), medians of {} runs",
        args.records,
        input_bytes as f64 / 1e6,
        args.runs
    );
    println!("{:<52} {:>12} {:>10}", "load", "records/s", "MB/s");
    let mb = |rate: f64| rate * input_bytes as f64 / n / 1e6;
    println!(
        "{:<52} {import_rate:>12.0} {:>10.1}",
        "lode import --data (embedded, durable at the end)",
        mb(import_rate)
    );
    println!(
        "{:<52} {ingest_rate:>12.0} {:>10.1}",
        "lode ingest to a running server (acknowledged)",
        mb(ingest_rate)
    );
    println!(
        "ratio import / online ingest: {:.2}x (target >= 2)",
        import_rate / ingest_rate
    );
    if !sqlite.is_empty() {
        let sqlite_rate = rate(&mut sqlite);
        println!(
            "{:<52} {sqlite_rate:>12.0} {:>10.1}",
            "SQLite FTS5 load (python, executemany)",
            mb(sqlite_rate)
        );
        println!(
            "ratio import / SQLite FTS5: {:.2}x (target >= 5)",
            import_rate / sqlite_rate
        );
    }
    let export_secs = median(&mut export);
    println!(
        "lode export --data of all {} records: {:.2} s, {:.0} MB of JSON lines, {:.1} MB/s (target >= 200)",
        args.records,
        export_secs,
        export_bytes as f64 / 1e6,
        export_bytes as f64 / 1e6 / export_secs
    );
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
