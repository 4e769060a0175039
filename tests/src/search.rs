//! The search oracle: on real log lines (the loghub samples) and the
//! generated corpus, random queries built from their vocabulary must give
//! exactly what a brute-force scan under lode's word semantics gives,
//! results and counts. Also after the indexing process is SIGKILLed.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_engine::{Engine, Level, LogRecord, Options, Record, Retention};
use lode_index::{FacetField, Index, IndexOptions, Search};
use lode_query::{Prepared, parse, tokens};
use lode_tools::{Corpus, SplitMix64};

const LOGHUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/loghub");

/// Every line of the loghub samples as a record (service = the sample's
/// name); the samples are fixtures of this repository.
pub(crate) fn loghub_records() -> Vec<LogRecord> {
    let mut records = Vec::new();
    let entries = std::fs::read_dir(LOGHUB).expect("the loghub fixtures");
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    for (f, path) in files.iter().enumerate() {
        let service = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("x")
            .replace("_2k", "")
            .to_lowercase();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let level = ["INFO", "WARN", "ERROR", "DEBUG", "FATAL", "notice", "error"]
                .iter()
                .find(|l| line.contains(*l))
                .map_or(Level::Info, |l| Level::parse(l));
            records.push(LogRecord {
                ts: 1_700_000_000_000_000_000 + (f * 10_000 + i) as i64 * 1_000_000_000,
                level,
                service: service.clone(),
                host: format!("{service}-{}", i % 5),
                attrs: vec![("line".into(), i.to_string())],
                message: line.to_owned(),
                tenant: String::new(),
            });
        }
    }
    records
}

fn corpus() -> Vec<LogRecord> {
    let mut records = loghub_records();
    records.extend(Corpus::new(42).take_records(20_000));
    records
}

/// Random query text from the records' own vocabulary.
struct QueryGen<'a> {
    rng: SplitMix64,
    records: &'a [Record],
}

impl QueryGen<'_> {
    fn pick(&mut self) -> &Record {
        &self.records[self.rng.below(self.records.len() as u64) as usize]
    }

    fn token(&mut self) -> String {
        loop {
            let toks: Vec<String> = tokens(&self.pick().message).collect();
            if !toks.is_empty() {
                return toks[self.rng.below(toks.len() as u64) as usize].clone();
            }
        }
    }

    fn leaf(&mut self) -> String {
        match self.rng.below(11) {
            0..=2 => self.token(),
            3 => {
                let toks: Vec<String> = tokens(&self.pick().message).collect();
                let start = self.rng.below(toks.len().saturating_sub(1).max(1) as u64) as usize;
                let len = 2 + self.rng.below(2) as usize;
                format!(
                    "\"{}\"",
                    toks.iter()
                        .skip(start)
                        .take(len)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
            4 => {
                // A prefix, a part anywhere or an ending of a token.
                let token: Vec<char> = self.token().chars().collect();
                let len = (1 + self.rng.below(3) as usize).min(token.len());
                let from = self.rng.below((token.len() - len + 1) as u64) as usize;
                let part: String = token[from..from + len].iter().collect();
                match self.rng.below(3) {
                    0 => format!("{part}*"),
                    1 => format!("*{part}*"),
                    _ => format!("*{part}"),
                }
            }
            5 => format!("service:{}", self.pick().service.clone()),
            6 => format!("host:{}", self.pick().host.clone()),
            7 => {
                let host = self.pick().host.clone();
                format!("host:{}*", host.chars().take(3).collect::<String>())
            }
            8 => {
                let ops = ["level:", "level:>=", "level:<", "level:>", "level:<="];
                let levels = ["trace", "debug", "info", "warn", "error", "fatal"];
                let op = ops[self.rng.below(5) as usize];
                format!("{op}{}", levels[self.rng.below(6) as usize])
            }
            9 => {
                let record = self.pick().clone();
                let (k, v) =
                    record.attrs[self.rng.below(record.attrs.len() as u64) as usize].clone();
                format!("attrs.{k}:\"{v}\"")
            }
            _ => format!("message:{}", self.token()),
        }
    }

    fn query(&mut self, depth: u32) -> String {
        if depth >= 3 {
            return self.leaf();
        }
        match self.rng.below(10) {
            0..=3 => self.leaf(),
            4 | 5 => format!("{} {}", self.query(depth + 1), self.query(depth + 1)),
            6 => format!("({} OR {})", self.query(depth + 1), self.query(depth + 1)),
            7 => format!(
                "{} AND NOT {}",
                self.query(depth + 1),
                self.query(depth + 1)
            ),
            8 => format!("-{} {}", self.leaf(), self.query(depth + 1)),
            _ => "*".to_owned(),
        }
    }
}

/// Checks `runs` random queries against the brute-force scan of `records`.
fn check_oracle(index: &Index, records: &[Record], runs: usize, seed: u64) {
    check_oracle_of(index, records, runs, seed, None);
}

/// [`check_oracle`] of the reads of `tenants` only (`None`: everyone's):
/// the brute force keeps those tenants' records.
fn check_oracle_of(
    index: &Index,
    records: &[Record],
    runs: usize,
    seed: u64,
    tenants: Option<&[String]>,
) {
    let prepared: Vec<Prepared<'_>> = records.iter().map(|r| Prepared::new(&r.log)).collect();
    let theirs = |r: &Record| {
        tenants.is_none_or(|ts| ts.iter().any(|t| t == lode_engine::tenant_name(&r.tenant)))
    };
    let mut generator = QueryGen {
        rng: SplitMix64::new(seed),
        records,
    };
    let mut nonempty = 0;
    for run in 0..runs {
        let text = generator.query(0);
        // Bounds taken from records' own times, so ranges fall where data
        // is, now and then a nanosecond past one: the index keeps times to
        // the millisecond, and such bounds cut one.
        let (since, until) = if generator.rng.chance(0.4) {
            let (a, b) = (generator.pick().ts, generator.pick().ts);
            let nudge = generator.rng.below(2) as i64;
            (Some(a.min(b) + nudge), Some(a.max(b) + 1 - nudge))
        } else {
            (None, None)
        };
        let query =
            parse(&text).unwrap_or_else(|e| panic!("generated query {text:?} does not parse: {e}"));
        let expected: Vec<u64> = records
            .iter()
            .zip(&prepared)
            .filter(|(r, p)| {
                theirs(r)
                    && since.is_none_or(|s| r.ts >= s)
                    && until.is_none_or(|u| r.ts < u)
                    && query.matches(p)
            })
            .map(|(r, _)| r.seq)
            .rev()
            .collect();
        let count = index.count(&text, tenants, since, until).unwrap();
        assert_eq!(
            count,
            expected.len() as u64,
            "run {run}: count of {text:?} since {since:?} until {until:?}"
        );
        // The newest 120 through pages of 50, then the rest in one page.
        let mut got = Vec::new();
        let mut cursor = None;
        for limit in [50, 50, 20, 10_000] {
            let page = index
                .search(&Search {
                    query: text.clone(),
                    since,
                    until,
                    limit: Some(limit),
                    cursor: cursor.clone(),
                    tenants: tenants.map(<[String]>::to_vec),
                })
                .unwrap();
            got.extend(page.records.iter().map(|r| r.seq));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let shown = expected.len().min(got.len().max(10_120));
        assert_eq!(
            got,
            expected[..shown],
            "run {run}: results of {text:?} since {since:?} until {until:?}"
        );
        nonempty += usize::from(!expected.is_empty());
        if run % 4 == 0 {
            check_aggregations(index, records, tenants, &text, (since, until), &expected);
        }
    }
    assert!(
        nonempty * 3 >= runs,
        "only {nonempty} of {runs} queries matched anything: the generator is off"
    );
}

/// Histogram and top values of a query against the brute-force matches
/// (`expected`: matching seqs, newest first).
fn check_aggregations(
    index: &Index,
    records: &[Record],
    tenants: Option<&[String]>,
    text: &str,
    (since, until): (Option<i64>, Option<i64>),
    expected: &[u64],
) {
    let by_seq = |seq: u64| &records[(seq - records[0].seq) as usize];
    let histogram = index.histogram(text, tenants, since, until, None).unwrap();
    assert!(
        histogram.buckets.len() <= 24,
        "{} buckets",
        histogram.buckets.len()
    );
    let mut counts = vec![0u64; histogram.buckets.len()];
    for &seq in expected {
        let bucket = (by_seq(seq).ts - histogram.start) / histogram.width;
        counts[bucket as usize] += 1;
    }
    assert_eq!(
        histogram.buckets, counts,
        "histogram of {text:?} since {since:?} until {until:?}"
    );
    // A width of no whole milliseconds: every bucket edge cuts one.
    let width = histogram.width / 7 + 1;
    let odd = index
        .histogram(text, tenants, since, until, Some(width))
        .unwrap();
    let mut counts = vec![0u64; odd.buckets.len()];
    for &seq in expected {
        counts[((by_seq(seq).ts - odd.start) / width) as usize] += 1;
    }
    assert_eq!(
        odd.buckets, counts,
        "histogram of {text:?} since {since:?} until {until:?} by {width} ns"
    );
    let fields = [
        FacetField::Level,
        FacetField::Service,
        FacetField::Host,
        FacetField::Tenant,
    ];
    for field in fields {
        let mut tally: HashMap<String, u64> = HashMap::new();
        for &seq in expected {
            let record = by_seq(seq);
            let value = match field {
                FacetField::Level => record.level.as_str().to_lowercase(),
                FacetField::Service => record.service.to_lowercase(),
                FacetField::Host => record.host.to_lowercase(),
                FacetField::Tenant => lode_engine::tenant_name(&record.tenant).to_owned(),
            };
            *tally.entry(value).or_insert(0) += 1;
        }
        let mut top: Vec<(String, u64)> = tally.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(5);
        assert_eq!(
            index
                .top_values(text, tenants, since, until, field, 5)
                .unwrap(),
            top,
            "top {field:?} of {text:?}"
        );
    }
}

fn open_both(dir: &Path, positions: bool) -> (Arc<Engine>, Index) {
    let engine = Arc::new(
        Engine::open(
            dir.join("data"),
            Options {
                segment_bytes: 1 << 20,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    let opts = IndexOptions {
        commit_interval: Duration::from_millis(100),
        positions,
        ..IndexOptions::default()
    };
    let index = Index::open(Arc::clone(&engine), dir.join("index"), opts).unwrap();
    (engine, index)
}

fn all_records(engine: &Engine) -> Vec<Record> {
    engine.scan(..).collect::<Result<_, _>>().unwrap()
}

#[test]
fn random_queries_match_a_brute_force_scan() {
    oracle_then_reopen(false);
}

#[test]
fn random_queries_match_a_brute_force_scan_with_positions() {
    oracle_then_reopen(true);
}

/// The oracle over sealed and WAL records, then over the reopened index;
/// phrases run on positions or on messages read from the engine.
fn oracle_then_reopen(positions: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, index) = open_both(dir.path(), positions);
    for chunk in corpus().chunks(1000) {
        engine.append(chunk).unwrap();
    }
    let records = all_records(&engine);
    assert!(
        index.wait_indexed(records.len() as u64, Duration::from_secs(60)),
        "index caught up"
    );
    assert!(
        engine.stats().sealed_segments > 0,
        "the oracle covers sealed and WAL records"
    );
    check_oracle(&index, &records, 600, 7);
    // Reopened, the committed index is still right and complete; without
    // field bitmaps, counts and top values go through tantivy (top values
    // then tally bitmaps built per query).
    index.close().unwrap();
    let index = Index::open(
        Arc::clone(&engine),
        dir.path().join("index"),
        IndexOptions {
            positions,
            field_bitmaps: false,
            ..IndexOptions::default()
        },
    )
    .unwrap();
    assert_eq!(index.stats().indexed_upto, records.len() as u64);
    assert_eq!(
        index.count("*", None, None, None).unwrap(),
        records.len() as u64,
        "nothing indexed twice"
    );
    check_oracle(&index, &records, 100, 8);
}

/// Records of three tenants, in batches of one tenant each: every read
/// scoped to one tenant, two, or all, equals a brute force over those
/// tenants' records; the tenant's own bitmap keeps field-filter counts
/// off the documents.
#[test]
fn tenant_scoped_queries_match_a_brute_force_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, index) = open_both(dir.path(), false);
    let names = ["", "team-a", "team-b"];
    for (i, chunk) in corpus().chunks(700).enumerate() {
        let tenant = names[i % names.len()];
        let chunk: Vec<LogRecord> = chunk
            .iter()
            .map(|r| LogRecord {
                tenant: tenant.to_owned(),
                ..r.clone()
            })
            .collect();
        engine.append(&chunk).unwrap();
    }
    let records = all_records(&engine);
    assert!(index.wait_indexed(records.len() as u64, Duration::from_secs(60)));
    assert!(engine.stats().sealed_segments > 0, "sealed and WAL records");
    let scopes: [&[&str]; 4] = [
        &["team-a"],
        &["team-b"],
        &["default"],
        &["team-a", "default"],
    ];
    for (i, scope) in scopes.iter().enumerate() {
        let scope: Vec<String> = scope.iter().map(|t| (*t).to_owned()).collect();
        check_oracle_of(&index, &records, 150, 70 + i as u64, Some(&scope));
    }
    let mine = ["team-a".to_owned()];
    let theirs = records.iter().filter(|r| r.tenant == "team-a").count() as u64;
    assert_eq!(index.count("*", Some(&mine), None, None).unwrap(), theirs);
    assert_eq!(
        index
            .top_values("*", None, None, None, FacetField::Tenant, 5)
            .unwrap()
            .len(),
        3,
        "top tenants of everyone's records"
    );
}

#[test]
fn bad_queries_are_errors_with_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, index) = open_both(dir.path(), false);
    let err = index
        .search(&Search {
            query: "a (b".into(),
            ..Search::default()
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "query column 5: expected ')' to close the '(' at column 3"
    );
    assert!(
        index
            .search(&Search {
                query: "*".into(),
                cursor: Some("x".into()),
                ..Search::default()
            })
            .is_err()
    );
}

#[test]
fn tail_filters_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, index) = open_both(dir.path(), false);
    let mut tail = index.tail("level:>=error", None, 1).unwrap();
    let records = Corpus::new(3).take_records(2000);
    engine.append(&records).unwrap();
    let expected: Vec<u64> = (1u64..)
        .zip(&records)
        .filter(|(_, r)| matches!(r.level, Level::Error | Level::Fatal))
        .map(|(s, _)| s)
        .collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match tail.next_timeout(Duration::from_secs(10)).unwrap() {
            Some(r) => got.push(r.seq),
            None => break,
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn retention_drops_index_documents_too() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        retention: Retention {
            max_age: None,
            max_bytes: Some(1),
        },
        ..Options::default()
    };
    let engine = Arc::new(Engine::open(dir.path().join("data"), opts).unwrap());
    let index_opts = IndexOptions {
        commit_interval: Duration::from_millis(50),
        ..IndexOptions::default()
    };
    let index = Index::open(Arc::clone(&engine), dir.path().join("index"), index_opts).unwrap();
    let mut corpus = Corpus::new(4);
    for _ in 0..3 {
        engine.append(&corpus.take_records(1000)).unwrap();
        engine.seal().unwrap();
    }
    engine.enforce_retention(0).unwrap();
    engine.append(&corpus.take_records(500)).unwrap();
    assert_eq!(
        engine.stats().first_seq,
        3001,
        "max_bytes = 1 drops every sealed segment"
    );
    assert!(index.wait_indexed(3500, Duration::from_secs(20)));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while index.count("*", None, None, None).unwrap() != 500 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        index.count("*", None, None, None).unwrap(),
        500,
        "documents of dropped records are deleted"
    );
    let page = index
        .search(&Search {
            query: "*".into(),
            limit: Some(1000),
            ..Search::default()
        })
        .unwrap();
    assert_eq!(page.records.len(), 500);
    assert!(page.records.iter().all(|r| r.seq > 3000));
}

#[test]
fn index_ahead_of_the_engine_forgets_what_the_engine_lost() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (engine, index) = open_both(dir.path(), false);
        engine.append(&Corpus::new(1).take_records(100)).unwrap();
        assert!(index.wait_indexed(100, Duration::from_secs(10)));
        index.close().unwrap();
    }
    // The engine loses its data (say, buffered appends and a power cut);
    // new records then take the same seqs.
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    let (engine, index) = open_both(dir.path(), false);
    let fresh = Corpus::new(2).take_records(50);
    engine.append(&fresh).unwrap();
    assert!(index.wait_indexed(50, Duration::from_secs(10)));
    assert_eq!(
        index.count("*", None, None, None).unwrap(),
        50,
        "no stale or doubled documents"
    );
    let page = index
        .search(&Search {
            query: "*".into(),
            limit: Some(200),
            ..Search::default()
        })
        .unwrap();
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=50).rev().collect::<Vec<_>>());
}

const DIR_VAR: &str = "LODE_INDEX_CRASH_DIR";

/// Child of the kill test: appends and indexes until killed.
#[test]
#[ignore = "run by search::kill_during_indexing_then_oracle in a child process"]
fn index_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    crate::die_with_parent();
    let (engine, _index) = open_both(Path::new(&dir), false);
    let mut corpus = Corpus::new(engine.stats().next_seq);
    println!("ready");
    loop {
        engine.append(&corpus.take_records(200)).unwrap();
    }
}

#[test]
fn kill_during_indexing_then_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = SplitMix64::new(11);
    for _ in 0..5 {
        let mut child = Command::new(&exe)
            .args([
                "search::index_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (engine, index) = open_both(dir.path(), false);
    let records = all_records(&engine);
    assert!(
        records.len() > 1000,
        "the children appended: {}",
        records.len()
    );
    assert!(index.wait_indexed(records.len() as u64, Duration::from_secs(60)));
    assert_eq!(
        index.count("*", None, None, None).unwrap(),
        records.len() as u64,
        "no record missed or indexed twice"
    );
    let seqs: BTreeSet<u64> = index
        .search(&Search {
            query: "*".into(),
            limit: Some(10_000),
            ..Search::default()
        })
        .unwrap()
        .records
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs.len(), records.len().min(10_000));
    check_oracle(&index, &records, 150, 9);
}

/// Threads that keep every CPU busy at normal priority until dropped: the
/// other processes of a shared machine.
struct CpuHogs {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    fn start() -> CpuHogs {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = (0..cpus)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A reader waiting for the index is not starved by a busy machine: the
/// indexer runs idle-priority while nobody waits, and is raised while a
/// reader does (with every CPU kept busy, an idle-priority indexer gets
/// next to nothing: 100,000 records took minutes).
#[test]
fn a_reader_waiting_for_the_index_is_served_on_a_busy_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, index) = open_both(dir.path(), false);
    let mut corpus = Corpus::new(11);
    let hogs = CpuHogs::start();
    for _ in 0..10 {
        engine.append(&corpus.take_records(10_000)).unwrap();
    }
    let last = engine.next_seq() - 1;
    let started = Instant::now();
    let caught_up = index.wait_indexed(last, Duration::from_secs(30));
    let waited = started.elapsed();
    drop(hogs);
    assert!(
        caught_up,
        "the index did not reach seq {last} within 30 s beside busy CPUs"
    );
    eprintln!("indexed 100,000 records beside busy CPUs in {waited:?}");
}
