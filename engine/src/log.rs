//! The replicated log: what a consensus layer needs of the WAL.
//!
//! With [`Options::replicated`](crate::Options::replicated) the WAL is the
//! Raft log. Entries arrive with their term and index already decided; the
//! writer thread checks that each follows the log, writes the frame bytes
//! as given, and reports them durable after the group's fsync. Every
//! operation that changes the log or its state file (cut, apply, purge,
//! save the vote) goes through the same writer queue, so they happen in the
//! order they were asked for. Records become readable only when their entry
//! is applied; seqs are positions among records in the log, so every node
//! that holds the same log gives a record the same seq.
//!
//! Owns no consensus logic: which entries are committed, when to cut or
//! purge, and what the state file says are the caller's.

use std::ops::RangeBounds;
use std::path::PathBuf;

use crossbeam_channel::bounded;
use lode_codec::{EncodedBatch, FrameKind, SegmentMeta};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::writer::{AppendReq, Reply, WriterMsg};
use crate::{KeyedEntry, SeqRange, wal};

/// One entry of a replicated log, as stored.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub term: u64,
    pub index: u64,
    /// The frame's kind and payload (a batch's records and trailer, the
    /// bytes of a membership entry, or nothing), with room for its header.
    pub frame: EncodedBatch,
}

impl LogEntry {
    pub fn kind(&self) -> FrameKind {
        self.frame.kind()
    }
}

/// A snapshot for a replicated log to install
/// ([`Engine::install_snapshot`]): another node's sealed segments through a
/// log index, some of which this node holds already.
#[derive(Debug, Clone)]
pub struct SnapshotInstall {
    /// Every segment the log holds once installed, in seq order: its own
    /// where it holds the same records, the others' (in `files`).
    pub segments: Vec<SegmentMeta>,
    /// The SST file of each segment it lacks, whole and checked. Linked
    /// in, not copied; the caller may delete its paths afterwards.
    pub files: Vec<(SegmentMeta, PathBuf)>,
    /// The first seq kept (records below it are dropped).
    pub floor: u64,
    /// The last log index the snapshot covers, and the seq after its
    /// records: the log goes on from both.
    pub through: u64,
    pub end_seq: u64,
    /// The consensus layer's description of the snapshot, stored with
    /// the manifest in the same synced write.
    pub description: Vec<u8>,
    /// The settings as of the snapshot, replacing the log's own in the
    /// same write (`None`: left as they are).
    pub settings: Option<crate::store::Settings>,
    /// The keyed batches the snapshot's segments hold that the sender
    /// remembers ([`Engine::sealed_keys`]), replacing the log's own in the
    /// same write: a retry of one is still answered with its seqs.
    pub keys: Vec<KeyedEntry>,
}

/// Where a replicated log starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// Index of the oldest entry still on disk.
    pub first_index: u64,
    /// (term, index) of the newest durable entry.
    pub last: (u64, u64),
}

impl Engine {
    fn writer_call<T>(
        &self,
        msg: impl FnOnce(crossbeam_channel::Sender<Result<T>>) -> WriterMsg,
    ) -> Result<T> {
        let writer = self.writer()?;
        let (reply, rx) = bounded(1);
        writer.send(msg(reply)).map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    fn sealer_call<T>(
        &self,
        msg: impl FnOnce(crossbeam_channel::Sender<Result<T>>) -> crate::sealer::SealerMsg,
    ) -> Result<T> {
        let sealer = self.sealer()?;
        let (reply, rx) = bounded(1);
        sealer.send(msg(reply)).map_err(|_| Error::Closed)?;
        crate::sealer::await_answer(&rx)
    }

    /// Appends entries of a replicated log, each `(term, index, frame)`
    /// (shared: the caller may keep the frame, it is only read);
    /// `done` is called on the writer thread once all are durable, or with
    /// the first failure. The first entry of an empty log may have any
    /// index; every other must follow the log's last. Entries are readable
    /// by [`Engine::read_entries`] once durable; a caller that must read
    /// them sooner keeps them until `done`. No size limit but the frame
    /// format's applies here: an entry a quorum may have taken must not
    /// fail on one node for its size (the proposer checks
    /// [`Engine::max_batch_bytes`] before anything reaches the log).
    pub fn append_entries(
        &self,
        entries: Vec<(u64, u64, std::sync::Arc<EncodedBatch>)>,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        if !self.shared.opts.replicated {
            return Err(Error::InvalidArgument(
                "append_entries needs a replicated log (Options::replicated)".to_owned(),
            ));
        }
        let writer = self.writer()?;
        let count = entries.len();
        if count == 0 {
            done(Ok(()));
            return Ok(());
        }
        // Only the last entry's reply reaches `done`; an earlier failure is
        // kept and reported there (a failed entry fails all after it).
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let mut done = Some(done);
        for (i, (term, index, batch)) in entries.into_iter().enumerate() {
            let failed = std::sync::Arc::clone(&failed);
            let reply: Reply = if i + 1 == count {
                let done = done.take();
                Reply::Callback(Box::new(move |outcome| {
                    let earlier = crate::shared::Shared::lock(&failed).take();
                    let outcome = match (earlier, outcome) {
                        (Some(reason), _) => Err(Error::InvalidArgument(reason)),
                        (None, outcome) => outcome.map(|_| ()),
                    };
                    if let Some(done) = done {
                        done(outcome);
                    }
                }))
            } else {
                Reply::Callback(Box::new(move |outcome| {
                    if let Err(e) = outcome {
                        crate::shared::Shared::lock(&failed)
                            .get_or_insert_with(|| format!("entry {index}: {e}"));
                    }
                }))
            };
            writer
                .send(WriterMsg::Append(AppendReq {
                    batch,
                    log_id: Some((term, index)),
                    reply,
                }))
                .map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    /// Calls `f` with each durable frame with index in `range`, in order,
    /// under the read lock (a cut of the log, under the write lock, cannot
    /// shorten a file meanwhile).
    fn visit_frames(
        &self,
        range: impl RangeBounds<u64>,
        f: impl FnMut(&wal::FrameLoc, &lode_codec::Frame<'_>) -> lode_codec::Result<()>,
    ) -> Result<()> {
        visit_frames(&self.shared, range, f)
    }

    /// The durable entries with index in `range` that the log holds, in
    /// order (checked frames, copied out).
    pub fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        self.visit_frames(range, |_, frame| {
            out.push(LogEntry {
                term: frame.term,
                index: frame.index,
                frame: EncodedBatch::from_frame(frame)?,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// The key, index and seqs of every keyed batch with index in `range`
    /// (read from the frames in place: only their headers and keys are
    /// touched).
    pub fn batch_keys(&self, range: impl RangeBounds<u64>) -> Result<Vec<KeyedEntry>> {
        keyed_frames(&self.shared, range)
    }

    /// The keyed batches of sealed segments the log remembers (the newest
    /// within [`crate::KeyWindow`], kept with the manifest), oldest first;
    /// only those at or below index `through` when given.
    pub fn sealed_keys(&self, through: Option<u64>) -> Result<Vec<KeyedEntry>> {
        let mut keys = self.shared.store.keyed()?;
        if let Some(through) = through {
            keys.retain(|k| k.index <= through);
        }
        Ok(keys)
    }

    /// The newest entry of `kind` at or below index `through`, found by
    /// frame headers from the end (a membership entry, at start-up).
    pub fn last_entry_of_kind(&self, kind: FrameKind, through: u64) -> Result<Option<LogEntry>> {
        let state = self.shared.read();
        for segment in state.log_segments().rev() {
            for loc in segment
                .frames
                .iter()
                .rev()
                .filter(|f| f.index <= through && f.count == 0)
            {
                let frame = wal::read_indexed_frame(&segment.map, &segment.path, loc)?;
                if frame.kind == kind {
                    return Ok(Some(LogEntry {
                        term: frame.term,
                        index: frame.index,
                        frame: EncodedBatch::from_frame(&frame)
                            .map_err(|e| Error::corrupt(&segment.path, loc.offset, e))?,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Bytes of the durable frames with index in `range` (headers
    /// included): what a follower that lacks them has still to receive.
    /// From the frame table alone; no frame is read.
    pub fn log_bytes(&self, range: impl RangeBounds<u64>) -> u64 {
        let (start, end) = crate::read::half_open(&range, || u64::MAX);
        let state = self.shared.read();
        state
            .log_segments()
            .flat_map(|segment| frames_in(segment, start, end))
            .map(|f| u64::from(f.len))
            .sum()
    }

    /// First and last entry of the log on disk, `None` when it holds none.
    pub fn log_bounds(&self) -> Result<Option<LogBounds>> {
        let state = self.shared.read();
        let first = state
            .log_segments()
            .find_map(|w| w.frames.first().map(|f| f.index));
        let last = state
            .log_segments()
            .rev()
            .find_map(|w| w.frames.last().map(|f| (w, *f)));
        let (Some(first_index), Some((segment, loc))) = (first, last) else {
            return Ok(None);
        };
        let frame = wal::read_indexed_frame(&segment.map, &segment.path, &loc)?;
        Ok(Some(LogBounds {
            first_index,
            last: (frame.term, frame.index),
        }))
    }

    /// Cuts the log's entries after `after` (all of them for `None`):
    /// a follower's uncommitted suffix that conflicts with its leader's.
    /// Refused below the applied index. Synced before it returns.
    pub fn truncate_after(&self, after: Option<u64>) -> Result<()> {
        self.writer_call(|reply| WriterMsg::Truncate { after, reply })
    }

    /// Makes the records of every entry up to `through` readable (the
    /// entries are committed); returns each newly applied entry's index
    /// and seqs (empty for entries without records), in order. Entries
    /// already applied are skipped, so applying again after a restart is
    /// harmless.
    pub fn apply(&self, through: u64) -> Result<Vec<(u64, SeqRange)>> {
        self.writer_call(|reply| WriterMsg::Apply { through, reply })
    }

    /// The last applied index, `None` before the first apply.
    pub fn applied_index(&self) -> Option<u64> {
        self.shared.read().applied
    }

    /// Entries up to `through` are no longer needed by the log (a snapshot
    /// covers them): sealed WAL files holding only such entries are
    /// deleted. When the whole log is below it, the next entry may start at
    /// `through + 1`.
    pub fn purge(&self, through: u64) -> Result<()> {
        self.writer_call(|reply| WriterMsg::Purge { through, reply })
    }

    /// Installs a snapshot: its segments replace this log's sealed ones
    /// (those it holds alike stay, the files of the others are ingested),
    /// records through `through` become readable, and the log goes on
    /// after it: entries at or below `through` are no longer the log's,
    /// later ones it holds stay (their seqs must start at `end_seq`). The
    /// manifest, applied index, floor and description change in one
    /// synced write, after the files are in: a crash leaves the old state
    /// or the new. Refused unless `through` is past the applied index.
    pub fn install_snapshot(&self, install: SnapshotInstall) -> Result<()> {
        self.writer_call(|reply| WriterMsg::Install {
            install: Box::new(install),
            reply,
        })
    }

    /// The last snapshot's index and description as saved by
    /// [`Engine::save_snapshot`] or [`Engine::install_snapshot`].
    pub fn snapshot(&self) -> Result<Option<(u64, Vec<u8>)>> {
        self.shared.store.snapshot()
    }

    /// Saves the description of a snapshot this log built through
    /// `index` (synced), unless one at or past it is saved already.
    pub fn save_snapshot(&self, index: u64, description: Vec<u8>) -> Result<()> {
        self.sealer_call(|reply| crate::sealer::SealerMsg::SaveSnapshot {
            index,
            description,
            reply,
        })
    }

    /// Replaces the log's state file (the consensus layer's vote and
    /// committed index) atomically and durably, after every append asked
    /// for before it.
    pub fn save_log_state(&self, bytes: Vec<u8>) -> Result<()> {
        self.writer_call(|reply| WriterMsg::SaveState { bytes, reply })
    }

    /// The bytes last given to [`Engine::save_log_state`], if any.
    pub fn log_state(&self) -> Result<Option<Vec<u8>>> {
        let path = self.shared.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }
}

/// The frames of a WAL segment with index in `start..end`, in order.
fn frames_in(
    segment: &wal::WalSegment,
    start: u64,
    end: u64,
) -> impl Iterator<Item = &wal::FrameLoc> {
    let from = segment.frames.partition_point(|f| f.index < start);
    segment
        .frames
        .iter()
        .skip(from)
        .take_while(move |f| f.index < end)
}

/// Calls `f` with each durable frame of the WAL with index in `range`, in
/// order, under the read lock.
fn visit_frames(
    shared: &crate::shared::Shared,
    range: impl RangeBounds<u64>,
    mut f: impl FnMut(&wal::FrameLoc, &lode_codec::Frame<'_>) -> lode_codec::Result<()>,
) -> Result<()> {
    let (start, end) = crate::read::half_open(&range, || u64::MAX);
    let state = shared.read();
    for segment in state.log_segments() {
        for loc in frames_in(segment, start, end) {
            let frame = wal::read_indexed_frame(&segment.map, &segment.path, loc)?;
            f(loc, &frame).map_err(|e| Error::corrupt(&segment.path, loc.offset, e))?;
        }
    }
    Ok(())
}

/// The keyed batches of the WAL with index in `range`.
pub(crate) fn keyed_frames(
    shared: &crate::shared::Shared,
    range: impl RangeBounds<u64>,
) -> Result<Vec<KeyedEntry>> {
    let mut out = Vec::new();
    visit_frames(shared, range, |loc, frame| {
        if let Some(key) = frame.key() {
            out.push(KeyedEntry {
                index: frame.index,
                key,
                seqs: SeqRange {
                    start: loc.first_seq,
                    end: loc.end_seq(),
                },
            });
        }
        Ok(())
    })?;
    Ok(out)
}
