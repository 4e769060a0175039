//! Reopen after a crash with a large unsealed WAL, beside the floor of any
//! recovery that checks its bytes: reading the same files and computing
//! their crc32c.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use lode_benches::median;
use lode_engine::{Durability, Engine, Options};
use lode_tools::Corpus;

/// Fill a data directory with `--mib` MiB of unsealed WAL in a child
/// process, SIGKILL it, then time `Engine::open` beside a plain read +
/// crc32c of the same WAL files (page cache warm for both).
///
/// Example:
///   cargo run --release -p lode-benches --bin engine-reopen -- --mib 1024 --runs 3
#[derive(Parser, Debug)]
#[command(verbatim_doc_comment)]
struct Args {
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Internal: fill `--dir` and wait to be killed.
    #[arg(long, hide = true)]
    fill: bool,
}

fn options() -> Options {
    Options {
        segment_bytes: 1 << 40,
        durability: Durability::Buffered {
            window: Duration::from_millis(100),
        },
        ..Options::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.fill {
        return fill(&args.dir, args.mib << 20);
    }
    let dir = args
        .dir
        .join(format!("lode-bench-reopen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let acked = crash_filled(&dir, args.mib)?;
    let (mut open_secs, mut read_secs) = (Vec::new(), Vec::new());
    let mut wal_bytes = 0;
    for _ in 0..args.runs {
        let (secs, bytes) = read_and_crc(&dir.join("wal"))?;
        read_secs.push(secs);
        wal_bytes = bytes;
        let start = Instant::now();
        let engine = Engine::open(&dir, options())?;
        open_secs.push(start.elapsed().as_secs_f64());
        let stats = engine.stats();
        if stats.next_seq - 1 < acked {
            return Err(format!(
                "reopened with {} records, {acked} were acknowledged",
                stats.next_seq - 1
            )
            .into());
        }
        // Leave the WAL as it is: forget the engine without sealing.
        engine.close()?;
    }
    std::fs::remove_dir_all(&dir)?;
    let (open, read) = (median(&mut open_secs), median(&mut read_secs));
    println!(
        "engine-reopen: {:.0} MiB of unsealed WAL, {} acknowledged records, medians of {} runs",
        wal_bytes as f64 / 1048576.0,
        acked,
        args.runs
    );
    println!("lode Engine::open        {open:.3} s  (target < 2 s)");
    println!("read + crc32c (floor)    {read:.3} s");
    println!("ratio open / floor       {:.2}x", open / read);
    Ok(())
}

/// Runs the filler child until it reports, then SIGKILLs it; returns the
/// number of records it had acknowledged.
fn crash_filled(dir: &Path, mib: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--fill",
            &format!("--mib={mib}"),
            &format!("--dir={}", dir.display()),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    child.kill()?;
    child.wait()?;
    line.trim()
        .strip_prefix("acked ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("filler said {line:?}").into())
}

fn fill(dir: &Path, bytes: u64) -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::open(dir, options())?;
    let mut corpus = Corpus::new(3);
    let mut acked = 0;
    while engine.stats().wal_bytes < bytes {
        let range = engine.append(&corpus.take_records(1000))?;
        acked = range.end - 1;
    }
    // Make the buffered window durable to the page cache, then be killed.
    std::thread::sleep(Duration::from_millis(300));
    println!("acked {acked}");
    std::thread::sleep(Duration::from_secs(3600));
    Ok(())
}

fn read_and_crc(wal: &Path) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    for entry in std::fs::read_dir(wal)? {
        let mut file = std::fs::File::open(entry?.path())?;
        let mut crc = 0u32;
        loop {
            let n = file.read(&mut buf)?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            crc = crc32c::crc32c_append(crc, chunk);
            total += n as u64;
        }
        std::hint::black_box(crc);
    }
    Ok((start.elapsed().as_secs_f64(), total))
}
