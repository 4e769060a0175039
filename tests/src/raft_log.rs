//! Model-based property test of the replicated log (the WAL as a Raft
//! log): random appends of batch, blank and membership entries under
//! changing terms, cuts of the unapplied suffix, applies, seals, purges and
//! reopens, against an in-memory model. After every step the engine holds
//! exactly the model's entries, and exactly the records of the applied
//! batch entries are readable, each at the seq its position gives.

use std::sync::mpsc;
use std::time::Duration;

use lode_engine::{EncodedBatch, Engine, FrameKind, LogBounds, LogRecord, Options};
use proptest::prelude::*;

use crate::record_for;

#[derive(Debug, Clone)]
enum Op {
    /// Entries of these kinds (0 = batch of `n` records, 1 = blank,
    /// 2 = membership) in the current term.
    Append(Vec<(u8, u64)>),
    /// A new term begins.
    NewTerm,
    /// Cut after the entry this far back from the end (never into the
    /// applied part: the engine must refuse that, which is checked too).
    Truncate(u64),
    /// Apply this many more entries.
    Apply(u64),
    Seal,
    /// Purge up to this far into the applied part.
    Purge(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((0u8..3, 1u64..30), 1..6).prop_map(Op::Append),
        1 => Just(Op::NewTerm),
        2 => (0u64..8).prop_map(Op::Truncate),
        3 => (0u64..6).prop_map(Op::Apply),
        1 => Just(Op::Seal),
        1 => (0u64..4).prop_map(Op::Purge),
        1 => Just(Op::Reopen),
    ]
}

fn options() -> Options {
    Options {
        segment_bytes: 4096,
        replicated: true,
        ..Options::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    term: u64,
    index: u64,
    kind: FrameKind,
    payload: Vec<u8>,
    records: Vec<LogRecord>,
}

struct Harness {
    dir: tempfile::TempDir,
    engine: Option<Engine>,
    term: u64,
    /// The log, oldest first; `entries[i]` has index `first_index + i`.
    entries: Vec<Entry>,
    first_index: u64,
    applied: Option<u64>,
    purged: Option<u64>,
    /// Records written so far by batch entries, for unique contents.
    serial: u64,
}

impl Harness {
    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("open engine")
    }

    fn next_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    fn entry(&mut self, kind: u8, n: u64) -> (Entry, EncodedBatch) {
        let index = self.next_index();
        let (kind, records) = match kind {
            0 => {
                let records: Vec<LogRecord> =
                    (self.serial..self.serial + n).map(record_for).collect();
                self.serial += n;
                (FrameKind::Batch, records)
            }
            1 => (FrameKind::Blank, Vec::new()),
            _ => (FrameKind::Membership, Vec::new()),
        };
        let batch = match kind {
            FrameKind::Batch => EncodedBatch::encode(&records).expect("encode"),
            FrameKind::Membership => {
                EncodedBatch::without_records(kind, format!("voters {index}").as_bytes())
                    .expect("membership")
            }
            _ => EncodedBatch::without_records(kind, b"").expect("blank"),
        };
        let entry = Entry {
            term: self.term,
            index,
            kind,
            payload: batch.payload().to_vec(),
            records,
        };
        (entry, batch)
    }

    fn step(&mut self, op: &Op) {
        if std::env::var_os("LODE_TRACE").is_some() {
            eprintln!(
                "step {op:?} applied={:?} first={} n={}",
                self.applied,
                self.first_index,
                self.entries.len()
            );
        }
        match op {
            Op::Append(kinds) => {
                let mut frames = Vec::new();
                for &(kind, n) in kinds {
                    let (entry, batch) = self.entry(kind, n);
                    frames.push((entry.term, entry.index, std::sync::Arc::new(batch)));
                    self.entries.push(entry);
                }
                let (tx, rx) = mpsc::channel();
                self.engine()
                    .append_entries(frames, move |outcome| {
                        let _ = tx.send(outcome.map_err(|e| e.to_string()));
                    })
                    .expect("append_entries");
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("appends reported durable")
                    .expect("appends succeed");
                // An entry that does not follow the log is refused.
                let (stray, batch) = self.entry(1, 0);
                let (tx, rx) = mpsc::channel();
                self.engine()
                    .append_entries(
                        vec![(stray.term, stray.index + 1, std::sync::Arc::new(batch))],
                        move |o| {
                            let _ = tx.send(o.is_err());
                        },
                    )
                    .expect("append_entries");
                assert!(
                    rx.recv_timeout(Duration::from_secs(10)).expect("answer"),
                    "a hole is refused"
                );
            }
            Op::NewTerm => self.term += 1,
            Op::Truncate(back) => {
                let last = self.next_index().checked_sub(1);
                let after = last
                    .and_then(|l| l.checked_sub(*back))
                    .filter(|a| *a + 1 >= self.first_index);
                let below_applied = match (after, self.applied) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(a), Some(applied)) => a < applied,
                };
                let outcome = self.engine().truncate_after(after);
                if below_applied {
                    assert!(
                        outcome.is_err(),
                        "a cut below the applied index {:?} is refused",
                        self.applied
                    );
                    return self.check();
                }
                outcome.expect("truncate");
                let keep = after.map_or(0, |a| (a + 1 - self.first_index) as usize);
                self.entries.truncate(keep);
            }
            Op::Apply(n) => {
                let from = self.applied.map_or(self.first_index, |a| a + 1);
                let through = (from + n).min(self.next_index()).checked_sub(1);
                let Some(through) = through.filter(|t| *t >= from) else {
                    return self.check();
                };
                let applied = self.engine().apply(through).expect("apply");
                let expected: Vec<u64> = (from..=through).collect();
                assert_eq!(
                    applied.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                    expected
                );
                for (index, range) in applied {
                    let entry = &self.entries[(index - self.first_index) as usize];
                    assert_eq!(
                        range.len(),
                        entry.records.len() as u64,
                        "seqs of entry {index}"
                    );
                }
                self.applied = Some(through);
            }
            Op::Seal => {
                self.engine().seal().expect("seal");
            }
            Op::Purge(into) => {
                let Some(applied) = self.applied else {
                    return self.check();
                };
                let through = (self.first_index + into).min(applied);
                self.engine().purge(through).expect("purge");
                self.purged = Some(self.purged.map_or(through, |p| p.max(through)));
            }
            Op::Reopen => {
                self.engine.take().expect("engine").close().expect("close");
                let engine = Engine::open(self.dir.path(), options()).expect("reopen");
                // The consensus layer applies the committed entries again.
                if let Some(applied) = self.applied {
                    engine.apply(applied).expect("apply again after reopen");
                }
                self.engine = Some(engine);
            }
        }
        self.check();
    }

    fn check(&self) {
        let engine = self.engine();
        let floor = self.purged.map_or(0, |p| p + 1);
        let got: Vec<_> = engine
            .read_entries(floor..u64::MAX)
            .expect("read_entries")
            .into_iter()
            .filter(|e| e.index >= floor)
            .collect();
        let model: Vec<_> = self.entries.iter().filter(|e| e.index >= floor).collect();
        assert_eq!(got.len(), model.len(), "entries held");
        for (g, m) in got.iter().zip(&model) {
            assert_eq!(
                (g.term, g.index, g.kind(), g.frame.payload()),
                (m.term, m.index, m.kind, &m.payload[..])
            );
        }
        let bounds = engine.log_bounds().expect("bounds");
        match self.entries.last() {
            // A purge may have deleted the whole log (the caller then
            // reports the purged id as its last).
            Some(last) if self.purged.is_some_and(|p| last.index <= p) => {
                assert!(
                    bounds.is_none_or(|b| b.last == (last.term, last.index)),
                    "{bounds:?}"
                );
            }
            Some(last) => assert_eq!(bounds.map(|b| b.last), Some((last.term, last.index))),
            None => assert_eq!(bounds, None::<LogBounds>),
        }
        assert_eq!(
            engine.applied_index().max(self.applied),
            self.applied,
            "applied never runs ahead"
        );
        let readable: Vec<LogRecord> = self
            .entries
            .iter()
            .filter(|e| self.applied.is_some_and(|a| e.index <= a))
            .flat_map(|e| e.records.iter().cloned())
            .collect();
        let scanned: Vec<_> = engine.scan(..).map(|r| r.expect("scan")).collect();
        assert_eq!(
            scanned.len(),
            readable.len(),
            "exactly the applied records are readable"
        );
        for (i, (got, want)) in scanned.iter().zip(&readable).enumerate() {
            assert_eq!(got.seq, 1 + i as u64, "seqs are positions among records");
            assert_eq!(&got.log, want);
        }
    }
}

#[test]
fn a_cluster_nodes_directory_is_not_opened_embedded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), options()).expect("open");
    engine.save_log_state(b"vote".to_vec()).expect("state file");
    engine.close().expect("close");
    let err = Engine::open(dir.path(), Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster node"), "{err}");
    Engine::open(dir.path(), options()).expect("opened replicated again");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 300, ..ProptestConfig::default() })]

    #[test]
    fn replicated_log_matches_model(start in prop_oneof![Just(0u64), 1u64..5], ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path(), options()).expect("open");
        let mut harness = Harness {
            dir, engine: Some(engine), term: 1, entries: Vec::new(), first_index: start,
            applied: None, purged: None, serial: 0,
        };
        for op in &ops {
            harness.step(op);
        }
        harness.step(&Op::Reopen);
    }
}
