//! The sealer thread: turns finished WAL segments into sealed segments and
//! applies retention.
//!
//! Sealing one segment, in an order that is safe to cut at any point:
//! 1. write its records, in seq order, into one SST under `tmp/` and fsync it;
//! 2. ingest it into `records` (replacing a file a crashed earlier try left);
//! 3. write the manifest entry and the applied WAL index, synced;
//! 4. switch readers to it and delete the WAL file.
//!
//! A crash before 3 leaves the WAL file, which is sealed again at open; a
//! crash after 3 leaves a WAL file whose index is applied, deleted at open.
//! The sealer is the only writer of the manifest.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::shared::{Counters, Shared, now_ns};
use crate::store::file_crc;
use crate::wal::{self, FrameLoc};
use lode_codec::SegmentMeta;
use lode_codec::{ChunkBuilder, KeyedEntry, Layout, RecordsCrc, SeqRange};

/// Waits for the sealer's answer to `rx`, this process's idle-priority
/// threads running as normal ones meanwhile: someone waits on work that
/// an idle thread beside busy ones might otherwise get no CPU for.
pub(crate) fn await_answer<T>(rx: &Receiver<Result<T>>) -> Result<T> {
    let hurry = crate::hurry_background();
    loop {
        match rx.recv_timeout(LOOK_AGAIN) {
            Ok(answer) => return answer,
            Err(RecvTimeoutError::Timeout) => hurry.again(),
            Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
        }
    }
}

/// How often a wait on the sealer looks for threads to raise again: a
/// sealer that starts while someone waits lowers itself after the first
/// look.
const LOOK_AGAIN: Duration = Duration::from_millis(100);

pub(crate) enum SealerMsg {
    /// A WAL segment was finished.
    Work,
    /// Seal everything finished, then answer.
    Barrier(Sender<Result<()>>),
    /// Apply retention as of `now` (ns), then answer.
    Retention {
        now: i64,
        reply: Sender<Result<RetentionReport>>,
    },
    /// Swap a snapshot's segments and manifest in, then answer (the
    /// writer has synced the log and waits).
    Install {
        install: Box<crate::log::SnapshotInstall>,
        reply: Sender<Result<()>>,
    },
    /// Save a built snapshot's description, unless a later one is saved.
    SaveSnapshot {
        index: u64,
        description: Vec<u8>,
        reply: Sender<Result<()>>,
    },
    /// Drop the sealed segments wholly below a seq, then answer (a
    /// replicated log's retention decision).
    DropBelow {
        floor: u64,
        reply: Sender<Result<RetentionReport>>,
    },
}

/// What one retention pass dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
}

/// The wait before the first retry of a failed seal; each failure after
/// doubles it, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Sealer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: Receiver<SealerMsg>,
    pub(crate) stop: Arc<AtomicBool>,
}

/// A finished WAL segment, copied out of the state so the lock is not held
/// while sealing.
struct Finished {
    path: PathBuf,
    first_index: u64,
    frames: Vec<FrameLoc>,
    len: u64,
    map: Arc<Mmap>,
}

impl Sealer {
    pub(crate) fn run(self) {
        // After a failed seal, when the next try is due (and the wait
        // after that one): a full disk or a bad file is not retried in a
        // loop.
        let mut retry: Option<(Instant, Duration)> = None;
        loop {
            // A simulated power loss: no further step.
            if self.shared.crashed.load(Ordering::Acquire) {
                return;
            }
            match self.rx.recv_timeout(self.shared.opts.tick) {
                Ok(SealerMsg::Work) | Err(RecvTimeoutError::Timeout) => {
                    let due = retry.is_none_or(|(at, _)| Instant::now() >= at);
                    let sealed = !self.shared.opts.background_sealing
                        || due
                            && match self.seal_finished() {
                                Ok(()) => {
                                    retry = None;
                                    true
                                }
                                Err(_) => {
                                    let wait =
                                        retry.map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_MAX));
                                    retry = Some((Instant::now() + wait, wait));
                                    false
                                }
                            };
                    // A replicated log drops only what its log decided
                    // (segments sealed since a decision go now).
                    if sealed && self.shared.opts.replicated {
                        let _ = self.drop_below(0);
                    } else if sealed {
                        let _ = self.retention(now_ns());
                    }
                }
                Ok(SealerMsg::Barrier(reply)) => {
                    let _ = reply.send(self.seal_finished());
                }
                Ok(SealerMsg::Retention { now, reply }) => {
                    let _ = reply.send(self.retention(now));
                }
                Ok(SealerMsg::Install { install, reply }) => {
                    let _ = reply.send(self.install(&install));
                }
                Ok(SealerMsg::SaveSnapshot {
                    index,
                    description,
                    reply,
                }) => {
                    let saved = self.shared.store.snapshot().and_then(|saved| match saved {
                        Some((at, _)) if at >= index => Ok(()),
                        _ => self.shared.store.save_snapshot(index, &description),
                    });
                    let _ = reply.send(saved);
                }
                Ok(SealerMsg::DropBelow { floor, reply }) => {
                    let _ = reply.send(self.drop_below(floor));
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
        }
    }

    /// Seals the WAL segments finished now (every one but the active),
    /// oldest first. Those finished meanwhile wait for the next call, so
    /// that a steady ingest does not hold back the messages queued behind
    /// (a snapshot's save, an install).
    fn seal_finished(&self) -> Result<()> {
        let mut left = self.shared.read().wal.len().saturating_sub(1);
        while left > 0 && !self.stop.load(Ordering::Acquire) {
            left -= 1;
            let next = {
                let state = self.shared.read();
                if state.wal.len() < 2 {
                    return Ok(());
                }
                // A replicated log seals only applied (committed) entries:
                // nothing sealed can be cut.
                let unapplied = |w: &crate::wal::WalSegment| {
                    w.last_index()
                        .is_some_and(|last| state.applied.is_none_or(|a| last > a))
                };
                if self.shared.opts.replicated && state.wal.front().is_some_and(unapplied) {
                    return Ok(());
                }
                state.wal.front().map(|w| Finished {
                    path: w.path.clone(),
                    first_index: w.first_index,
                    frames: w.frames.clone(),
                    len: w.len,
                    map: Arc::clone(&w.map),
                })
            };
            let Some(finished) = next else { return Ok(()) };
            if let Err(e) = self.seal(&finished) {
                Counters::add(&self.shared.counters.seal_failures, 1);
                tracing::warn!(error = %e, path = %finished.path.display(), "sealing failed; will retry");
                *Shared::lock(&self.shared.last_seal_error) = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }

    fn seal(&self, finished: &Finished) -> Result<()> {
        let (Some(first), Some(last)) = (finished.frames.first(), finished.frames.last()) else {
            // An empty finished segment holds nothing to seal.
            return self.retire(finished, None);
        };
        if first.first_seq == last.end_seq() {
            // Only entries without records (a replicated log's blank and
            // membership entries).
            return self.retire(finished, None);
        }
        let (first_seq, last_seq) = (first.first_seq, last.end_seq() - 1);
        let tmp = self
            .shared
            .tmp_dir
            .join(format!("seal-{first_seq:020}.sst"));
        let (records_crc32c, keys) = self.write_sst(finished, &tmp)?;
        let (sst_bytes, sst_crc32c) = file_crc(&tmp)?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(Error::io("fsync", &tmp))?;
        let meta = SegmentMeta {
            first_seq,
            last_seq,
            first_index: first.index,
            last_index: last.index,
            min_ts: finished.frames.iter().map(|f| f.min_ts).min().unwrap_or(0),
            max_ts: finished.frames.iter().map(|f| f.max_ts).max().unwrap_or(0),
            records: last_seq - first_seq + 1,
            wal_bytes: finished.len - wal::FILE_HEADER_LEN,
            sst_bytes,
            sst_crc32c,
            sealed_at: now_ns(),
            records_crc32c: Some(records_crc32c),
            layout: Layout::Chunks,
        };
        self.keep_file(&tmp, &meta)?;
        self.shared.store.ingest(&tmp, first_seq, last_seq)?;
        let (forget, forgotten) = self.keys_to_forget(keys.len(), &meta)?;
        self.shared.store.commit_segment(&meta, &keys, forget)?;
        let keyed = &self.shared.keyed;
        let now = keyed.load(Ordering::Acquire) + keys.len();
        keyed.store(now.saturating_sub(forgotten), Ordering::Release);
        self.retire(finished, Some(meta))
    }

    /// The remembered keyed batches to forget when `adding` more are
    /// sealed with `segment`: the oldest past [`crate::KeyWindow`]'s count,
    /// and those of segments sealed longer ago than its age.
    fn keys_to_forget(&self, adding: usize, segment: &SegmentMeta) -> Result<(Option<u64>, usize)> {
        let window = self.shared.opts.keys;
        let held = self.shared.keyed.load(Ordering::Acquire);
        let excess = (held + adding).saturating_sub(window.count);
        let oldest = segment
            .sealed_at
            .saturating_sub(i64::try_from(window.max_age.as_nanos()).unwrap_or(i64::MAX));
        // Seqs of segments sealed before `oldest` end here.
        let expired_end = self
            .shared
            .read()
            .sealed
            .values()
            .filter(|s| s.sealed_at < oldest)
            .map(|s| s.last_seq + 1)
            .max()
            .unwrap_or(0);
        self.shared.store.keyed_to_forget(excess, expired_end)
    }

    /// A replicated log keeps each segment's SST as sealed, a hard link
    /// beside the one RocksDB ingests (no bytes copied), so that it can be
    /// sent to a lagging node.
    fn keep_file(&self, tmp: &std::path::Path, segment: &SegmentMeta) -> Result<()> {
        let Some(path) = self.shared.segment_path(segment) else {
            return Ok(());
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &path)(e)),
        }
        fs::hard_link(tmp, &path).map_err(Error::io("link", &path))?;
        let dir = path.parent().unwrap_or(&path);
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("fsync", dir))
    }

    /// Writes the segment's SST; returns its records' checksum and its
    /// keyed batches.
    fn write_sst(
        &self,
        finished: &Finished,
        tmp: &std::path::Path,
    ) -> Result<(u32, Vec<KeyedEntry>)> {
        let mut sst = self.shared.store.sst_writer(tmp)?;
        let mut crc = RecordsCrc::default();
        let mut value = Vec::new();
        let mut keys = Vec::new();
        let mut chunk = ChunkBuilder::default();
        let mut chunk_seq = 0;
        // The last record's seq and the key of the last chunk written.
        let (mut last_seq, mut last_key) = (0, 0);
        for loc in finished.frames.iter().filter(|f| f.count > 0) {
            let frame = wal::read_frame(&finished.map, &finished.path, loc)?;
            if let Some(key) = frame.key() {
                keys.push(KeyedEntry {
                    index: loc.index,
                    key,
                    seqs: SeqRange {
                        start: loc.first_seq,
                        end: loc.end_seq(),
                    },
                });
            }
            let batch = frame
                .batch()
                .map_err(|e| Error::corrupt(&finished.path, loc.offset, e))?;
            // The checksum is of each record as one value per record
            // holds it (its tenant, then its archive), whatever the layout.
            for (i, seq) in (loc.first_seq..loc.end_seq()).enumerate() {
                let corrupt = |e| Error::corrupt(&finished.path, loc.offset, e);
                let bytes = batch
                    .record_bytes(i)
                    .ok_or_else(|| corrupt(format!("record {seq} missing")))?;
                crc.add_sealed(batch.tenant(), bytes)
                    .map_err(|e| corrupt(e.to_string()))?;
                if chunk.is_empty() {
                    chunk_seq = seq;
                }
                last_seq = seq;
                chunk.push(batch.record(i).map_err(|e| corrupt(e.to_string()))?);
                if chunk.raw_bytes() >= self.shared.opts.sealed_block_bytes {
                    self.put_chunk(&mut sst, &mut chunk, chunk_seq, &mut value)?;
                    last_key = chunk_seq;
                }
            }
        }
        if !chunk.is_empty() {
            self.put_chunk(&mut sst, &mut chunk, chunk_seq, &mut value)?;
            last_key = chunk_seq;
        }
        // The segment's end, an empty value: the file's keys span the
        // segment's seqs, as one value per record did, so deleting the
        // files within a replaced segment's seqs spares a file that holds
        // more (`free_replaced`).
        if last_seq > last_key {
            sst.put(last_seq, &[])?;
        }
        sst.finish()?;
        Ok((crc.value(), keys))
    }

    /// Writes the records in `chunk` as the value of `seq`, its first.
    fn put_chunk(
        &self,
        sst: &mut crate::store::SstBuilder<'_>,
        chunk: &mut ChunkBuilder,
        seq: u64,
        value: &mut Vec<u8>,
    ) -> Result<()> {
        value.clear();
        chunk
            .finish(value)
            .map_err(|e| Error::corrupt(&self.shared.tmp_dir, seq, e))?;
        sst.put(seq, value)
    }

    /// Switches readers from the WAL segment to its sealed form and deletes
    /// the WAL file (a replicated log keeps it until purged).
    fn retire(&self, finished: &Finished, meta: Option<SegmentMeta>) -> Result<()> {
        let replicated = self.shared.opts.replicated;
        {
            let mut state = self.shared.write();
            if let Some(meta) = meta {
                state.sealed.insert(meta.first_seq, meta);
            }
            if state
                .wal
                .front()
                .is_some_and(|w| w.first_index == finished.first_index)
                && let Some(segment) = state.wal.pop_front()
                && replicated
            {
                state.retained.push_back(segment);
            }
        }
        Counters::add(&self.shared.counters.seals, 1);
        *Shared::lock(&self.shared.last_seal_error) = None;
        if replicated {
            return Ok(());
        }
        // The segment is sealed either way: a WAL file left behind has an
        // applied index and is deleted at the next open.
        if let Err(e) = fs::remove_file(&finished.path) {
            tracing::warn!(error = %e, path = %finished.path.display(), "could not delete a sealed WAL file");
        }
        Ok(())
    }

    /// Swaps an installed snapshot's segments in: each missing file is
    /// kept and ingested, then the manifest changes in one synced write,
    /// then readers see the new segments and the log's files at or below
    /// the snapshot leave the records' way (kept as log until purged).
    fn install(&self, install: &crate::log::SnapshotInstall) -> Result<()> {
        tracing::info!(
            through = install.through,
            segments = install.segments.len(),
            files = install.files.len(),
            "installing a snapshot"
        );
        for (segment, path) in &install.files {
            tracing::debug!(
                first_seq = segment.first_seq,
                last_seq = segment.last_seq,
                path = %path.display(),
                "ingesting a staged segment"
            );
            let len = fs::metadata(path).map_err(Error::io("stat", path))?.len();
            if len != segment.sst_bytes {
                return Err(Error::InvalidArgument(format!(
                    "{} holds {len} bytes; segment {} has {}",
                    path.display(),
                    segment.first_seq,
                    segment.sst_bytes
                )));
            }
            self.keep_file(path, segment)?;
            // RocksDB moves the file it ingests: it gets a link of its own.
            let tmp = self
                .shared
                .tmp_dir
                .join(format!("install-{:020}.sst", segment.first_seq));
            let _ = fs::remove_file(&tmp);
            fs::hard_link(path, &tmp).map_err(Error::io("link", &tmp))?;
            // Over the node's own files of those seqs, which stay until
            // the manifest no longer names them: a crash before the swap
            // leaves every record the manifest names readable.
            self.shared.store.ingest_over(&tmp)?;
        }
        let replaced: Vec<SegmentMeta> = self
            .shared
            .read()
            .sealed
            .values()
            .filter(|held| !install.segments.contains(held))
            .cloned()
            .collect();
        // The store cuts below the floor by the installed segments' layouts.
        self.shared.store.set_segments(&install.segments);
        self.shared.store.install(install, &replaced)?;
        self.shared
            .keyed
            .store(install.keys.len(), Ordering::Release);
        if install.settings.is_some() {
            self.shared.reload_settings()?;
        }
        {
            let mut state = self.shared.write();
            state.sealed = install
                .segments
                .iter()
                .map(|s| (s.first_seq, s.clone()))
                .collect();
            state.first_seq = install.floor;
            state.end_seq = install.end_seq;
            state.applied = Some(install.through);
            cover_log(&mut state, install.through);
        }
        let names: Vec<PathBuf> = install
            .segments
            .iter()
            .filter_map(|s| self.shared.segment_path(s))
            .collect();
        for segment in &replaced {
            if let Some(path) = self
                .shared
                .segment_path(segment)
                .filter(|p| !names.contains(p))
            {
                let _ = fs::remove_file(path);
            }
            // The install is done and durable: a file not freed now only
            // takes space.
            if let Err(e) = self.free_replaced(segment, &install.segments) {
                tracing::warn!(error = %e, first_seq = segment.first_seq, "could not free a replaced segment's file");
            }
        }
        self.shared.notify();
        Ok(())
    }

    /// Deletes the record file of `replaced`, a segment the manifest no
    /// longer names, unless an installed segment lies within its seqs (a
    /// file of the very same seqs would go with it: it stays, its keys
    /// those of the installed file, until retention drops those seqs). A
    /// file left would hold chunks of other bounds beside the installed
    /// ones.
    fn free_replaced(&self, replaced: &SegmentMeta, installed: &[SegmentMeta]) -> Result<()> {
        // The files within its seqs hold no installed segment's keys (a
        // file's keys span its segment's seqs) unless one lies inside.
        let holds_installed = installed
            .iter()
            .any(|s| replaced.first_seq <= s.first_seq && s.last_seq <= replaced.last_seq);
        if !holds_installed {
            self.shared
                .store
                .delete_files_within(replaced.first_seq, replaced.last_seq)?;
        }
        Ok(())
    }

    /// Drops the oldest sealed segments beyond the retention bounds.
    pub(crate) fn retention(&self, now: i64) -> Result<RetentionReport> {
        let doomed = doomed_by_policy(&self.shared, now);
        let Some(last) = doomed.last() else {
            return Ok(RetentionReport::default());
        };
        let floor = last.last_seq + 1;
        self.drop_segments(&doomed, floor)
    }

    /// Drops every sealed segment whose records are all below `floor` (or
    /// below the first seq kept, if higher: a segment sealed after the
    /// decision), and hides the records below `floor` of one that
    /// straddles it.
    fn drop_below(&self, floor: u64) -> Result<RetentionReport> {
        let (doomed, floor) = {
            let state = self.shared.read();
            let floor = floor.max(state.first_seq);
            let doomed: Vec<SegmentMeta> = state
                .sealed
                .values()
                .take_while(|s| s.last_seq < floor)
                .cloned()
                .collect();
            (doomed, floor)
        };
        if doomed.is_empty() && floor == self.shared.read().first_seq {
            return Ok(RetentionReport::default());
        }
        self.drop_segments(&doomed, floor)
    }

    fn drop_segments(&self, doomed: &[SegmentMeta], floor: u64) -> Result<RetentionReport> {
        // Readers see the new first seq before any record goes, so a scan
        // never finds a gap below a first seq that still claims it.
        {
            let mut state = self.shared.write();
            for segment in doomed {
                state.sealed.remove(&segment.first_seq);
            }
            state.first_seq = state.first_seq.max(floor);
        }
        let cut = {
            let state = self.shared.read();
            crate::store::cut(floor, state.sealed.values())
        };
        self.shared.store.drop_below(floor, cut, doomed)?;
        for segment in doomed {
            if let Some(path) = self.shared.segment_path(segment) {
                let _ = fs::remove_file(path);
            }
        }
        let report = RetentionReport {
            segments: doomed.len() as u64,
            records: doomed.iter().map(|s| s.records).sum(),
            bytes: doomed.iter().map(|s| s.sst_bytes).sum(),
        };
        let counters = &self.shared.counters;
        Counters::add(&counters.dropped_segments, report.segments);
        Counters::add(&counters.dropped_records, report.records);
        Counters::add(&counters.dropped_bytes, report.bytes);
        Ok(report)
    }
}

/// After a snapshot through `through` is installed: the log's files wholly
/// at or below it (but the active one, which the writer replaces) hold
/// no readable records any more and are kept as log only; a file that
/// also holds later entries starts at its first later frame.
fn cover_log(state: &mut crate::shared::State, through: u64) {
    while state.wal.len() > 1
        && state
            .wal
            .front()
            .is_some_and(|w| w.last_index().is_none_or(|last| last <= through))
    {
        if let Some(covered) = state.wal.pop_front() {
            state.retained.push_back(covered);
        }
    }
    if let Some(front) = state.wal.front_mut()
        && front.last_index().is_some_and(|last| last > through)
    {
        front.skip_through(through);
    }
}

/// The oldest sealed segments beyond the retention bounds as of `now`.
pub(crate) fn doomed_by_policy(shared: &Shared, now: i64) -> Vec<SegmentMeta> {
    let policy = shared.opts.retention;
    let state = shared.read();
    let mut total: u64 = state.sealed.values().map(|s| s.sst_bytes).sum();
    let too_old = |s: &SegmentMeta| {
        policy.max_age.is_some_and(|age| {
            s.max_ts < now.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX))
        })
    };
    let mut doomed = Vec::new();
    for segment in state.sealed.values() {
        if !(too_old(segment) || policy.max_bytes.is_some_and(|max| total > max)) {
            break;
        }
        total -= segment.sst_bytes;
        doomed.push(segment.clone());
    }
    doomed
}
