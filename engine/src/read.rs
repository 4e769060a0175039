//! Reads: point gets, scans by seq and by time, live subscriptions, stats.
//!
//! A reader locates records under the state's read lock, copies out what it
//! needs (an `Arc` of a WAL map, a frame location) and decodes after
//! releasing it. Records in the WAL are read in place through the map, with
//! checked access; sealed records come from RocksDB.

use std::collections::{HashMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lode_codec::{Record, RecordRef};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::wal::{self, FrameLoc, TailCut};

/// Records fetched per step of a scan or subscription.
const CHUNK: usize = 1024;

/// Figures about the engine, cheap to take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Oldest retained seq and one past the newest durable seq.
    pub first_seq: u64,
    pub next_seq: u64,
    pub records: u64,
    pub wal_segments: u64,
    pub wal_bytes: u64,
    pub unsealed_records: u64,
    pub sealed_segments: u64,
    pub sealed_records: u64,
    /// Bytes of sealed SST files, as written.
    pub sealed_bytes: u64,
    pub appends: u64,
    pub appended_records: u64,
    /// Write + sync rounds of the writer (each serves one or more appends).
    pub group_commits: u64,
    pub wal_bytes_written: u64,
    pub seals: u64,
    pub seal_failures: u64,
    pub last_seal_error: Option<String>,
    pub dropped_segments: u64,
    pub dropped_records: u64,
    pub dropped_bytes: u64,
    /// What recovery cut from the WAL at open.
    pub recovery_cuts: Vec<TailCut>,
    /// Why writes are refused, after a failed write or fsync.
    pub poisoned: Option<String>,
}

/// What [`Shared::visit`] calls with each record; an error (a record that
/// does not decode) stops the visit.
pub(crate) type Visitor<'a> =
    dyn FnMut(u64, RecordRef<'_>) -> std::result::Result<(), lode_codec::CodecError> + 'a;

/// Where the next records of a range are.
enum Source {
    Wal {
        map: Arc<memmap2::Mmap>,
        path: std::path::PathBuf,
        frames: Vec<FrameLoc>,
    },
    Sealed,
    Nothing,
}

impl Shared {
    /// Appends to `out` up to `max` records with seq in `[from, end)`, all
    /// from one place (one WAL segment or the sealed store); returns the seq
    /// to continue from.
    pub(crate) fn fetch(
        &self,
        from: u64,
        end: u64,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<u64> {
        self.visit(from, end, max, &mut |seq, record| {
            out.push(Record {
                seq,
                log: record.to_owned_record()?,
            });
            Ok(())
        })
    }

    /// Calls `f` with each of `seqs` (ascending) that the WAL holds, read
    /// in place, each frame parsed once however many of its records are
    /// asked for; returns the seqs it no longer holds (sealed meanwhile).
    pub(crate) fn visit_wal_seqs(&self, seqs: &[u64], f: &mut Visitor<'_>) -> Result<Vec<u64>> {
        let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
            return Ok(Vec::new());
        };
        let files: Vec<(Arc<memmap2::Mmap>, std::path::PathBuf, Vec<FrameLoc>)> = {
            let state = self.read();
            state
                .wal
                .iter()
                .filter(|w| w.first_seq <= hi && lo < w.end_seq())
                .map(|w| {
                    let start = w.frames.partition_point(|f| f.end_seq() <= lo);
                    let frames = w.frames.iter().skip(start);
                    let frames = frames.take_while(|loc| loc.first_seq <= hi).copied();
                    (Arc::clone(&w.map), w.path.clone(), frames.collect())
                })
                .collect()
        };
        let mut missed = Vec::new();
        let mut rest = seqs;
        for (map, path, frames) in &files {
            for loc in frames.iter().filter(|loc| loc.count > 0) {
                let below = rest.partition_point(|&seq| seq < loc.first_seq);
                let (before, from) = rest.split_at(below);
                missed.extend_from_slice(before);
                let inside = from.partition_point(|&seq| seq < loc.end_seq());
                let (wanted, after) = from.split_at(inside);
                rest = after;
                if wanted.is_empty() {
                    continue;
                }
                let frame = wal::read_indexed_frame(map, path, loc)?;
                let batch = frame
                    .batch()
                    .map_err(|e| Error::corrupt(path, loc.offset, e))?;
                for &seq in wanted {
                    batch
                        .record((seq - loc.first_seq) as usize)
                        .and_then(|record| f(seq, record))
                        .map_err(|e| {
                            Error::corrupt(path, loc.offset, format!("record {seq}: {e}"))
                        })?;
                }
            }
        }
        missed.extend_from_slice(rest);
        Ok(missed)
    }

    /// Calls `f` with up to `max` records with seq in `[from, end)`, read in
    /// place and checked, all from one place (one WAL segment or the sealed
    /// store); returns the seq to continue from.
    pub(crate) fn visit(
        &self,
        from: u64,
        end: u64,
        max: usize,
        f: &mut Visitor<'_>,
    ) -> Result<u64> {
        let (from, end, source) = {
            let state = self.read();
            let from = from.max(state.first_seq);
            let end = end.min(state.end_seq);
            if from >= end {
                return Ok(from);
            }
            let source = match state
                .wal
                .iter()
                .find(|w| from >= w.first_seq && from < w.end_seq())
            {
                Some(w) => {
                    let start = w.frame_position(from).unwrap_or(w.frames.len());
                    let mut frames = Vec::new();
                    let mut count = 0usize;
                    for f in w
                        .frames
                        .iter()
                        .skip(start)
                        .take_while(|f| f.first_seq < end)
                    {
                        frames.push(*f);
                        count += f.count as usize;
                        if count >= max {
                            break;
                        }
                    }
                    Source::Wal {
                        map: Arc::clone(&w.map),
                        path: w.path.clone(),
                        frames,
                    }
                }
                // Below the WAL, or in a sealed segment (an installed
                // snapshot's, while the writer has yet to start the log
                // after it).
                None if state.wal.front().is_some_and(|w| from < w.first_seq)
                    || state
                        .sealed
                        .range(..=from)
                        .next_back()
                        .is_some_and(|(_, s)| from <= s.last_seq) =>
                {
                    Source::Sealed
                }
                None => Source::Nothing,
            };
            (from, end.min(from.saturating_add(max as u64)), source)
        };
        match source {
            Source::Nothing => Ok(end),
            Source::Sealed => {
                // Records retention dropped while we looked are simply gone.
                Ok(self
                    .store
                    .visit(from, end, max, f)?
                    .map_or(end, |last| last + 1))
            }
            Source::Wal { map, path, frames } => {
                let mut next = from;
                for loc in frames.iter().filter(|f| f.count > 0) {
                    let frame = wal::read_indexed_frame(&map, &path, loc)?;
                    let batch = frame
                        .batch()
                        .map_err(|e| Error::corrupt(&path, loc.offset, e))?;
                    // Only the records asked for are checked (a point read
                    // must not check the frame's other records).
                    let first = from.max(loc.first_seq);
                    let last = end.min(loc.first_seq + batch.len() as u64);
                    for seq in first..last {
                        let record = batch.record((seq - loc.first_seq) as usize).map_err(|e| {
                            Error::corrupt(&path, loc.offset, format!("record {seq}: {e}"))
                        })?;
                        f(seq, record).map_err(|e| {
                            Error::corrupt(&path, loc.offset, format!("record {seq}: {e}"))
                        })?;
                        next = seq + 1;
                    }
                }
                Ok(next.max(frames.last().map_or(end, |f| f.end_seq().min(end))))
            }
        }
    }
}

impl Engine {
    /// The record with this seq, if it is durable and retained.
    pub fn get(&self, seq: u64) -> Result<Option<Record>> {
        let mut out = Vec::with_capacity(1);
        self.shared.fetch(seq, seq.saturating_add(1), 1, &mut out)?;
        Ok(out.pop())
    }

    /// The records with these seqs that are durable and retained, in the
    /// order of `seqs`, missing ones left out and a repeated one given
    /// once (a search's page); read as [`Engine::visit_seqs`] reads them.
    pub fn get_many(&self, seqs: &[u64]) -> Result<Vec<Record>> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut found = HashMap::with_capacity(sorted.len());
        self.visit_held(&sorted, &mut |seq, record| {
            found.insert(seq, record.to_owned_record()?);
            Ok(())
        })?;
        Ok(seqs
            .iter()
            .filter_map(|&seq| found.remove(&seq).map(|log| Record { seq, log }))
            .collect())
    }

    /// Calls `f` with each record of `seqs` (ascending) that is durable and
    /// retained, read in place (checked, not copied), in seq order: for a
    /// batch of scattered records, such as a search's candidates. Sealed
    /// records are read through one store iterator (a point read otherwise
    /// pays for an iterator of its own), records in the WAL in place.
    pub fn visit_seqs<F>(&self, seqs: &[u64], mut f: F) -> Result<()>
    where
        F: FnMut(u64, RecordRef<'_>),
    {
        self.visit_held(seqs, &mut |seq, record| {
            f(seq, record);
            Ok(())
        })
    }

    /// [`Engine::visit_seqs`] with a visitor that can fail.
    fn visit_held(&self, seqs: &[u64], f: &mut Visitor<'_>) -> Result<()> {
        let (first, end, wal_first) = {
            let state = self.shared.read();
            let wal_first = state.wal.front().map_or(state.end_seq, |w| w.first_seq);
            (state.first_seq, state.end_seq, wal_first)
        };
        let held: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| (first..end).contains(seq))
            .collect();
        let (sealed, unsealed) = held.split_at(held.partition_point(|&seq| seq < wal_first));
        self.shared.store.visit_seqs(sealed, f)?;
        for seq in self.shared.visit_wal_seqs(unsealed, f)? {
            // Sealed meanwhile, the record is found in the store instead.
            self.shared.visit(seq, seq + 1, 1, f)?;
        }
        Ok(())
    }

    /// Records with seq in `range`, in seq order. The scan sees records
    /// durable when each chunk is fetched, so it may also see appends made
    /// after it started.
    pub fn scan(&self, range: impl RangeBounds<u64>) -> Scan {
        let (start, end) = half_open(&range, || self.shared.read().end_seq);
        Scan::new(Arc::clone(&self.shared), vec![(start, end)], None)
    }

    /// Records with `since <= ts < until` (ns), in seq order. Segments and
    /// WAL frames whose time range misses the window are skipped unread.
    pub fn scan_time(&self, since: i64, until: i64) -> Scan {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut push = |start: u64, end: u64| match ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => ranges.push((start, end)),
        };
        let state = self.shared.read();
        for segment in state
            .sealed
            .values()
            .filter(|s| s.overlaps_time(since, until))
        {
            push(segment.first_seq, segment.last_seq + 1);
        }
        for frame in state.wal.iter().flat_map(|w| w.frames.iter()) {
            if frame.min_ts < until && frame.max_ts >= since {
                push(frame.first_seq, frame.end_seq());
            }
        }
        drop(state);
        Scan::new(Arc::clone(&self.shared), ranges, Some((since, until)))
    }

    /// Calls `f` with the durable, retained records with seq in `range`, in
    /// seq order, read in place (checked, not copied): for consumers, such as
    /// an indexer, that only look at each record once. Returns the seq to
    /// continue from (the end of what was visited).
    pub fn visit<F>(&self, range: std::ops::Range<u64>, mut f: F) -> Result<u64>
    where
        F: FnMut(u64, RecordRef<'_>),
    {
        let mut next = range.start;
        while next < range.end {
            let step = self
                .shared
                .visit(next, range.end, CHUNK, &mut |seq, record| {
                    f(seq, record);
                    Ok(())
                })?;
            if step <= next {
                break;
            }
            next = step;
        }
        Ok(next)
    }

    /// One past the newest durable seq.
    pub fn next_seq(&self) -> u64 {
        self.shared.read().end_seq
    }

    /// The oldest seq retention keeps.
    pub fn first_seq(&self) -> u64 {
        self.shared.read().first_seq
    }

    /// Waits until a record with seq `>= seq` is durable, the engine closes
    /// or `timeout` passes; true if such a record is there.
    pub fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        self.shared.wait_beyond(seq, timeout);
        self.next_seq() > seq
    }

    /// A live iterator over records from `from_seq` on: it returns what is
    /// stored, then blocks for new records as they become durable. Records
    /// retention dropped before they were read are skipped.
    pub fn subscribe(&self, from_seq: u64) -> Subscription {
        Subscription {
            shared: Arc::clone(&self.shared),
            next: from_seq,
            buffer: VecDeque::new(),
        }
    }

    /// Current figures.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let state = self.shared.read();
        let sealed_records = state.sealed.values().map(|s| s.records).sum();
        Stats {
            first_seq: state.first_seq,
            next_seq: state.end_seq,
            records: state.end_seq - state.first_seq,
            wal_segments: state.wal.len() as u64,
            wal_bytes: state.wal.iter().map(|w| w.len).sum(),
            unsealed_records: state.wal.iter().map(|w| w.records()).sum(),
            sealed_segments: state.sealed.len() as u64,
            sealed_records,
            sealed_bytes: state.sealed.values().map(|s| s.sst_bytes).sum(),
            appends: load(&c.appends),
            appended_records: load(&c.appended_records),
            group_commits: load(&c.group_commits),
            wal_bytes_written: load(&c.wal_bytes_written),
            seals: load(&c.seals),
            seal_failures: load(&c.seal_failures),
            last_seal_error: Shared::lock(&self.shared.last_seal_error).clone(),
            dropped_segments: load(&c.dropped_segments),
            dropped_records: load(&c.dropped_records),
            dropped_bytes: load(&c.dropped_bytes),
            recovery_cuts: self.shared.recovery.clone(),
            poisoned: self.shared.poisoned(),
        }
    }
}

/// `[start, end)` of a range of positions; an unbounded end is `end()`.
pub(crate) fn half_open(range: &impl RangeBounds<u64>, end: impl FnOnce() -> u64) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => end(),
    };
    (start, end)
}

/// An iterator over stored records; see [`Engine::scan`].
#[derive(Debug)]
pub struct Scan {
    shared: Arc<Shared>,
    ranges: VecDeque<(u64, u64)>,
    time: Option<(i64, i64)>,
    buffer: VecDeque<Record>,
    failed: bool,
}

impl Scan {
    fn new(shared: Arc<Shared>, ranges: Vec<(u64, u64)>, time: Option<(i64, i64)>) -> Scan {
        Scan {
            shared,
            ranges: ranges.into(),
            time,
            buffer: VecDeque::new(),
            failed: false,
        }
    }

    fn refill(&mut self) -> Result<()> {
        while self.buffer.is_empty() {
            let Some(&(start, end)) = self.ranges.front() else {
                return Ok(());
            };
            if start >= end {
                self.ranges.pop_front();
                continue;
            }
            let mut out = Vec::new();
            let next = self.shared.fetch(start, end, CHUNK, &mut out)?;
            if let Some(range) = self.ranges.front_mut() {
                range.0 = next.max(start + 1);
            }
            let time = self.time;
            self.buffer.extend(
                out.into_iter()
                    .filter(|r| time.is_none_or(|(s, u)| r.ts >= s && r.ts < u)),
            );
        }
        Ok(())
    }
}

impl Iterator for Scan {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.refill() {
            self.failed = true;
            return Some(Err(e));
        }
        self.buffer.pop_front().map(Ok)
    }
}

/// A live subscription; see [`Engine::subscribe`]. Iterating blocks until
/// the next record is durable and ends when the engine closes.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
    next: u64,
    buffer: VecDeque<Record>,
}

impl Subscription {
    /// The next record, waiting at most `timeout` for one; `Ok(None)` when
    /// none came in time or the engine closed.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.buffer.pop_front() {
                return Ok(Some(record));
            }
            let mut out = Vec::new();
            let next = self.shared.fetch(self.next, u64::MAX, CHUNK, &mut out)?;
            if let Some(last) = out.last() {
                self.next = last.seq + 1;
                self.buffer.extend(out);
                continue;
            }
            self.next = self.next.max(next.min(self.shared.read().end_seq));
            let now = Instant::now();
            if now >= deadline || self.shared.is_closed() {
                return Ok(None);
            }
            self.shared.wait_beyond(self.next, deadline - now);
        }
    }

    /// The seq the subscription will return next.
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl Iterator for Subscription {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            match self.next_timeout(Duration::from_secs(1)) {
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) if self.shared.is_closed() => return None,
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
