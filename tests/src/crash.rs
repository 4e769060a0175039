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
        sealed_block_bytes: 16 << 10,
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

const INSTALL_VAR: &str = "LODE_CRASH_INSTALL";

/// A replicated log's options for the install crash test: small
/// segments, so that a snapshot has many files to install.
fn replicated_options() -> Options {
    Options {
        replicated: true,
        segment_bytes: 8 << 10,
        tick: Duration::from_millis(5),
        ..Options::default()
    }
}

/// What the install child installs, as the parent staged it.
struct InstallPlan {
    segments: Vec<lode_engine::SegmentMeta>,
    staged: std::path::PathBuf,
    through: u64,
    end_seq: u64,
}

impl InstallPlan {
    fn file(&self, segment: &lode_engine::SegmentMeta) -> std::path::PathBuf {
        self.staged.join(format!("{}.sst", segment.first_seq))
    }

    /// Writes the plan beside the staged files: each segment's manifest
    /// entry, length-prefixed, after the snapshot's bounds.
    fn save(&self) -> std::path::PathBuf {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&self.through.to_le_bytes());
        bytes.extend_from_slice(&self.end_seq.to_le_bytes());
        for segment in &self.segments {
            let encoded = segment.encode();
            bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&encoded);
        }
        let path = self.staged.join("plan");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn load(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (through, end_seq) = (u64_at(0), u64_at(8));
        let mut segments = Vec::new();
        let mut at = 16;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            segments.push(lode_engine::SegmentMeta::decode(&bytes[at + 4..at + 4 + len]).unwrap());
            at += 4 + len;
        }
        InstallPlan {
            segments,
            staged: path.parent().unwrap().to_owned(),
            through,
            end_seq,
        }
    }
}

/// The install child's body: opens the follower in `dir` and installs the
/// plan's snapshot, unless a killed run already did.
#[test]
#[ignore = "run by crash::sigkill_during_snapshot_installs in a child process"]
fn install_child() {
    let (Ok(dir), Ok(plan)) = (std::env::var(DIR_VAR), std::env::var(INSTALL_VAR)) else {
        return;
    };
    let plan = InstallPlan::load(Path::new(&plan));
    let engine = Engine::open(&dir, replicated_options()).expect("child open");
    println!("ready");
    if engine.snapshot().expect("snapshot").map(|(i, _)| i) != Some(plan.through) {
        let files = plan
            .segments
            .iter()
            .map(|s| (s.clone(), plan.file(s)))
            .collect();
        engine
            .install_snapshot(lode_engine::SnapshotInstall {
                segments: plan.segments.clone(),
                files,
                floor: 1,
                through: plan.through,
                end_seq: plan.end_seq,
                description: b"installed".to_vec(),
                settings: None,
                keys: Vec::new(),
            })
            .expect("install");
    }
    engine.close().expect("close");
    println!("installed");
}

/// Starts the install child and kills it `delay` after it opened, or lets
/// it finish when `delay` is `None`; returns how long after it opened it
/// reported the install done, if it did.
fn install_and_kill(dir: &Path, plan: &Path, delay: Option<Duration>) -> Option<Duration> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash::install_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(INSTALL_VAR, plan)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut ready = None;
        let mut done = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ready") {
                ready = Some(Instant::now());
                let _ = tx.send(());
            }
            if line.contains("installed") {
                done = ready.map(|r: Instant| r.elapsed());
            }
        }
        done
    });
    let _ = rx.recv_timeout(Duration::from_secs(60));
    match delay {
        Some(delay) => {
            std::thread::sleep(delay);
            child.kill().unwrap();
            child.wait().unwrap();
        }
        None => {
            // Bounded: an install that hangs fails the test, not CI.
            let deadline = Instant::now() + Duration::from_secs(120);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    panic!("the install child did not finish within 120 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "the install child failed");
        }
    }
    reader.join().unwrap()
}

/// A follower killed at random points of a snapshot install (while it
/// links, ingests and swaps the manifest) reopens each time, installs
/// again, and ends with the leader's records, each once.
#[test]
fn sigkill_during_snapshot_installs() {
    const INSTALL_KILLS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let opts = replicated_options();
    let leader = Engine::open(dir.path().join("leader"), opts.clone()).unwrap();
    let entries: Vec<_> = (0..400u64)
        .map(|i| {
            let records: Vec<_> = (i * 20 + 1..i * 20 + 21).map(record_for).collect();
            (
                1,
                i + 1,
                std::sync::Arc::new(lode_engine::EncodedBatch::encode(&records).unwrap()),
            )
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    leader
        .append_entries(entries, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
    rx.recv().unwrap().unwrap();
    leader.apply(400).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while leader.segments().len() < 40 {
        assert!(Instant::now() < deadline, "the leader sealed too little");
        std::thread::sleep(Duration::from_millis(10));
    }
    let segments = leader.segments();
    let last = segments.last().unwrap().clone();
    let plan = InstallPlan {
        segments,
        staged: dir.path().join("staged"),
        through: last.last_index,
        end_seq: last.last_seq + 1,
    };
    std::fs::create_dir_all(&plan.staged).unwrap();
    for segment in &plan.segments {
        std::fs::copy(leader.segment_file(segment).unwrap(), plan.file(segment)).unwrap();
    }
    let want: Vec<_> = leader
        .scan(..plan.end_seq)
        .map(|r| r.unwrap().log)
        .collect();
    leader.close().unwrap();
    let plan_path = plan.save();
    // How long one whole install takes here, then kills spread over it.
    let started = Instant::now();
    let whole = install_and_kill(&dir.path().join("timing"), &plan_path, None).unwrap();
    // The follower holds the leader's records, and its log goes on after
    // the snapshot with the snapshot's next seq, across a reopen.
    let verify = |follower: &Path| {
        let engine = Engine::open(follower, replicated_options()).unwrap();
        let got: Vec<_> = engine.scan(..).map(|r| r.unwrap().log).collect();
        assert_eq!(got.len(), want.len(), "every record once");
        assert!(got == want, "the follower's records are the leader's");
        let next = plan.through + 1;
        let batch = lode_engine::EncodedBatch::encode(&[record_for(plan.end_seq)]).unwrap();
        let (tx, rx) = mpsc::channel();
        engine
            .append_entries(vec![(1, next, std::sync::Arc::new(batch))], move |r| {
                let _ = tx.send(r);
            })
            .unwrap();
        rx.recv().unwrap().unwrap();
        let seqs = engine.apply(next).unwrap();
        assert_eq!(
            seqs.last().map(|(_, r)| r.start),
            Some(plan.end_seq),
            "the entry after the snapshot takes the snapshot's next seq"
        );
        engine.close().unwrap();
        // Reopened, the log applies that entry again with the same seq.
        let engine = Engine::open(follower, replicated_options()).unwrap();
        let seqs = engine.apply(next).unwrap();
        assert_eq!(seqs.last().map(|(_, r)| r.start), Some(plan.end_seq));
        engine.close().unwrap();
    };
    // Each follower is killed until a run of it ends the install (the
    // kill then hits what follows: freeing, sealing, closing); the next
    // starts empty.
    let mut rng = SplitMix64::new(0x1a57);
    let mut followers = 0;
    let mut follower = dir.path().join("follower-0");
    for _ in 0..INSTALL_KILLS {
        let delay = Duration::from_micros(rng.below(2 * whole.as_micros() as u64));
        if install_and_kill(&follower, &plan_path, Some(delay)).is_some() {
            verify(&follower);
            followers += 1;
            follower = dir.path().join(format!("follower-{followers}"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the install crash test is taking too long"
        );
    }
    install_and_kill(&follower, &plan_path, None).unwrap();
    verify(&follower);
    eprintln!("{INSTALL_KILLS} kills over installs of {whole:?}: {followers} followers installed");
}
