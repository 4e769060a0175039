//! Tests of the engine's API as a whole: subscriptions, retention, limits,
//! locking, durability modes and poisoning. (Crash, model and fixture
//! tests are in the `lode-tests` crate.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::Arc;

use crate::{Durability, Engine, Error, Level, LogRecord, Options, Retention, RetentionReport};

fn record(i: u64) -> LogRecord {
    LogRecord {
        ts: 1_000_000_000_000 + i as i64 * 1_000_000_000,
        level: Level::Info,
        service: "svc".into(),
        host: "h1".into(),
        attrs: vec![("i".into(), i.to_string())],
        message: format!("message {i} {}", "pad ".repeat((i % 20) as usize)),
        tenant: String::new(),
    }
}

fn records(range: std::ops::Range<u64>) -> Vec<LogRecord> {
    range.map(record).collect()
}

#[test]
fn settings_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    assert!(engine.settings().is_empty());
    let before = engine.settings_generation();
    engine.put_setting("token/a", Some(b"one")).unwrap();
    engine.put_setting("token/b", Some(b"two")).unwrap();
    engine.put_setting("token/a", None).unwrap();
    assert!(engine.settings_generation() > before);
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    let settings = engine.settings();
    assert_eq!(settings.len(), 1);
    assert_eq!(
        settings.get("token/b").map(Vec::as_slice),
        Some(&b"two"[..])
    );
}

#[test]
fn subscription_follows_appends_across_seals() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 4096,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    engine.append(&records(0..10)).unwrap();
    let mut sub = engine.subscribe(5);
    let reader = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        while seqs.len() < 200 {
            match sub.next_timeout(Duration::from_secs(10)).unwrap() {
                Some(r) => seqs.push(r.seq),
                None => break,
            }
        }
        seqs
    });
    for start in (10..400).step_by(30) {
        engine.append(&records(start..start + 30)).unwrap();
        if start == 100 {
            // The sealer runs at low priority; make sure segments the
            // subscription still has to read are sealed under it.
            engine.seal().unwrap();
        }
    }
    let seqs = reader.join().unwrap();
    assert_eq!(seqs, (5..205).collect::<Vec<_>>());
    assert!(
        engine.stats().seals > 0,
        "the subscription crossed sealed segments"
    );
}

#[test]
fn subscription_times_out_and_ends_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    let mut sub = engine.subscribe(1);
    assert!(
        sub.next_timeout(Duration::from_millis(20))
            .unwrap()
            .is_none()
    );
    engine.append(&records(0..1)).unwrap();
    assert_eq!(
        sub.next_timeout(Duration::from_secs(5))
            .unwrap()
            .unwrap()
            .seq,
        1
    );
    engine.close().unwrap();
    assert!(
        sub.next().is_none(),
        "iteration ends once the engine is closed"
    );
}

#[test]
fn retention_drops_whole_oldest_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        retention: Retention {
            max_age: Some(Duration::from_secs(100)),
            max_bytes: None,
        },
        ..Options::default()
    };
    // Timestamps from the wall clock on, one second apart, so the
    // background pass (which uses the wall clock) drops nothing by itself.
    let base = crate::shared::now_ns();
    let dated = |range: std::ops::Range<u64>| -> Vec<LogRecord> {
        range
            .map(|i| LogRecord {
                ts: base + i as i64 * 1_000_000_000,
                ..record(i)
            })
            .collect()
    };
    let engine = Engine::open(dir.path(), opts.clone()).unwrap();
    for segment in 0..4u64 {
        engine
            .append(&dated(segment * 100..segment * 100 + 100))
            .unwrap();
        engine.seal().unwrap();
    }
    assert_eq!(engine.segments().len(), 4);
    // Segment 1 holds ts up to base + 199 s; "now" = base + 300 s drops the
    // first two (their newest records are older than 100 s).
    let now = base + 300 * 1_000_000_000;
    let report = engine.enforce_retention(now).unwrap();
    assert_eq!((report.segments, report.records), (2, 200));
    let stats = engine.stats();
    assert_eq!(
        (
            stats.first_seq,
            stats.dropped_segments,
            stats.dropped_records
        ),
        (201, 2, 200)
    );
    assert!(engine.get(200).unwrap().is_none());
    assert_eq!(engine.get(201).unwrap().unwrap().log, dated(200..201)[0]);
    assert_eq!(engine.scan(..).count(), 200);
    engine.close().unwrap();

    let engine = Engine::open(dir.path(), opts).unwrap();
    assert_eq!(engine.stats().first_seq, 201);
    assert_eq!(engine.scan(..).count(), 200);
    let bytes_opts = Options {
        retention: Retention {
            max_age: None,
            max_bytes: Some(1),
        },
        ..Options::default()
    };
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), bytes_opts).unwrap();
    // The background pass at open may get there first; either way, after
    // an explicit pass max_bytes has dropped segments until the rest fits.
    engine.enforce_retention(0).unwrap();
    assert!(engine.segments().is_empty());
    assert_eq!(engine.stats().first_seq, 401);
    // The WAL is never dropped: new records after retention are all there.
    engine.append(&records(400..410)).unwrap();
    assert_eq!(engine.scan(..).count(), 10);
}

#[test]
fn second_open_is_refused_with_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let _engine = Engine::open(dir.path(), Options::default()).unwrap();
    match Engine::open(dir.path(), Options::default()) {
        Err(Error::Locked { holder, .. }) => {
            assert_eq!(holder, format!("pid {}", std::process::id()))
        }
        other => panic!("expected a lock error, got {other:?}"),
    }
}

#[test]
fn limits_and_empty_batches() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_batch_bytes: 10_000,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    let empty = engine.append(&[]).unwrap();
    assert!(empty.is_empty());
    match engine.append(&records(0..500)) {
        Err(Error::BatchTooLarge {
            limit: 10_000,
            bytes,
        }) => assert!(bytes > 10_000),
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    let range = engine.append(&records(0..3)).unwrap();
    assert_eq!(
        (range.start, range.end),
        (1, 4),
        "a refused batch takes no seqs"
    );
    let bad = Options {
        segment_bytes: 10,
        ..Options::default()
    };
    assert!(matches!(
        Engine::open(tempfile::tempdir().unwrap().path(), bad),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn failed_fsync_poisons_writes_but_keeps_reads() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    engine.append(&records(0..5)).unwrap();
    engine.shared.fail_next_sync.store(true, Ordering::Release);
    assert!(matches!(
        engine.append(&records(5..10)),
        Err(Error::Poisoned { .. })
    ));
    match engine.append(&records(10..15)) {
        Err(Error::Poisoned { cause }) => assert!(cause.contains("fsync"), "{cause}"),
        other => panic!("expected poisoned, got {other:?}"),
    }
    assert!(engine.stats().poisoned.is_some());
    assert_eq!(
        engine.get(3).unwrap().unwrap().log,
        record(2),
        "reads still work"
    );
    assert!(engine.close().is_err(), "close reports the poisoning");
    // A restart recovers what is on disk; the five acknowledged are there.
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    assert!(engine.stats().next_seq >= 6);
    assert!(engine.scan(1..6).map(|r| r.unwrap().log).eq(records(0..5)));
}

#[test]
fn buffered_durability_acknowledges_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        durability: Durability::Buffered {
            window: Duration::from_millis(5),
        },
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts.clone()).unwrap();
    for start in (0..1000).step_by(100) {
        engine.append(&records(start..start + 100)).unwrap();
    }
    assert!(engine.stats().group_commits >= 1);
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), opts).unwrap();
    assert!(engine.scan(..).map(|r| r.unwrap().log).eq(records(0..1000)));
}

#[test]
fn old_segments_are_sealed_by_age_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_age: Duration::from_millis(50),
        tick: Duration::from_millis(10),
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    engine.append(&records(0..10)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.stats().sealed_records < 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = engine.stats();
    assert_eq!((stats.sealed_records, stats.unsealed_records), (10, 0));
    assert_eq!(engine.segments()[0].records, 10);
}

#[test]
fn concurrent_appenders_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(Engine::open(dir.path(), Options::default()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let engine = std::sync::Arc::clone(&engine);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let base = (t * 1000 + i * 10) as u64;
                    engine.append(&records(base..base + 10)).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = engine.stats();
    assert_eq!((stats.appends, stats.appended_records), (200, 2000));
    assert!(stats.group_commits <= stats.appends);
    let mut seen: Vec<String> = engine
        .scan(..)
        .map(|r| r.unwrap().attrs[0].1.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2000, "every record once");
}

/// Records 1..=300 sealed, 301..=450 still in the WAL.
fn sealed_and_unsealed(dir: &std::path::Path) -> Engine {
    let engine = Engine::open(dir, Options::default()).unwrap();
    engine.append(&records(0..300)).unwrap();
    engine.seal().unwrap();
    engine.append(&records(300..450)).unwrap();
    engine
}

#[test]
fn get_many_answers_in_the_order_asked_from_both_sources() {
    let dir = tempfile::tempdir().unwrap();
    let engine = sealed_and_unsealed(dir.path());
    let stats = engine.stats();
    assert!(stats.sealed_records > 0 && stats.unsealed_records > 0);
    // Newest first, sealed and unsealed mixed, a repeat, and seqs that
    // are not there (0 is never used, 451 is past the end).
    let asked = [449, 450, 12, 301, 451, 0, 299, 1, 12];
    let got = engine.get_many(&asked).unwrap();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![449, 450, 12, 301, 299, 1]);
    for record in &got {
        assert_eq!(Some(record), engine.get(record.seq).unwrap().as_ref());
        assert_eq!(record.log, self::record(record.seq - 1));
    }
    assert!(engine.get_many(&[]).unwrap().is_empty());
}

#[test]
fn visit_reads_in_place_what_scan_copies() {
    let dir = tempfile::tempdir().unwrap();
    let engine = sealed_and_unsealed(dir.path());
    let mut seen = Vec::new();
    let next = engine
        .visit(100..420, |seq, r| {
            seen.push((seq, r.to_owned_record().unwrap()))
        })
        .unwrap();
    assert_eq!(next, 420);
    let scanned: Vec<_> = engine
        .scan(100..420)
        .map(|r| r.map(|r| (r.seq, r.log)).unwrap())
        .collect();
    assert_eq!(seen, scanned);
    assert!(
        engine.stats().sealed_records > 0 && engine.stats().unsealed_records > 0,
        "both sources visited"
    );
    assert!(engine.wait_for(450, Duration::ZERO));
    assert!(!engine.wait_for(451, Duration::from_millis(10)));
    assert_eq!(engine.next_seq(), 451);
}

#[test]
fn buffered_appends_are_made_durable_by_sync_and_a_failed_sync_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        durability: crate::Durability::Buffered {
            window: std::time::Duration::from_secs(3600),
        },
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts.clone()).unwrap();
    engine.append(&records(0..5)).unwrap();
    engine.sync().unwrap();
    engine.sync().unwrap(); // nothing new: no fsync needed, still fine
    engine.append(&records(5..10)).unwrap();
    engine.shared.fail_next_sync.store(true, Ordering::Release);
    match engine.sync() {
        Err(Error::Io { op, .. }) => assert_eq!(op, "fsync"),
        other => panic!("expected the fsync error, got {other:?}"),
    }
    assert!(matches!(
        engine.append(&records(10..11)),
        Err(Error::Poisoned { .. })
    ));
    drop(engine);
    let engine = Engine::open(dir.path(), opts).unwrap();
    assert!(engine.scan(1..6).map(|r| r.unwrap().log).eq(records(0..5)));
}

/// The calling thread's (nice, scheduling policy), from /proc.
fn thread_priority() -> (i64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name, which is in parentheses: state is
    // field 3, nice field 19, policy field 41.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (rest[19 - 3].parse().unwrap(), rest[41 - 3].parse().unwrap())
}

#[test]
fn background_priorities_are_applied_to_the_calling_thread() {
    use crate::{Background, lower_thread_priority};
    const SCHED_OTHER: u64 = 0;
    const SCHED_IDLE: u64 = 5;
    let on_a_thread = |priority| {
        std::thread::spawn(move || {
            let before = thread_priority();
            lower_thread_priority(priority);
            (before, thread_priority())
        })
        .join()
        .unwrap()
    };
    let (before, after) = on_a_thread(Background::Idle);
    assert_eq!((before.1, after.1), (SCHED_OTHER, SCHED_IDLE));
    let (before, after) = on_a_thread(Background::Nice(3));
    if before.0 <= 3 {
        assert_eq!(after, (3, SCHED_OTHER));
    }
    assert_eq!(on_a_thread(Background::Normal).1, thread_priority());
}

/// While someone waits for background work, idle threads run as normal
/// ones; idle again once nobody waits (where the process may raise them:
/// otherwise they stay idle).
#[test]
fn idle_threads_are_raised_while_someone_waits_for_them() {
    use crate::hurry_background;
    const SCHED_OTHER: u64 = 0;
    const SCHED_IDLE: u64 = 5;
    let idle = IdleThread::start();
    let policy = || idle.policy();
    assert_eq!(policy(), SCHED_IDLE);
    let may_raise = {
        let param = libc::sched_param { sched_priority: 0 };
        #[allow(unsafe_code)]
        // SAFETY: a valid sched_param; pid 0 is this thread, set back
        // below.
        let raised = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param);
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &raw const param)
        };
        raised == 0
    };
    let first = hurry_background();
    let second = hurry_background();
    let want = if may_raise { SCHED_OTHER } else { SCHED_IDLE };
    assert_eq!(policy(), want, "raised while someone waits");
    drop(first);
    assert_eq!(policy(), want, "someone still waits");
    // A thread that lowers itself while someone waits (a sealer that
    // starts then) is raised by the waiter's next look.
    let late = IdleThread::start();
    let late_policy = || late.policy();
    // Answering means it has lowered itself (another test's wait may
    // have raised it already: its policy is not asserted here).
    let _ = late_policy();
    second.again();
    assert_eq!(late_policy(), want, "raised by the next look");
    drop(second);
    // Other tests of this process may be waiting for their engines: idle
    // again once the last of them stops.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while policy() != SCHED_IDLE || late_policy() != SCHED_IDLE {
        assert!(std::time::Instant::now() < deadline, "idle again");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A thread that lowers itself to `SCHED_IDLE` and tells its policy when
/// asked; it ends when dropped.
struct IdleThread {
    ask: std::sync::mpsc::Sender<()>,
    told: std::sync::mpsc::Receiver<u64>,
}

impl IdleThread {
    fn start() -> IdleThread {
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            crate::lower_thread_priority(crate::Background::Idle);
            while asked.recv().is_ok() {
                tell.send(thread_priority().1).unwrap();
            }
        });
        IdleThread { ask, told }
    }

    /// Its scheduling policy; answering means it has lowered itself.
    fn policy(&self) -> u64 {
        self.ask.send(()).unwrap();
        self.told.recv().unwrap()
    }
}

/// A replicated log drops only what its log decided: its own policy is
/// never applied by the background pass; `drop_below` carries a decision
/// out, and it survives a reopen.
#[test]
fn a_replicated_log_drops_only_on_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        replicated: true,
        retention: Retention {
            max_age: None,
            max_bytes: Some(1),
        },
        tick: Duration::from_millis(10),
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts.clone()).unwrap();
    for index in 1..=4u64 {
        let start = (index - 1) * 100;
        let batch = Arc::new(crate::EncodedBatch::encode(&records(start..start + 100)).unwrap());
        let (tx, rx) = crossbeam_channel::bounded(1);
        engine
            .append_entries(vec![(1, index, batch)], move |r| {
                let _ = tx.send(r);
            })
            .unwrap();
        rx.recv().unwrap().unwrap();
        engine.apply(index).unwrap();
        engine.seal().unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(engine.stats().first_seq, 1, "no drop without a decision");
    // Each segment's SST is kept as sealed: the bytes its manifest entry
    // names, ready to be sent.
    let segments = engine.segments();
    assert_eq!(segments.len(), 4);
    for segment in &segments {
        let file = engine.segment_file(segment).expect("the segment's file");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(
            (bytes.len() as u64, crc32c::crc32c(&bytes)),
            (segment.sst_bytes, segment.sst_crc32c)
        );
        assert!(segment.records_crc32c.is_some());
    }
    assert_eq!(
        engine.retention_floor(0),
        Some(401),
        "the policy would drop all four"
    );
    let report = engine.drop_below(201).unwrap();
    assert_eq!((report.segments, report.records), (2, 200));
    assert_eq!(engine.scan(..).count(), 200);
    assert_eq!(
        engine.drop_below(101).unwrap(),
        RetentionReport::default(),
        "below the floor: nothing"
    );
    assert!(
        engine.segment_file(&segments[0]).is_none(),
        "a dropped segment's file goes"
    );
    assert!(engine.segment_file(&segments[2]).is_some());
    engine.close().unwrap();
    // A file no sealed segment names (a crash between linking and
    // committing a seal) is deleted at open.
    std::fs::write(
        dir.path().join("segments").join("00000000000000009999.sst"),
        b"x",
    )
    .unwrap();
    let engine = Engine::open(dir.path(), opts).unwrap();
    assert_eq!(engine.stats().first_seq, 201);
    assert_eq!(engine.scan(..).count(), 200);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .collect();
    assert_eq!(left.len(), 2, "the two kept segments' files");
}

/// A segment sealed in many chunks reads back whole, by scans from any
/// seq and by scattered point reads, and a floor inside one of its
/// chunks hides exactly the records below it, also after reopening.
#[test]
fn a_floor_inside_a_chunk_hides_what_is_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sealed_block_bytes: 1024,
        background_sealing: false,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts.clone()).unwrap();
    engine.append(&records(0..300)).unwrap();
    engine.seal().unwrap();
    assert_eq!(engine.stats().sealed_records, 300);
    let check = |engine: &Engine, first: u64| {
        let all: Vec<_> = engine.scan(..).map(Result::unwrap).collect();
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (first..=300).collect::<Vec<_>>());
        for r in &all {
            assert_eq!(r.log, record(r.seq - 1));
        }
        for from in [first, first + 1, 150.max(first), 299] {
            let got: Vec<u64> = engine
                .scan(from..from + 7)
                .map(|r| r.unwrap().seq)
                .collect();
            let expected: Vec<u64> = (from.max(first)..(from + 7).min(301)).collect();
            assert_eq!(got, expected);
        }
        let wanted = [
            1, 2, 17, 18, 19, 150, 151, 152, 153, 154, 155, 156, 157, 299, 300,
        ];
        let got = engine.get_many(&wanted).unwrap();
        let expected: Vec<u64> = wanted.into_iter().filter(|&s| s >= first).collect();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
        for r in &got {
            assert_eq!(r.log, record(r.seq - 1));
        }
    };
    check(&engine, 1);
    engine.drop_below(153).unwrap();
    check(&engine, 153);
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), opts).unwrap();
    check(&engine, 153);
    engine.drop_below(300).unwrap();
    check(&engine, 300);
    engine.drop_below(301).unwrap();
    assert_eq!(engine.scan(..).count(), 0);
}

/// Every sealed segment has a key at its first and at its last seq (its
/// first chunk's, and its last chunk's or an end marker), however its
/// records fall into chunks: a snapshot install deletes the files whose
/// keys lie within a replaced segment's seqs, and must not take a file
/// that holds more.
#[test]
fn a_sealed_file_has_keys_at_both_ends_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sealed_block_bytes: 300,
        background_sealing: false,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    let mut next = 0;
    for size in 1..=40 {
        engine.append(&records(next..next + size)).unwrap();
        engine.seal().unwrap();
        next += size;
    }
    let keys = engine.shared.store.record_keys().unwrap();
    let segments = engine.segments();
    assert_eq!(segments.len(), 40);
    for segment in &segments {
        for end in [segment.first_seq, segment.last_seq] {
            assert!(
                keys.binary_search(&end).is_ok(),
                "no key at {end} of segment {}..={}",
                segment.first_seq,
                segment.last_seq
            );
        }
    }
    assert_eq!(engine.scan(..).count() as u64, next);
}

/// Two nodes' logs that receive the same entries in other groupings (and
/// one reopened half way) cut their files, hence their sealed segments,
/// at the same entries: what a snapshot compares.
#[test]
fn replicated_logs_seal_at_the_same_entries_however_entries_arrive() {
    let opts = Options {
        replicated: true,
        segment_bytes: 8 << 10,
        segment_age: Duration::from_millis(1),
        tick: Duration::from_millis(5),
        ..Options::default()
    };
    let entries = log_entries(120);
    let sealed_ranges = |engine: &Engine| -> Vec<(u64, u64, Option<u32>)> {
        engine.apply(entries.len() as u64).unwrap();
        engine.seal().unwrap();
        engine
            .segments()
            .iter()
            .map(|s| (s.first_seq, s.last_seq, s.records_crc32c))
            .collect()
    };
    // One node takes the entries in one call.
    let a = tempfile::tempdir().unwrap();
    let engine = Engine::open(a.path(), opts.clone()).unwrap();
    append_log(&engine, 1, &entries);
    let want = sealed_ranges(&engine);
    assert!(want.len() > 3, "several segments: {want:?}");
    // The other one at a time and in pairs, with pauses longer than the
    // segment age, reopened half way.
    let b = tempfile::tempdir().unwrap();
    let mut engine = Engine::open(b.path(), opts.clone()).unwrap();
    let mut next = 0usize;
    for (round, size) in [1usize, 2, 1, 3].iter().cycle().enumerate() {
        let Some(group) = entries.get(next..(next + size).min(entries.len())) else {
            break;
        };
        if group.is_empty() {
            break;
        }
        append_log(&engine, next as u64 + 1, group);
        next += group.len();
        if round % 5 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        if round == 30 {
            engine.close().unwrap();
            engine = Engine::open(b.path(), opts.clone()).unwrap();
        }
    }
    // The last file is cut by the explicit seal on both: compare the
    // segments sealed by size.
    let got = sealed_ranges(&engine);
    assert_eq!(got[..got.len() - 1], want[..want.len() - 1]);
}

/// A replicated log's entries 1..=n, as a leader would send them.
fn log_entries(n: u64) -> Vec<Arc<crate::EncodedBatch>> {
    (0..n)
        .map(|i| {
            let count = 1 + i % 7;
            Arc::new(crate::EncodedBatch::encode(&records(i * 10..i * 10 + count)).unwrap())
        })
        .collect()
}

/// Appends `entries` (indexes from `from`) and waits until durable.
fn append_log(engine: &Engine, from: u64, entries: &[Arc<crate::EncodedBatch>]) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let frames = entries
        .iter()
        .enumerate()
        .map(|(i, b)| (1, from + i as u64, Arc::clone(b)))
        .collect();
    engine
        .append_entries(frames, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
    rx.recv().unwrap().unwrap();
}

fn all_records(engine: &Engine) -> Vec<(u64, crate::LogRecord)> {
    engine
        .scan(..)
        .map(|r| {
            let r = r.unwrap();
            (r.seq, r.log)
        })
        .collect()
}

/// A leader that appended and applied entries 1..=150 and sealed at
/// least four segments, with what a snapshot of it offers.
struct SealedLeader {
    /// A replicated log's options, with small segments.
    opts: Options,
    leader: Engine,
    offered: Vec<crate::SegmentMeta>,
    /// The snapshot's last index and the seq after its records.
    through: u64,
    end_seq: u64,
}

fn sealed_leader(dir: &std::path::Path, entries: &[Arc<crate::EncodedBatch>]) -> SealedLeader {
    let opts = Options {
        replicated: true,
        segment_bytes: 8 << 10,
        tick: Duration::from_millis(5),
        ..Options::default()
    };
    let leader = Engine::open(dir.join("leader"), opts.clone()).unwrap();
    append_log(&leader, 1, &entries[..150]);
    leader.apply(150).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leader.segments().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "leader never sealed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let offered = leader.segments();
    let last = offered.last().unwrap().clone();
    SealedLeader {
        opts,
        leader,
        offered,
        through: last.last_index,
        end_seq: last.last_seq + 1,
    }
}

/// Copies of `leader`'s files of `segments` in `staged`, as a transfer
/// leaves them.
fn staged_files(
    leader: &Engine,
    segments: &[crate::SegmentMeta],
    staged: &std::path::Path,
) -> Vec<(crate::SegmentMeta, std::path::PathBuf)> {
    std::fs::create_dir_all(staged).unwrap();
    segments
        .iter()
        .map(|segment| {
            let to = staged.join(format!("{}.sst", segment.first_seq));
            std::fs::copy(leader.segment_file(segment).unwrap(), &to).unwrap();
            (segment.clone(), to)
        })
        .collect()
}

/// A deposed leader's entries that were never committed, numbered past
/// the records of the snapshot then installed over them, stay as log
/// until purged: the log opens with them, twice, and goes on after the
/// snapshot with the snapshot's seqs.
#[test]
fn a_snapshot_over_a_deposed_leaders_entries_reopens() {
    let entries = log_entries(200);
    let dir = tempfile::tempdir().unwrap();
    let sealed = sealed_leader(dir.path(), &entries);
    let (opts, leader, offered) = (sealed.opts, sealed.leader, sealed.offered);
    let (through, end_seq) = (sealed.through, sealed.end_seq);
    // The deposed leader: the first 10 entries, then larger ones of its
    // own up to a little before `through`, all in one file.
    let path = dir.path().join("deposed");
    let opts = Options {
        segment_bytes: 1 << 20,
        ..opts
    };
    let deposed = Engine::open(&path, opts.clone()).unwrap();
    append_log(&deposed, 1, &entries[..10]);
    let own: Vec<_> = (10..through - 5)
        .map(|i| Arc::new(crate::EncodedBatch::encode(&records(i * 100..i * 100 + 20)).unwrap()))
        .collect();
    append_log(&deposed, 11, &own);
    deposed.apply(10).unwrap();
    let files = staged_files(&leader, &offered, &dir.path().join("staged"));
    deposed
        .install_snapshot(crate::SnapshotInstall {
            segments: offered.clone(),
            files,
            floor: 1,
            through,
            end_seq,
            description: b"deposed".to_vec(),
            settings: None,
            keys: Vec::new(),
        })
        .unwrap();
    drop(deposed);
    let want: Vec<_> = all_records(&leader)
        .into_iter()
        .filter(|(seq, _)| *seq < end_seq)
        .collect();
    for _ in 0..2 {
        let reopened = Engine::open(&path, opts.clone()).unwrap();
        assert_eq!(all_records(&reopened), want, "the snapshot's records");
    }
    let reopened = Engine::open(&path, opts).unwrap();
    append_log(&reopened, through + 1, &entries[through as usize..170]);
    let seqs = reopened.apply(170).unwrap();
    let first_after = seqs.iter().find(|(_, r)| r.end > r.start).unwrap().1.start;
    assert_eq!(first_after, end_seq, "seqs go on from the snapshot's");
}

/// A snapshot of `leader` through its last sealed segment installed in
/// logs that hold nothing, a prefix, or entries past it: each then reads
/// the leader's records, goes on with the leader's entries and seqs, and
/// keeps all of it across a reopen.
#[test]
fn a_snapshot_installs_over_an_empty_a_short_and_a_longer_log() {
    let entries = log_entries(200);
    let dir = tempfile::tempdir().unwrap();
    let sealed = sealed_leader(dir.path(), &entries);
    let (opts, leader, offered) = (sealed.opts, sealed.leader, sealed.offered);
    let (through, end_seq) = (sealed.through, sealed.end_seq);
    // Each follower: how many entries it holds, how many it applied,
    // how large its files grow (the longer log's one file straddles the
    // snapshot's end), whether its active file was just started empty
    // (a rotation after its last entry).
    for (name, held, applied, file_bytes, rotated) in [
        ("empty", 0u64, 0u64, 8 << 10, false),
        ("short", 30, 20, 8 << 10, false),
        ("longer", through + 5, 10, 1 << 20, false),
        ("rotated", through + 5, 10, 1 << 20, true),
    ] {
        let path = dir.path().join(name);
        let opts = Options {
            segment_bytes: file_bytes,
            ..opts.clone()
        };
        let follower = Engine::open(&path, opts.clone()).unwrap();
        if held > 0 {
            append_log(&follower, 1, &entries[..held as usize]);
            follower.apply(applied).unwrap();
        }
        if rotated {
            follower.seal().unwrap();
        }
        // A keyed batch the sender remembers among the snapshot's.
        let sent_key = crate::KeyedEntry {
            index: through,
            key: crate::BatchKey {
                producer: 77,
                sequence: through,
            },
            seqs: crate::SeqRange {
                start: end_seq - 1,
                end: end_seq,
            },
        };
        // The files it lacks, staged as a transfer would leave them.
        let staged = dir.path().join(format!("{name}-staged"));
        let files = staged_files(&leader, &offered, &staged);
        follower
            .install_snapshot(crate::SnapshotInstall {
                segments: offered.clone(),
                files,
                floor: 1,
                through,
                end_seq,
                description: name.as_bytes().to_vec(),
                settings: Some(crate::Settings::from([(
                    "token/a".to_owned(),
                    name.as_bytes().to_vec(),
                )])),
                keys: vec![sent_key],
            })
            .unwrap();
        assert_eq!(
            follower.sealed_keys(None).unwrap(),
            vec![sent_key],
            "the snapshot's keyed batches replace the log's"
        );
        assert_eq!(
            follower.settings().get("token/a").map(Vec::as_slice),
            Some(name.as_bytes()),
            "the snapshot's settings replace the log's"
        );
        // The staged files may go: the engine holds its own links.
        std::fs::remove_dir_all(&staged).unwrap();
        follower.purge(through).unwrap();
        let want: Vec<_> = all_records(&leader)
            .into_iter()
            .filter(|(seq, _)| *seq < end_seq)
            .collect();
        assert_eq!(all_records(&follower), want, "{name}");
        // The log goes on after the snapshot (held entries past it stay).
        let next = follower
            .log_bounds()
            .unwrap()
            .map_or(through + 1, |b| b.last.1 + 1);
        assert_eq!(next, through + 1 + held.saturating_sub(through), "{name}");
        append_log(&follower, next, &entries[next as usize - 1..170]);
        let seqs = follower.apply(170).unwrap();
        let first_after = seqs.iter().find(|(_, r)| r.end > r.start).unwrap().1.start;
        assert_eq!(
            first_after, end_seq,
            "{name}: seqs go on from the snapshot's"
        );
        drop(follower);
        let reopened = Engine::open(&path, opts.clone()).unwrap();
        assert_eq!(
            reopened.snapshot().unwrap(),
            Some((through, name.as_bytes().to_vec()))
        );
        assert_eq!(reopened.sealed_keys(None).unwrap(), vec![sent_key]);
        reopened.apply(170).unwrap();
        append_log(&reopened, 171, &entries[170..]);
        reopened.apply(200).unwrap();
        let after = all_records(&reopened);
        assert_eq!(&after[..want.len()], &want[..], "{name} after reopen");
        assert_eq!(
            after.len() as u64,
            (end_seq - 1) + {
                let n: u64 = entries[through as usize..]
                    .iter()
                    .map(|b| u64::from(b.count()))
                    .sum();
                n
            },
            "{name}: every record once"
        );
        // A second snapshot that is not past the applied entry is refused.
        assert!(
            reopened
                .install_snapshot(crate::SnapshotInstall {
                    segments: offered.clone(),
                    files: Vec::new(),
                    floor: 1,
                    through,
                    end_seq,
                    description: Vec::new(),
                    settings: None,
                    keys: Vec::new(),
                })
                .is_err()
        );
    }
}

/// A replicated log keeps the keyed batches of what it seals with the
/// manifest: the newest within its window's count, across a reopen; a
/// log entry with no key adds none.
#[test]
fn sealed_keyed_batches_are_remembered_within_the_window() {
    let opts = Options {
        replicated: true,
        segment_bytes: 8 << 10,
        tick: Duration::from_millis(5),
        keys: crate::KeyWindow {
            count: 40,
            max_age: Duration::from_secs(3600),
        },
        ..Options::default()
    };
    let key = |i: u64| crate::BatchKey {
        producer: 3,
        sequence: i,
    };
    // Odd entries keyed, even ones not.
    let entries: Vec<_> = log_entries(200)
        .into_iter()
        .enumerate()
        .map(|(i, batch)| {
            let i = i as u64 + 1;
            if i % 2 == 1 {
                Arc::new((*batch).clone().with_key(key(i)).unwrap())
            } else {
                batch
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts.clone()).unwrap();
    append_log(&engine, 1, &entries);
    let applied = engine.apply(200).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.segments().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "never sealed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let check = |engine: &Engine| {
        // The sealer may seal more between two reads: take the keys read
        // between two equal reads of the segments, none past them.
        let (kept, sealed_through) = loop {
            let before = engine.segments().last().unwrap().last_index;
            let kept = engine.sealed_keys(None).unwrap();
            let settled = engine.segments().last().unwrap().last_index == before;
            if settled && kept.last().is_none_or(|k| k.index <= before) {
                break (kept, before);
            }
        };
        let keyed_sealed = (1..=sealed_through).filter(|i| i % 2 == 1).count();
        assert_eq!(kept.len(), keyed_sealed.min(40), "{kept:?}");
        for entry in &kept {
            assert_eq!(entry.key, key(entry.index));
            let seqs = applied.iter().find(|(i, _)| *i == entry.index).unwrap().1;
            assert_eq!(entry.seqs, seqs, "entry {}", entry.index);
        }
        assert!(
            kept.windows(2).all(|w| w[0].index < w[1].index),
            "oldest first"
        );
        assert_eq!(
            kept.last().map(|k| k.index),
            Some(sealed_through - (sealed_through + 1) % 2),
            "the newest are kept"
        );
        let through = kept[kept.len() / 2].index;
        assert!(
            engine
                .sealed_keys(Some(through))
                .unwrap()
                .iter()
                .all(|k| k.index <= through)
        );
        kept
    };
    let before = check(&engine);
    drop(engine);
    let reopened = Engine::open(dir.path(), opts).unwrap();
    // More may have been sealed before the drop; what was kept still is,
    // unless newer ones pushed it out of the window.
    let after = check(&reopened);
    let oldest = after[0].index;
    let still: Vec<_> = before.into_iter().filter(|k| k.index >= oldest).collect();
    assert_eq!(&after[..still.len()], &still[..], "the same after a reopen");
}

/// An embedded log answers a retried keyed batch with its first seqs and
/// writes it once: in the same group, after it is durable, after it is
/// sealed, and after a reopen.
#[test]
fn an_embedded_log_writes_a_keyed_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let keyed = |sequence: u64, from: u64| {
        crate::EncodedBatch::encode(&records(from..from + 3))
            .unwrap()
            .with_key(crate::BatchKey {
                producer: 42,
                sequence,
            })
            .unwrap()
    };
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    let a = engine.submit_encoded(keyed(1, 0)).unwrap();
    let a_again = engine.submit_encoded(keyed(1, 0)).unwrap();
    let first = a.wait().unwrap();
    assert_eq!(a_again.wait().unwrap(), first, "a retry in flight");
    let other = engine.submit_encoded(keyed(2, 10)).unwrap().wait().unwrap();
    assert_eq!(other.start, first.end, "another key is written");
    assert_eq!(
        engine.submit_encoded(keyed(1, 0)).unwrap().wait().unwrap(),
        first,
        "a retry once durable"
    );
    engine.seal().unwrap();
    assert_eq!(
        engine.submit_encoded(keyed(2, 10)).unwrap().wait().unwrap(),
        other,
        "a retry once sealed"
    );
    drop(engine);
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        engine.submit_encoded(keyed(1, 0)).unwrap().wait().unwrap(),
        first,
        "a retry after a reopen"
    );
    assert_eq!(all_records(&engine).len(), 6, "each batch once");
}

/// Overdue work hurries background threads: once a position has waited
/// its age, or too much is owed; calm once caught up.
#[test]
fn overdue_work_hurries_until_it_catches_up() {
    let mut sealing = crate::Overdue::default();
    sealing.check(5, 5, u64::MAX, Duration::ZERO);
    assert!(!sealing.hurried(), "nothing owed");
    sealing.check(5, 10, u64::MAX, Duration::ZERO);
    assert!(sealing.hurried(), "owed for its age");
    sealing.check(10, 10, u64::MAX, Duration::ZERO);
    assert!(!sealing.hurried(), "caught up");
    let mut indexing = crate::Overdue::default();
    let hour = Duration::from_secs(3600);
    indexing.check(0, 50, 100, hour);
    assert!(!indexing.hurried(), "within the bound, not yet late");
    indexing.check(0, 101, 100, hour);
    assert!(indexing.hurried(), "past the bound");
    indexing.check(70, 101, 100, hour);
    assert!(indexing.hurried(), "still more than a quarter of the bound");
    indexing.check(80, 101, 100, hour);
    assert!(!indexing.hurried(), "within a quarter of the bound");
}

/// A simulated power loss keeps what was fsynced and nothing else: under
/// buffered durability the appends since the last sync are gone after a
/// reopen; under sync durability every acknowledged append is there.
/// The crashed engine takes no further write.
#[test]
fn a_crash_loses_what_was_not_synced_and_nothing_else() {
    let buffered = Durability::Buffered {
        window: Duration::from_secs(3600),
    };
    for (durability, kept) in [(Durability::Sync, 20), (buffered, 10)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            durability,
            ..Options::default()
        };
        let engine = Engine::open(dir.path(), opts.clone()).unwrap();
        engine.append(&records(0..10)).unwrap();
        engine.sync().unwrap();
        engine.append(&records(10..20)).unwrap();
        engine.crash();
        assert!(engine.append(&records(20..21)).is_err(), "{durability:?}");
        drop(engine);
        let reopened = Engine::open(dir.path(), opts).unwrap();
        let ids: Vec<u64> = all_records(&reopened).iter().map(|(seq, _)| *seq).collect();
        assert_eq!(ids, (1..=kept).collect::<Vec<u64>>(), "{durability:?}");
    }
}
