//! Model-based property test: random appends, reopens, seals, retention
//! passes and reads against an in-memory model of the log (after
//! mrecordlog's `proptests.rs`). After every step the engine must hold
//! exactly the model's records from its first retained seq on.

use std::time::Duration;

use lode_engine::{Engine, LogRecord, Options, Retention};
use proptest::prelude::*;

use crate::record_for;

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    Reopen,
    Seal,
    /// Retention as of `base + secs` seconds.
    Retain(u64),
    Get(u64),
    /// Reads of many seqs at once: a start, then gaps (small ones are
    /// stepped to, larger ones sought).
    GetMany(u64, Vec<u64>),
    ScanTime(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..60).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        2 => Just(Op::Seal),
        1 => (0u64..4000).prop_map(Op::Retain),
        2 => any::<u64>().prop_map(Op::Get),
        2 => (
            any::<u64>(),
            proptest::collection::vec(prop_oneof![0u64..4, 12u64..20, 0u64..2000], 0..40),
        )
            .prop_map(|(start, gaps)| Op::GetMany(start, gaps)),
        2 => (any::<u64>(), 0u64..400).prop_map(|(a, b)| Op::ScanTime(a, b)),
    ]
}

/// Record `seq`'s content, with a timestamp near the wall clock so the
/// background retention pass (which uses the wall clock) never drops it.
fn record(base_ns: i64, seq: u64) -> LogRecord {
    LogRecord {
        ts: base_ns + (seq as i64) * 1_000_000_000,
        ..record_for(seq)
    }
}

fn options(max_bytes: u64) -> Options {
    Options {
        segment_bytes: 4096,
        // Several chunks per sealed segment: reads cross their bounds.
        sealed_block_bytes: 512,
        retention: Retention {
            max_age: Some(Duration::from_secs(1000)),
            max_bytes: Some(max_bytes),
        },
        ..Options::default()
    }
}

struct Harness {
    dir: tempfile::TempDir,
    engine: Option<Engine>,
    max_bytes: u64,
    base_ns: i64,
    /// Every record ever appended; `model[i]` has seq `i + 1`.
    model: Vec<LogRecord>,
    first_seq: u64,
}

impl Harness {
    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("open engine")
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append(n) => {
                let start = self.model.len() as u64 + 1;
                let batch: Vec<_> = (start..start + n)
                    .map(|s| record(self.base_ns, s))
                    .collect();
                let range = self.engine().append(&batch).expect("append");
                assert_eq!((range.start, range.end), (start, start + n));
                self.model.extend(batch);
            }
            Op::Reopen => {
                self.engine.take().expect("engine").close().expect("close");
                self.engine =
                    Some(Engine::open(self.dir.path(), options(self.max_bytes)).expect("reopen"));
            }
            Op::Seal => {
                self.engine().seal().expect("seal");
                let stats = self.engine().stats();
                assert_eq!(stats.unsealed_records, 0, "seal leaves nothing unsealed");
            }
            Op::Retain(secs) => {
                let now = self.base_ns + (secs as i64) * 1_000_000_000;
                self.engine().enforce_retention(now).expect("retention");
                let horizon = now - 1_000_000_000_000;
                for segment in self.engine().segments() {
                    assert!(
                        segment.max_ts >= horizon,
                        "segment {segment:?} outlived max_age at {now}"
                    );
                }
            }
            Op::Get(pick) => {
                let seq = pick % (self.model.len() as u64 + 2);
                let (first, got) = self.stable(|e| e.get(seq).expect("get"));
                let expected = (seq >= first)
                    .then(|| self.model.get(seq as usize - 1).cloned())
                    .flatten();
                assert_eq!(got.map(|r| r.log), expected, "get({seq})");
            }
            Op::GetMany(start, ref gaps) => {
                let mut seq = start % (self.model.len() as u64 + 2);
                let mut asked = vec![seq];
                for gap in gaps {
                    seq = seq.saturating_add(*gap);
                    asked.push(seq);
                }
                let (first, got) = self.stable(|e| e.get_many(&asked).expect("get_many"));
                let mut wanted = asked.clone();
                wanted.dedup();
                let expected: Vec<(u64, LogRecord)> = wanted
                    .into_iter()
                    .filter(|&s| s >= first.max(1) && s <= self.model.len() as u64)
                    .map(|s| (s, self.model[s as usize - 1].clone()))
                    .collect();
                let got: Vec<(u64, LogRecord)> = got.into_iter().map(|r| (r.seq, r.log)).collect();
                assert_eq!(got, expected, "get_many({asked:?})");
            }
            Op::ScanTime(start, len) => {
                let since = self.base_ns + ((start % 500) as i64) * 1_000_000_000;
                let until = since + (len as i64) * 1_000_000_000;
                let (first, got) = self.stable(|e| {
                    e.scan_time(since, until)
                        .map(|r| r.expect("scan").seq)
                        .collect::<Vec<u64>>()
                });
                let expected: Vec<u64> = (first..=self.model.len() as u64)
                    .filter(|&s| {
                        let ts = self.model[s as usize - 1].ts;
                        ts >= since && ts < until
                    })
                    .collect();
                assert_eq!(got, expected, "scan_time({since}, {until})");
            }
        }
        self.check();
    }

    /// Background retention may move the first seq at any moment: runs
    /// `read` until no retention pass crossed it; returns the first seq it
    /// saw and what it read.
    fn stable<T>(&self, read: impl Fn(&Engine) -> T) -> (u64, T) {
        (0..50)
            .map(|_| {
                let first = self.engine().stats().first_seq;
                (first, read(self.engine()))
            })
            .find(|(first, _)| self.engine().stats().first_seq == *first)
            .expect("a read that no retention pass crossed")
    }

    /// The engine holds exactly the model from its first retained seq on.
    fn check(&mut self) {
        let (_, (stats, segments, records)) = self.stable(|e| {
            let records: Vec<_> = e.scan(..).map(|r| r.expect("scan")).collect();
            (e.stats(), e.segments(), records)
        });
        assert_eq!(stats.next_seq, self.model.len() as u64 + 1, "durable end");
        assert!(stats.first_seq >= self.first_seq, "first seq went back");
        self.first_seq = stats.first_seq;
        if let Some(oldest) = segments.first() {
            assert_eq!(
                oldest.first_seq, stats.first_seq,
                "retention drops whole segments"
            );
        }
        let mut expected = stats.first_seq;
        for record in records {
            assert_eq!(record.seq, expected);
            assert_eq!(Some(&record.log), self.model.get(record.seq as usize - 1));
            expected += 1;
        }
        assert_eq!(expected, stats.next_seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(max_bytes in 2_000u64..40_000, ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let base_ns = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos(),
        ).expect("ns fit i64");
        let engine = Engine::open(dir.path(), options(max_bytes)).expect("open");
        let mut harness = Harness { dir, engine: Some(engine), max_bytes, base_ns, model: Vec::new(), first_seq: 1 };
        for op in &ops {
            harness.apply(op);
        }
        harness.apply(&Op::Reopen);
    }
}
