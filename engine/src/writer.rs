//! The group-commit writer thread: the only code that writes WAL files.
//!
//! Appenders encode their batch on their own thread and send it here; the
//! writer takes every batch waiting in the channel (up to a byte budget),
//! gives each its log index and seqs, writes them with one `writev`, syncs
//! once, publishes the new frames to readers, and only then acknowledges.
//! After a failed write or sync the engine is poisoned: nothing more is
//! written, every append is refused with the cause.

use std::fs::File;
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
use crate::wal::{self, FrameLoc};

pub(crate) struct AppendReq {
    pub(crate) batch: EncodedBatch,
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
    pub(crate) last_sync: Instant,
}

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
        }
        if let Err(e) = self.sync_if_unsynced() {
            self.shared.poison(e.to_string());
        }
    }

    /// Takes every append already waiting, up to the group byte budget.
    fn gather(&self, first: AppendReq) -> (Vec<AppendReq>, Option<WriterMsg>) {
        let mut bytes = first.batch.frame_len();
        let mut group = vec![first];
        while bytes < self.shared.opts.max_group_bytes {
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

    fn on_tick(&mut self) {
        let sync_due = match self.shared.opts.durability {
            Durability::Buffered { window } => self.last_sync.elapsed() >= window,
            Durability::Sync => false,
        };
        if sync_due && let Err(e) = self.sync_if_unsynced() {
            self.shared.poison(e.to_string());
        }
        if self
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
        let mut end = self.len;
        for AppendReq { batch, reply } in group {
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
            replies.push((
                reply,
                SeqRange {
                    start: loc.first_seq,
                    end: loc.end_seq(),
                },
            ));
            locs.push(loc);
            batches.push(batch);
        }
        let written = end - self.len;
        let outcome = self
            .write_group(&mut batches, &locs)
            .and_then(|()| self.publish(&locs));
        match outcome {
            Ok(()) => {
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

    /// Seals each batch's frame header in place and writes the frames from
    /// the batches' own buffers, one vectored write: no copy into a group
    /// buffer (perf: that copy was a quarter of the writer's CPU).
    fn write_group(&mut self, batches: &mut [EncodedBatch], locs: &[FrameLoc]) -> Result<()> {
        let mut frames: Vec<IoSlice<'_>> = batches
            .iter_mut()
            .zip(locs)
            .map(|(batch, loc)| IoSlice::new(batch.seal(0, loc.index)))
            .collect();
        let written = write_all_vectored_at(&self.file, self.len, &mut frames);
        if let Err(source) = written {
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
            state.end_seq = self.next_seq;
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
        let (file, segment) = wal::create(&self.shared.wal_dir, self.next_index, self.next_seq)?;
        let segment_path = segment.path.clone();
        self.shared.write().wal.push_back(segment);
        self.file = file;
        self.path = segment_path;
        self.len = wal::FILE_HEADER_LEN;
        self.first_frame_at = None;
        let _ = self.sealer.send(SealerMsg::Work);
        Ok(())
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
