//! The group-commit writer thread: the only code that writes WAL files.
//!
//! Appenders encode their batch on their own thread and send it here; the
//! writer takes every batch waiting in the channel (up to a byte budget),
//! gives each its log index and seqs, writes them with one `writev`, syncs
//! once, publishes the new frames to readers, and only then acknowledges.
//! After a failed write or sync the engine is poisoned: nothing more is
//! written, every append is refused with the cause.

use std::fs::{self, File};
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use lode_codec::EncodedBatch;

use crate::SeqRange;
use crate::error::{Error, Result};
use crate::options::Durability;
use crate::sealer::SealerMsg;
use crate::shared::{Counters, Shared};
use crate::wal::{self, FrameLoc, WalSegment};

pub(crate) struct AppendReq {
    /// Shared, not owned: a replicated log's entry is also held by the
    /// consensus layer; the writer only reads it.
    pub(crate) batch: Arc<EncodedBatch>,
    /// Replicated mode: the entry's (term, index), given by the consensus
    /// layer; the writer checks that the index follows the log.
    pub(crate) log_id: Option<(u64, u64)>,
    pub(crate) reply: Reply,
}

/// How an append learns its outcome: a channel a thread blocks on, or a
/// callback run on the writer thread (it must be quick: an async task's
/// waker, say).
pub(crate) enum Reply {
    Channel(Sender<Result<SeqRange>>),
    Callback(Box<dyn FnOnce(Result<SeqRange>) + Send>),
}

impl Reply {
    pub(crate) fn send(self, outcome: Result<SeqRange>) {
        match self {
            Reply::Channel(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Callback(done) => done(outcome),
        }
    }
}

pub(crate) enum WriterMsg {
    Append(AppendReq),
    /// Start a new segment (if the active one holds anything) and wait until
    /// every finished segment is sealed.
    SealAll(Sender<Result<()>>),
    /// fdatasync what is written (under `Durability::Buffered`).
    Sync(Sender<Result<()>>),
    /// Replicated mode: cut the entries after this index (all for `None`).
    Truncate {
        after: Option<u64>,
        reply: Sender<Result<()>>,
    },
    /// Replicated mode: make the records of entries up to this index
    /// readable; answers each newly applied entry's index and seqs.
    Apply {
        through: u64,
        reply: Sender<Result<Vec<(u64, SeqRange)>>>,
    },
    /// Replicated mode: entries up to this index are covered by a snapshot;
    /// delete the sealed WAL files that hold only such entries.
    Purge {
        through: u64,
        reply: Sender<Result<()>>,
    },
    /// Replicated mode: install a snapshot (see `Engine::install_snapshot`).
    Install {
        install: Box<crate::log::SnapshotInstall>,
        reply: Sender<Result<()>>,
    },
    /// Replicated mode: replace the log's state file (vote, committed
    /// index) atomically, ordered with appends.
    SaveState {
        bytes: Vec<u8>,
        reply: Sender<Result<()>>,
    },
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: Receiver<WriterMsg>,
    pub(crate) sealer: Sender<SealerMsg>,
    pub(crate) file: File,
    /// Path of the active WAL file, for errors.
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
    pub(crate) next_index: u64,
    pub(crate) next_seq: u64,
    pub(crate) first_frame_at: Option<Instant>,
    pub(crate) unsynced: bool,
    /// How much of the active file is known to be on disk (fsynced).
    pub(crate) synced_len: u64,
    pub(crate) last_sync: Instant,
    /// An embedded log's keyed batches: a retry is answered, not written
    /// (`None` for a replicated log, whose leader decides that).
    pub(crate) keys: Option<crate::keys::KeyTable>,
    /// When the free space and the seal backlog were last looked at.
    pub(crate) space_checked: Option<Instant>,
    /// Hurries sealing while a finished segment waits too long.
    pub(crate) sealing: crate::Overdue,
}

/// How long a finished WAL segment may wait to be sealed before sealing
/// is hurried (see `Writer::bound_seal_backlog`).
const SEAL_AGE: Duration = Duration::from_secs(2);

/// How long a replicated log's write waits for space on a full disk
/// before the engine gives up (poisoned: the node's Raft stops).
const DISK_FULL_PATIENCE: Duration = Duration::from_secs(30);

impl Writer {
    fn tick(&self) -> Duration {
        match self.shared.opts.durability {
            Durability::Sync => self.shared.opts.tick,
            Durability::Buffered { window } => window.min(self.shared.opts.tick),
        }
    }

    pub(crate) fn run(mut self) {
        let mut pending = None;
        loop {
            let msg = match pending.take() {
                Some(msg) => msg,
                None => match self.rx.recv_timeout(self.tick()) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => {
                        self.on_tick();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if self
                .shared
                .crashed
                .load(std::sync::atomic::Ordering::Acquire)
            {
                drop(msg);
                return self.crash();
            }
            match msg {
                WriterMsg::Append(first) => {
                    let (group, next) = self.gather(first);
                    pending = next;
                    self.commit(group);
                }
                WriterMsg::Sync(reply) => {
                    let synced = self.sync_if_unsynced();
                    if let Err(e) = &synced {
                        self.shared.poison(e.to_string());
                    }
                    let _ = reply.send(synced);
                }
                WriterMsg::Truncate { after, reply } => {
                    let _ = reply.send(self.guarded(|w| w.truncate(after)));
                }
                WriterMsg::Apply { through, reply } => {
                    let _ = reply.send(self.apply(through));
                }
                WriterMsg::Purge { through, reply } => {
                    let _ = reply.send(self.guarded(|w| w.purge(through)));
                }
                WriterMsg::Install { install, reply } => {
                    let _ = reply.send(self.guarded(|w| w.install(*install)));
                }
                WriterMsg::SaveState { bytes, reply } => {
                    let _ = reply.send(self.guarded(|w| w.save_state(&bytes)));
                }
                WriterMsg::SealAll(reply) => match self.rotate() {
                    Ok(()) => {
                        if let Err(crossbeam_channel::SendError(SealerMsg::Barrier(reply))) =
                            self.sealer.send(SealerMsg::Barrier(reply))
                        {
                            let _ = reply.send(Err(Error::Closed));
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
            }
            if self.len >= self.shared.opts.segment_bytes {
                self.rotate_or_warn();
            }
            self.check_space();
        }
        if let Err(e) = self.sync_if_unsynced() {
            self.shared.poison(e.to_string());
        }
    }

    /// Stops as a power loss would: what was written to the active file
    /// but not fsynced is cut off, and every message still queued is
    /// dropped unanswered (its caller sees the engine closed).
    fn crash(self) {
        if let Err(e) = self.file.set_len(self.synced_len) {
            tracing::warn!(error = %e, "a simulated crash could not cut the unsynced bytes");
        }
        drop(self.rx.try_iter().collect::<Vec<_>>());
    }

    /// Takes every append already waiting, up to the group byte budget.
    ///
    /// A replicated log's group also ends with the frame that fills the
    /// file, so that a file ends after the first frame reaching
    /// `segment_bytes` however the entries arrived: every node then cuts
    /// its files, hence its sealed segments, at the same entries (what a
    /// snapshot compares).
    fn gather(&self, first: AppendReq) -> (Vec<AppendReq>, Option<WriterMsg>) {
        let fills = |bytes: usize| {
            self.shared.opts.replicated && self.len + bytes as u64 >= self.shared.opts.segment_bytes
        };
        let mut bytes = first.batch.frame_len();
        let mut group = vec![first];
        while bytes < self.shared.opts.max_group_bytes && !fills(bytes) {
            match self.rx.try_recv() {
                Ok(WriterMsg::Append(req)) => {
                    bytes += req.batch.frame_len();
                    group.push(req);
                }
                Ok(other) => return (group, Some(other)),
                Err(_) => break,
            }
        }
        (group, None)
    }

    /// Measures the free space, and bounds the seal backlog, if neither
    /// was looked at for a while.
    fn check_space(&mut self) {
        if self
            .space_checked
            .is_some_and(|at| at.elapsed() < crate::space::CHECK_EVERY)
        {
            return;
        }
        self.space_checked = Some(Instant::now());
        let opts = &self.shared.opts;
        self.shared
            .space
            .update(&self.shared.wal_dir, opts.free_space_floor);
        self.bound_seal_backlog();
    }

    /// The sealer runs on CPU time nobody else wants: under ingest, or
    /// beside other busy processes, it may get none and the unsealed WAL
    /// (and, in a cluster, the log no snapshot covers) grows without
    /// bound. Once a finished segment has waited `SEAL_AGE`, background
    /// threads run as normal ones until it is sealed ([`crate::Overdue`]).
    fn bound_seal_backlog(&mut self) {
        if !self.shared.opts.background_sealing {
            return;
        }
        let (oldest, active) = {
            let state = self.shared.read();
            let first = |w: Option<&WalSegment>| w.map_or(0, |w| w.first_index);
            (first(state.wal.front()), first(state.wal.back()))
        };
        self.sealing.check(oldest, active, u64::MAX, SEAL_AGE);
    }

    fn on_tick(&mut self) {
        self.check_space();
        let sync_due = match self.shared.opts.durability {
            Durability::Buffered { window } => self.last_sync.elapsed() >= window,
            Durability::Sync => false,
        };
        if sync_due && let Err(e) = self.sync_if_unsynced() {
            self.shared.poison(e.to_string());
        }
        // A replicated log's files end by size alone, the same on every
        // node; a clock would cut each node's elsewhere.
        if !self.shared.opts.replicated
            && self
                .first_frame_at
                .is_some_and(|at| at.elapsed() >= self.shared.opts.segment_age)
        {
            self.rotate_or_warn();
        }
    }

    fn commit(&mut self, group: Vec<AppendReq>) {
        if let Some(cause) = self.shared.poisoned() {
            for req in group {
                req.reply.send(Err(Error::Poisoned {
                    cause: cause.clone(),
                }));
            }
            return;
        }
        let mut locs = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let mut batches = Vec::with_capacity(group.len());
        let mut terms = Vec::with_capacity(group.len());
        let mut group = group.into_iter();
        if let Err(e) = self.start_log_at_first_entry(group.as_slice().first()) {
            let cause = e.to_string();
            self.shared.poison(cause.clone());
            return self.fail_group(group, || Error::Poisoned {
                cause: cause.clone(),
            });
        }
        let mut end = self.len;
        let (first_index, first_seq) = (self.next_index, self.next_seq);
        let mut keyed = Vec::new();
        while let Some(AppendReq {
            batch,
            log_id,
            reply,
        }) = group.next()
        {
            if let Some((_, index)) = log_id
                && index != self.next_index
            {
                let reason = format!(
                    "log entry {index} does not follow the log's next index {}",
                    self.next_index
                );
                reply.send(Err(Error::InvalidArgument(reason.clone())));
                self.fail_group(group, || Error::InvalidArgument(reason.clone()));
                break;
            }
            let key = self.keys.as_ref().and(batch.key());
            if let Some(first) = key.and_then(|k| self.keys.as_ref()?.get(k)) {
                // A retry: answered with the first try's seqs once this
                // group is durable (the first try may be in it).
                replies.push((reply, first));
                continue;
            }
            terms.push(log_id.map_or(0, |(term, _)| term));
            let (min_ts, max_ts) = batch.ts_range();
            let loc = FrameLoc {
                index: self.next_index,
                first_seq: self.next_seq,
                count: batch.count(),
                offset: end,
                len: batch.frame_len() as u32,
                min_ts,
                max_ts,
            };
            end += batch.frame_len() as u64;
            self.next_index += 1;
            self.next_seq = loc.end_seq();
            let seqs = SeqRange {
                start: loc.first_seq,
                end: loc.end_seq(),
            };
            if let (Some(key), Some(table)) = (key, self.keys.as_mut()) {
                table.insert(key, seqs);
                keyed.push(key);
            }
            replies.push((reply, seqs));
            locs.push(loc);
            batches.push(batch);
        }
        if locs.is_empty() {
            for (reply, range) in replies {
                reply.send(Ok(range));
            }
            return;
        }
        let written = end - self.len;
        let outcome = self
            .write_group(&batches, &terms, &locs)
            .and_then(|()| self.publish(&locs));
        match outcome {
            Ok(()) => {
                if let Some(table) = self.keys.as_mut() {
                    table.trim();
                }
                let counters = &self.shared.counters;
                Counters::add(&counters.group_commits, 1);
                Counters::add(&counters.appends, replies.len() as u64);
                Counters::add(
                    &counters.appended_records,
                    locs.iter().map(|l| u64::from(l.count)).sum(),
                );
                Counters::add(&counters.wal_bytes_written, written);
                for (reply, range) in replies {
                    reply.send(Ok(range));
                }
            }
            Err(Error::Io {
                op: "write",
                source,
                ..
            }) if crate::space::is_disk_full(&source) && !self.shared.opts.replicated => {
                // Nothing of the group was written (its bytes are cut
                // off, durably): the engine goes on, refusing writes
                // until space is freed. A retry of a batch written
                // before this group still gets its seqs.
                self.next_index = first_index;
                self.next_seq = first_seq;
                if let Some(table) = self.keys.as_mut() {
                    for key in keyed.into_iter().rev() {
                        table.remove_newest(key);
                    }
                }
                let space = self.shared.space.get();
                for (reply, seqs) in replies {
                    reply.send(if seqs.start < first_seq {
                        Ok(seqs)
                    } else {
                        Err(Error::NoSpace {
                            path: self.path.clone(),
                            free: space.free,
                            floor: space.floor,
                        })
                    });
                }
            }
            Err(e) => {
                let cause = e.to_string();
                self.shared.poison(cause.clone());
                for (reply, _) in replies {
                    reply.send(Err(Error::Poisoned {
                        cause: cause.clone(),
                    }));
                }
            }
        }
    }

    /// Writes each frame as its header (made here) and its payload from
    /// the batch's own buffer, one vectored write: no copy into a group
    /// buffer (perf: that copy was a quarter of the writer's CPU).
    fn write_group(
        &mut self,
        batches: &[Arc<EncodedBatch>],
        terms: &[u64],
        locs: &[FrameLoc],
    ) -> Result<()> {
        let headers: Vec<[u8; lode_codec::HEADER_LEN]> = batches
            .iter()
            .zip(terms.iter().zip(locs))
            .map(|(batch, (&term, loc))| batch.header(term, loc.index))
            .collect();
        let frames = || -> Vec<IoSlice<'_>> {
            headers
                .iter()
                .zip(batches)
                .flat_map(|(header, batch)| [IoSlice::new(header), IoSlice::new(batch.payload())])
                .collect()
        };
        if let Err(source) = self.write_frames_at_end(frames) {
            return Err(Error::Io {
                op: "write",
                path: self.path.clone(),
                source,
            });
        }
        self.len = locs
            .last()
            .map_or(self.len, |l| l.offset + u64::from(l.len));
        self.unsynced = true;
        let due = match self.shared.opts.durability {
            Durability::Sync => true,
            Durability::Buffered { window } => self.last_sync.elapsed() >= window,
        };
        if due { self.sync_if_unsynced() } else { Ok(()) }
    }

    /// Writes the frames `frames` gives at the end of the file. When the
    /// disk is full, the space is marked low and the bytes written are
    /// cut off again; an embedded log fails the write (answered "no
    /// space", the engine goes on), a replicated one tries again for up
    /// to `DISK_FULL_PATIENCE` (its entries are decided: the log must
    /// take them, and failing would stop the node's Raft).
    fn write_frames_at_end<'a>(
        &self,
        frames: impl Fn() -> Vec<IoSlice<'a>>,
    ) -> std::io::Result<()> {
        let deadline = Instant::now() + DISK_FULL_PATIENCE;
        let mut pause = Duration::from_millis(50);
        loop {
            let written = write_all_vectored_at(&self.file, self.len, &mut frames());
            match written {
                Err(e) if crate::space::is_disk_full(&e) => {
                    self.shared.space.disk_full();
                    // Cut durably: a crash must not bring back frames
                    // answered "no space". A failed cut poisons.
                    self.file
                        .set_len(self.len)
                        .and_then(|()| self.file.sync_data())
                        .map_err(|cut| {
                            std::io::Error::other(format!(
                                "cutting off a write the full disk refused: {cut}"
                            ))
                        })?;
                    if !self.shared.opts.replicated || Instant::now() >= deadline {
                        return Err(e);
                    }
                    tracing::warn!(
                        path = %self.path.display(),
                        "the disk is full: the log's write waits for space"
                    );
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    fn sync_if_unsynced(&mut self) -> Result<()> {
        if self.unsynced {
            let synced = self.file.sync_data();
            #[cfg(test)]
            let synced = synced.and_then(|()| self.failpoint());
            if let Err(source) = synced {
                return Err(Error::Io {
                    op: "fsync",
                    path: self.path.clone(),
                    source,
                });
            }
            self.unsynced = false;
            self.synced_len = self.len;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    #[cfg(test)]
    fn failpoint(&self) -> std::io::Result<()> {
        if self
            .shared
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        Ok(())
    }

    /// Makes written frames visible to readers and wakes subscribers.
    fn publish(&mut self, locs: &[FrameLoc]) -> Result<()> {
        {
            let mut state = self.shared.write();
            let active = state.wal.back_mut().ok_or(Error::Closed)?;
            active.extend(&self.file, locs, self.len)?;
            if !self.shared.opts.replicated {
                state.end_seq = self.next_seq;
            }
        }
        self.first_frame_at.get_or_insert_with(Instant::now);
        self.shared.notify();
        Ok(())
    }

    fn rotate_or_warn(&mut self) {
        if let Err(e) = self.rotate() {
            tracing::warn!(error = %e, "could not start a new WAL segment; the active one keeps growing");
        }
    }

    /// Closes the active segment (synced) and opens the next; the sealer is
    /// told there is work.
    fn rotate(&mut self) -> Result<()> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        if self.first_frame_at.is_none() {
            return Ok(());
        }
        self.sync_if_unsynced()?;
        self.start_file(self.next_index, 0)?;
        let _ = self.sealer.send(SealerMsg::Work);
        Ok(())
    }

    /// Opens a new active WAL file at `first_index` and the next seq, after
    /// the current one (which the caller has finished or removed).
    fn start_file(&mut self, first_index: u64, flags: u32) -> Result<()> {
        let (file, segment) = wal::create(&self.shared.wal_dir, first_index, self.next_seq, flags)?;
        self.path = segment.path.clone();
        self.shared.write().wal.push_back(segment);
        self.file = file;
        self.len = wal::FILE_HEADER_LEN;
        self.synced_len = self.len;
        self.next_index = first_index;
        self.first_frame_at = None;
        Ok(())
    }

    /// Answers every append of `rest` with an error `e` makes.
    fn fail_group(&self, rest: impl Iterator<Item = AppendReq>, e: impl Fn() -> Error) {
        for req in rest {
            req.reply.send(Err(e()));
        }
    }

    /// Runs a replicated-log operation: refused on a poisoned or embedded
    /// engine, and a failure of its I/O poisons the engine (the log's state
    /// on disk is then unknown).
    fn guarded(&mut self, op: impl FnOnce(&mut Writer) -> Result<()>) -> Result<()> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        if !self.shared.opts.replicated {
            return Err(Error::InvalidArgument(
                "not a replicated log (Options::replicated is off)".to_owned(),
            ));
        }
        let outcome = op(self);
        if let Err(e @ Error::Io { .. }) = &outcome {
            self.shared.poison(e.to_string());
        }
        outcome
    }

    /// Replicated mode: an empty log starts wherever its first entry says
    /// (index 0 for a new Raft group, later after a snapshot). The empty
    /// active file is replaced by one that starts there.
    fn start_log_at_first_entry(&mut self, first: Option<&AppendReq>) -> Result<()> {
        let Some((_, index)) = first.and_then(|req| req.log_id) else {
            return Ok(());
        };
        let empty = {
            let state = self.shared.read();
            state.log_segments().all(|w| w.frames.is_empty())
        };
        if index == self.next_index || !empty {
            return Ok(());
        }
        self.replace_empty_active(index, wal::RESTART)
    }

    /// Replaces the active file, which holds no frame, by one starting at
    /// `first_index` (flagged `flag` when other WAL files precede it).
    fn replace_empty_active(&mut self, first_index: u64, flag: u32) -> Result<()> {
        let old = {
            let mut state = self.shared.write();
            let old = state.wal.pop_back().ok_or(Error::Closed)?;
            (state.log_segments().next().is_some(), old)
        };
        let (others, old) = old;
        let flags = if others { flag } else { 0 };
        self.start_file(first_index, flags)?;
        if old.path != self.path {
            fs::remove_file(&old.path).map_err(Error::io("remove", &old.path))?;
            wal::sync_dir(&self.shared.wal_dir)?;
        }
        Ok(())
    }

    /// Cuts the log after `after` (all of it for `None`), never below the
    /// applied index, then starts a new active file where the log now ends:
    /// a file the sealer may be reading is never written to again.
    fn truncate(&mut self, after: Option<u64>) -> Result<()> {
        self.sync_if_unsynced()?;
        let next_index = {
            let mut state = self.shared.write();
            if let Some(applied) = state.applied
                && after.is_none_or(|a| a < applied)
            {
                return Err(Error::InvalidArgument(format!(
                    "cannot cut the log after {after:?}: entries up to {applied} are applied"
                )));
            }
            let first_cut = state
                .wal
                .iter()
                .find_map(|w| w.frames.iter().find(|f| after.is_none_or(|a| f.index > a)))
                .map(|f| (f.index, f.first_seq));
            let Some((first_cut_index, first_cut_seq)) = first_cut else {
                return Ok(());
            };
            // Newest first, and the later files gone (and the directory
            // synced) before the file that keeps a prefix is cut: a crash
            // at any point leaves a log that recovers whole, holding at
            // most some of the entries being cut, which the consensus
            // layer cuts again.
            let mut removed = false;
            while state
                .wal
                .back()
                .is_some_and(|w| w.frames.first().is_none_or(|f| f.index >= first_cut_index))
            {
                let doomed = state.wal.pop_back().ok_or(Error::Closed)?;
                fs::remove_file(&doomed.path).map_err(Error::io("remove", &doomed.path))?;
                removed = true;
            }
            if removed {
                wal::sync_dir(&self.shared.wal_dir)?;
            }
            if let Some(back) = state.wal.back_mut() {
                back.cut_after(after)?;
            }
            self.next_seq = first_cut_seq;
            first_cut_index
        };
        let flags = {
            let state = self.shared.read();
            let last = state.log_segments().next_back();
            match last {
                Some(w) if w.next_index() != next_index => wal::RESTART,
                _ => 0,
            }
        };
        self.start_file(next_index, flags)?;
        wal::sync_dir(&self.shared.wal_dir)
    }

    /// Makes the records of entries up to `through` readable.
    fn apply(&mut self, through: u64) -> Result<Vec<(u64, SeqRange)>> {
        if !self.shared.opts.replicated {
            return Err(Error::InvalidArgument(
                "not a replicated log (Options::replicated is off)".to_owned(),
            ));
        }
        let (applied, finished_now) = {
            let mut state = self.shared.write();
            let after = state.applied;
            if after.is_some_and(|a| through <= a) {
                return Ok(Vec::new());
            }
            let applied: Vec<(u64, SeqRange)> = state
                .wal
                .iter()
                .flat_map(|w| w.frames.iter())
                .filter(|f| after.is_none_or(|a| f.index > a) && f.index <= through)
                .map(|f| {
                    let range = SeqRange {
                        start: f.first_seq,
                        end: f.end_seq(),
                    };
                    (f.index, range)
                })
                .collect();
            // Entries below the oldest one on disk were purged: their
            // records, if any, are sealed and readable already.
            let first_on_disk = state
                .log_segments()
                .find_map(|w| w.frames.first().map(|f| f.index))
                .or_else(|| state.wal.back().map(WalSegment::next_index));
            if applied.is_empty() && first_on_disk.is_some_and(|first| through < first) {
                state.applied = Some(through);
                return Ok(Vec::new());
            }
            if applied.last().map(|(index, _)| *index) != Some(through) {
                return Err(Error::InvalidArgument(format!(
                    "cannot apply up to entry {through}: the log holds no such entry after {after:?}"
                )));
            }
            if let Some((_, range)) = applied.last() {
                state.end_seq = state.end_seq.max(range.end);
            }
            state.applied = Some(through);
            let finished_now = state.wal.len() > 1
                && state
                    .wal
                    .front()
                    .and_then(WalSegment::last_index)
                    .is_some_and(|last| last <= through);
            (applied, finished_now)
        };
        self.shared.notify();
        if finished_now {
            let _ = self.sealer.send(SealerMsg::Work);
        }
        Ok(applied)
    }

    /// Deletes the sealed WAL files whose entries are all at or below
    /// `through`; when the whole log is, the log restarts after it.
    fn purge(&mut self, through: u64) -> Result<()> {
        let (doomed, whole_log) = {
            let mut state = self.shared.write();
            let mut doomed = Vec::new();
            while state
                .retained
                .front()
                .is_some_and(|w| w.last_index().is_none_or(|last| last <= through))
            {
                if let Some(w) = state.retained.pop_front() {
                    doomed.push(w.path);
                }
            }
            let last = state.log_segments().rev().find_map(WalSegment::last_index);
            (
                doomed,
                last.is_none_or(|last| last <= through) && self.next_index <= through,
            )
        };
        for path in &doomed {
            fs::remove_file(path).map_err(Error::io("remove", path))?;
        }
        if whole_log {
            if self.first_frame_at.is_some() {
                self.sync_if_unsynced()?;
                self.start_file(through + 1, wal::RESTART)?;
                let _ = self.sealer.send(SealerMsg::Work);
            } else {
                self.replace_empty_active(through + 1, wal::RESTART)?;
            }
        }
        wal::sync_dir(&self.shared.wal_dir)
    }

    /// Installs a snapshot: checks that the entries this log holds past
    /// it carry its seqs, has the sealer swap the segments and manifest
    /// in, then starts the log after it unless the log holds later
    /// entries.
    fn install(&mut self, install: crate::log::SnapshotInstall) -> Result<()> {
        self.sync_if_unsynced()?;
        let (through, end_seq) = (install.through, install.end_seq);
        let holds_later = {
            let state = self.shared.read();
            if let Some(applied) = state.applied.filter(|&a| a >= through) {
                return Err(Error::InvalidArgument(format!(
                    "a snapshot through entry {through} is not past the applied entry {applied}"
                )));
            }
            let later = state
                .log_segments()
                .flat_map(|w| w.frames.iter())
                .find(|f| f.index > through);
            if let Some(f) = later.filter(|f| f.first_seq != end_seq) {
                return Err(Error::InvalidArgument(format!(
                    "entry {} holds seqs from {}, but the snapshot through entry {through} ends before seq {end_seq}",
                    f.index, f.first_seq
                )));
            }
            later.is_some()
        };
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.sealer
            .send(SealerMsg::Install {
                install: Box::new(install),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        crate::sealer::await_answer(&rx)?;
        let active = {
            let state = self.shared.read();
            state.wal.back().map(WalSegment::last_index)
        };
        // An empty active file (a rotation after the last entry) is
        // restarted after the snapshot only when no earlier file holds
        // entries past it: the log goes on after those otherwise.
        match active {
            Some(None) if !holds_later => {
                self.next_seq = end_seq;
                self.replace_empty_active(through + 1, wal::SNAPSHOT)?;
            }
            Some(Some(last)) if last <= through => {
                {
                    let mut state = self.shared.write();
                    if let Some(covered) = state.wal.pop_back() {
                        state.retained.push_back(covered);
                    }
                }
                self.next_seq = end_seq;
                self.start_file(through + 1, wal::SNAPSHOT)?;
            }
            _ => {}
        }
        wal::sync_dir(&self.shared.wal_dir)?;
        self.shared.notify();
        Ok(())
    }

    /// Replaces the log's state file: written beside it, synced, renamed
    /// over it, directory synced.
    fn save_state(&mut self, bytes: &[u8]) -> Result<()> {
        let path = self.shared.state_path();
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
        file.write_all(bytes).map_err(Error::io("write", &tmp))?;
        file.sync_all().map_err(Error::io("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io("rename", &tmp))?;
        let dir = path.parent().unwrap_or(&self.shared.wal_dir);
        wal::sync_dir(dir)
    }
}

/// Writes all of `bufs` at `offset`. The writer is the only writer of its
/// file, so a seek then `writev` (std caps each call at IOV_MAX slices)
/// does what a positional vectored write would.
fn write_all_vectored_at(
    mut file: &File,
    offset: u64,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
