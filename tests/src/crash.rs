//! SIGKILL crash test: a child process appends in a loop (with tiny
//! segments, so it is also sealing all the time) and is killed at random
//! moments; after each kill the data directory is reopened and every
//! acknowledged record must be there, intact, with nothing else.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lode_engine::{Engine, Options};
use lode_tools::SplitMix64;

use crate::record_for;

const DIR_VAR: &str = "LODE_CRASH_DIR";
const KILLS: usize = 60;

fn options() -> Options {
    Options {
        segment_bytes: 256 << 10,
        tick: Duration::from_millis(20),
        ..Options::default()
    }
}

/// The child's body; runs only when the parent test starts it.
#[test]
#[ignore = "run by crash::sigkill_during_appends_and_seals in a child process"]
fn child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let engine = Engine::open(&dir, options()).expect("child open");
    let mut next = engine.stats().next_seq;
    let mut rng = SplitMix64::new(next);
    println!("ready {next}");
    loop {
        let n = 1 + rng.below(40);
        let batch: Vec<_> = (next..next + n).map(record_for).collect();
        let range = engine.append(&batch).expect("child append");
        assert_eq!(range.start, next, "seqs are dense and in order");
        println!("ack {}", range.end - 1);
        next = range.end;
    }
}

/// Starts the child, kills it with SIGKILL `delay` after it is ready (or
/// after it starts, if `during_open`), returns the highest seq it reported
/// acknowledged.
fn run_and_kill(dir: &Path, delay: Duration, during_open: bool) -> u64 {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "crash::child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = 0u64;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(seq) = line.strip_prefix("ack ").and_then(|s| s.parse().ok()) {
                acked = seq;
            } else if line.contains("ready ") {
                // libtest may print "test crash::child ... " before it.
                let _ = tx.send(());
            }
        }
        acked
    });
    if !during_open {
        let _ = rx.recv_timeout(Duration::from_secs(20));
    }
    std::thread::sleep(delay);
    // Child::kill sends SIGKILL on Unix.
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    reader.join().expect("reader thread")
}

fn verify(dir: &Path, acked: u64, verified_upto: &mut u64) {
    let engine = Engine::open(dir, options()).expect("reopen after SIGKILL");
    let stats = engine.stats();
    let last = stats.next_seq - 1;
    assert!(
        last >= acked,
        "acknowledged up to {acked}, only {last} recovered"
    );
    assert_eq!(stats.first_seq, 1, "nothing was dropped");
    // Everything written since the last check, and a sample before it.
    let from = verified_upto.saturating_sub(200).max(1);
    let mut expected = from;
    for record in engine.scan(from..) {
        let record = record.expect("read recovered record");
        assert_eq!(record.seq, expected, "seqs are dense");
        assert_eq!(
            record.log,
            record_for(record.seq),
            "record {} intact",
            record.seq
        );
        expected += 1;
    }
    assert_eq!(expected, stats.next_seq, "nothing beyond the durable end");
    *verified_upto = last;
    engine.close().expect("close");
}

#[test]
fn sigkill_during_appends_and_seals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = SplitMix64::new(0x5eed);
    let started = Instant::now();
    let mut verified_upto = 0;
    let mut max_acked = 0;
    for kill in 0..KILLS {
        // One run in five is killed while it opens (recovering, sealing what
        // the previous run left), the others while they append and seal.
        let during_open = kill % 5 == 0;
        let delay = Duration::from_millis(if during_open {
            rng.below(15)
        } else {
            1 + rng.below(120)
        });
        let acked = run_and_kill(dir.path(), delay, during_open);
        max_acked = max_acked.max(acked);
        verify(dir.path(), max_acked, &mut verified_upto);
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "crash test is taking too long"
        );
    }
    // A final full pass over everything ever acknowledged.
    let engine = Engine::open(dir.path(), options()).expect("final open");
    let mut count = 0;
    for (i, record) in engine.scan(..).enumerate() {
        let record = record.expect("read");
        assert_eq!(record.seq, i as u64 + 1);
        assert_eq!(record.log, record_for(record.seq));
        count += 1;
    }
    assert!(
        count >= max_acked,
        "{count} records, {max_acked} acknowledged"
    );
    assert!(engine.stats().sealed_segments > 0, "kills also hit sealing");
}
