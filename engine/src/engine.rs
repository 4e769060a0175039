//! The engine handle: open and recovery, appends, and the threads behind.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use lode_codec::{EncodedBatch, LogRecord, MAX_PAYLOAD};

use crate::SeqRange;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::sealer::{RetentionReport, Sealer, SealerMsg};
use crate::shared::{Shared, State};
use crate::store::{Settings, Store};
use crate::wal::{self, TailCut, WalSegment};
use crate::writer::{AppendReq, Reply, Writer, WriterMsg};
use lode_codec::SegmentMeta;

/// How long `open` waits for the data directory's lock to free.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Appends the writer may have queued before appenders wait (back-pressure).
const WRITER_QUEUE: usize = 1024;

/// An open lode data directory. See the crate documentation for an example.
///
/// All methods take `&self` and may be called from many threads; share the
/// engine with an `Arc`.
#[derive(Debug)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
    writer_tx: Option<Sender<WriterMsg>>,
    sealer_tx: Option<Sender<SealerMsg>>,
    stop_sealer: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _lock: File,
}

/// An append that was handed to the writer; `wait` blocks until it is
/// durable (under the engine's durability mode).
#[derive(Debug)]
#[must_use = "an append is acknowledged only by waiting on its ticket"]
pub struct AppendTicket {
    rx: Receiver<Result<SeqRange>>,
}

impl AppendTicket {
    /// Blocks until the batch is durable; returns the seqs it was given.
    pub fn wait(self) -> Result<SeqRange> {
        self.rx.recv().map_err(|_| Error::Closed)?
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("lode.lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    // A lock that frees within a moment is waited for: a process that is
    // closing the directory, or a forked child of this process that holds
    // an inherited copy of the descriptor until its exec.
    let deadline = Instant::now() + LOCK_WAIT;
    let mut locked = file.try_lock().is_ok();
    while !locked && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        locked = file.try_lock().is_ok();
    }
    if !locked {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "unknown process".to_owned(),
            pid => format!("pid {pid}"),
        };
        return Err(Error::Locked {
            path: dir.to_owned(),
            holder,
        });
    }
    file.set_len(0).map_err(Error::io("truncate", &path))?;
    file.rewind().map_err(Error::io("seek", &path))?;
    write!(file, "{}", std::process::id()).map_err(Error::io("write", &path))?;
    Ok(file)
}

fn check_options(opts: &Options) -> Result<()> {
    if opts.max_batch_bytes > MAX_PAYLOAD {
        return Err(Error::InvalidArgument(format!(
            "max_batch_bytes = {} exceeds the frame limit of {MAX_PAYLOAD}",
            opts.max_batch_bytes
        )));
    }
    if opts.segment_bytes < 4096 {
        return Err(Error::InvalidArgument(format!(
            "segment_bytes = {} is below 4096",
            opts.segment_bytes
        )));
    }
    if opts.tick.is_zero() {
        return Err(Error::InvalidArgument("tick must be positive".to_owned()));
    }
    if opts.replicated && matches!(opts.durability, crate::Durability::Buffered { .. }) {
        return Err(Error::InvalidArgument(
            "a replicated log's entries count toward a quorum once appended: \
             Durability::Buffered would count unsynced ones"
                .to_owned(),
        ));
    }
    Ok(())
}

/// A cluster node's data directory (it has a `raft-state` file) is only
/// opened as a replicated log: opened embedded, its sealed WAL files (the
/// Raft log) would be deleted and its uncommitted entries read as records.
fn check_mode(dir: &Path, opts: &Options) -> Result<()> {
    if !opts.replicated && dir.join("raft-state").exists() {
        return Err(Error::InvalidArgument(format!(
            "{} holds a cluster node's log; open it as that node (lode serve --node-id ...), \
             or with Options::replicated",
            dir.display()
        )));
    }
    Ok(())
}

/// An embedded log's key table: the keyed batches of its sealed
/// segments and of its WAL. `None` for a replicated log.
fn embedded_keys(shared: &Shared) -> Result<Option<crate::keys::KeyTable>> {
    if shared.opts.replicated {
        return Ok(None);
    }
    let sealed = shared.store.keyed()?;
    let logged = crate::log::keyed_frames(shared, ..)?;
    Ok(Some(crate::keys::KeyTable::new(
        shared.opts.keys.count,
        sealed.into_iter().chain(logged),
    )))
}

fn make_dir(path: &Path) -> Result<PathBuf> {
    fs::create_dir_all(path).map_err(Error::io("create directory", path))?;
    Ok(path.to_owned())
}

/// What recovery found in the WAL directory.
struct RecoveredWal {
    /// Live segments, oldest first; the last is active.
    segments: Vec<WalSegment>,
    /// Replicated mode: sealed segments kept as the Raft log.
    retained: Vec<WalSegment>,
    active: File,
    cuts: Vec<TailCut>,
}

/// Reads the WAL back after the applied index: deletes files already
/// sealed, recovers the rest in order, creates the first file if none.
/// A replicated log keeps its sealed files (they are the Raft log until
/// purged) and starts where its oldest file says.
fn recover_wal(
    wal_dir: &Path,
    opts: &Options,
    applied: Option<u64>,
    expected_seq: u64,
) -> Result<RecoveredWal> {
    let files = wal::list(wal_dir)?;
    let sealed_through = applied.unwrap_or(0);
    let (stale, live): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(index, _)| !opts.replicated && *index <= sealed_through);
    for (_, path) in stale {
        fs::remove_file(&path).map_err(Error::io("remove sealed WAL file", &path))?;
    }
    let mut expected = (!opts.replicated).then_some((sealed_through + 1, expected_seq));
    // Where the next file must go on from, if anywhere.
    let mut check = expected;
    let mut segments = Vec::new();
    let mut retained = Vec::new();
    let mut cuts = Vec::new();
    let mut active = None;
    let count = live.len();
    for (i, (_, path)) in live.into_iter().enumerate() {
        let recovered = wal::recover(&path, check, i + 1 == count, opts.recovery)?;
        if let Some(cut) = recovered.cut {
            tracing::warn!(path = %cut.path.display(), offset = cut.offset, bytes = cut.bytes, reason = %cut.reason, "cut torn WAL tail");
            cuts.push(cut);
        }
        let mut segment = recovered.segment;
        let covered = opts.replicated && applied.is_some_and(|a| segment.first_index <= a);
        if segment.frames.is_empty() && (i + 2 == count || covered) {
            // An empty file was being replaced (after a snapshot install, a
            // restart) when the process died: by the next one, or, when
            // the manifest already covers where it starts, by a file after
            // the applied index (made below). It holds no entry.
            drop(recovered.file);
            fs::remove_file(&segment.path).map_err(Error::io("remove", &segment.path))?;
            wal::sync_dir(wal_dir)?;
            continue;
        }
        expected = Some((segment.next_index(), segment.end_seq()));
        // In a replicated log, entries at or below the applied index are
        // covered by the sealed segments or an installed snapshot, whatever
        // seqs the file gives them: a deposed leader's uncommitted entries
        // that a snapshot replaced (kept as log until purged) may number
        // their records past the snapshot's.
        let sealed = opts.replicated
            && applied.is_some()
            && segment
                .last_index()
                .is_some_and(|last| last <= sealed_through);
        check = expected;
        if sealed && segments.is_empty() {
            retained.push(segment);
            // What follows is checked against the manifest (below), not
            // against a covered file: a deposed leader's numbering need
            // not continue into the file an install started.
            check = None;
        } else {
            if opts.replicated
                && segments.is_empty()
                && let Some(applied) = applied
            {
                // An installed snapshot covers this file's first frames.
                segment.skip_through(applied);
            }
            segments.push(segment);
            active = Some(recovered.file);
        }
    }
    if let Some(first) = segments.iter().find(|w| w.records() > 0)
        && opts.replicated
        && first.first_seq != expected_seq
    {
        return Err(Error::corrupt(
            &first.path,
            24,
            format!(
                "the first unsealed WAL file starts at seq {}; the sealed segments end before {expected_seq}",
                first.first_seq
            ),
        ));
    }
    let active = match active {
        Some(file) => file,
        None => {
            let (next_index, end_seq) = expected.unwrap_or((0, expected_seq));
            // A replicated log goes on after what is applied (sealed, or an
            // installed snapshot): every file left ends at or below it.
            let (index, seq) = match applied {
                Some(applied) if opts.replicated => (applied + 1, expected_seq),
                _ => (next_index, end_seq.max(expected_seq)),
            };
            let jumped = (index, seq) != (next_index, end_seq) && !retained.is_empty();
            let flags = if jumped { wal::SNAPSHOT } else { 0 };
            let (file, segment) = wal::create(wal_dir, index, seq, flags)?;
            segments.push(segment);
            file
        }
    };
    Ok(RecoveredWal {
        segments,
        retained,
        active,
        cuts,
    })
}

impl Engine {
    /// Opens (creating if needed) the data directory `dir`, recovering
    /// whatever a crash left: a torn WAL tail is cut and reported in
    /// [`Engine::stats`], unsealed WAL segments are sealed in the
    /// background.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Engine> {
        check_options(&opts)?;
        let dir = make_dir(dir.as_ref())?;
        let lock = lock_dir(&dir)?;
        check_mode(&dir, &opts)?;
        let wal_dir = make_dir(&dir.join("wal"))?;
        let tmp_dir = dir.join("tmp");
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(Error::io("clear", &tmp_dir))?;
        }
        make_dir(&tmp_dir)?;
        let store = Store::open(
            &dir.join("db"),
            opts.zstd_level,
            opts.sealed_block_bytes,
            opts.block_cache_bytes,
        )?;
        let manifest = store.load_manifest()?;
        store.set_segments(&manifest.segments);
        store.reclaim_below(crate::store::cut(manifest.floor, manifest.segments.iter()))?;
        let sealed: std::collections::BTreeMap<u64, SegmentMeta> = manifest
            .segments
            .into_iter()
            .map(|s| (s.first_seq, s))
            .collect();
        let floor = manifest.floor.max(1);
        let expected_seq = sealed
            .values()
            .next_back()
            .map_or(floor, |s| s.last_seq + 1);
        // The manifest's applied index is the last sealed (or installed)
        // entry's; a replicated log that never sealed has none (it may
        // start at index 0).
        let applied = if opts.replicated {
            manifest.applied
        } else {
            Some(manifest.applied.unwrap_or(0))
        };
        let RecoveredWal {
            segments: wal,
            retained,
            active: file,
            cuts,
        } = recover_wal(&wal_dir, &opts, applied, expected_seq)?;
        let active = wal.last().ok_or(Error::Closed)?;
        let (next_index, next_seq, len, has_frames) = (
            active.next_index(),
            active.end_seq(),
            active.len,
            !active.frames.is_empty(),
        );
        let path = active.path.clone();
        let first_seq = sealed
            .values()
            .next()
            .map_or_else(
                || wal.first().map_or(floor, |w| w.first_seq),
                |s| s.first_seq,
            )
            .max(manifest.floor);
        let state = State {
            sealed,
            wal: wal.into(),
            retained: retained.into(),
            applied: applied.filter(|_| opts.replicated),
            first_seq,
            // A replicated log's records are readable once applied: at open,
            // those sealed; the consensus layer applies the rest again.
            end_seq: if opts.replicated {
                expected_seq
            } else {
                next_seq
            },
        };
        let segments_dir = if opts.replicated {
            let segments_dir = make_dir(&dir.join("segments"))?;
            keep_only_sealed(&segments_dir, &state.sealed)?;
            Some(segments_dir)
        } else {
            None
        };
        let shared = Arc::new(Shared::new(
            wal_dir,
            tmp_dir,
            segments_dir,
            opts,
            store,
            state,
            cuts,
        ));
        shared.reload_settings()?;
        shared
            .keyed
            .store(shared.store.keyed()?.len(), Ordering::Release);

        let (writer_tx, writer_rx) = bounded(WRITER_QUEUE);
        let (sealer_tx, sealer_rx) = crossbeam_channel::unbounded();
        let stop_sealer = Arc::new(AtomicBool::new(false));
        let sealer = Sealer {
            shared: Arc::clone(&shared),
            rx: sealer_rx,
            stop: Arc::clone(&stop_sealer),
        };
        shared
            .space
            .update(&shared.wal_dir, shared.opts.free_space_floor);
        let writer = Writer {
            shared: Arc::clone(&shared),
            rx: writer_rx,
            sealer: sealer_tx.clone(),
            file,
            path,
            len,
            next_index,
            next_seq,
            first_frame_at: has_frames.then(Instant::now),
            unsynced: false,
            synced_len: len,
            last_sync: Instant::now(),
            keys: embedded_keys(&shared)?,
            space_checked: None,
            sealing: crate::Overdue::default(),
        };
        // Joined in this order at shutdown: the writer finishes first and
        // its exit disconnects the sealer's channel.
        let background = shared.opts.background;
        let threads = vec![
            spawn("lode-writer", move || writer.run())?,
            spawn("lode-sealer", move || {
                crate::lower_thread_priority(background);
                sealer.run()
            })?,
        ];
        let _ = sealer_tx.send(SealerMsg::Work);
        Ok(Engine {
            shared,
            writer_tx: Some(writer_tx),
            sealer_tx: Some(sealer_tx),
            stop_sealer,
            threads,
            _lock: lock,
        })
    }

    /// Appends a batch and blocks until it is durable; returns the seqs it
    /// was given, in order. An empty batch is a no-op.
    pub fn append(&self, batch: &[LogRecord]) -> Result<SeqRange> {
        self.submit(batch)?.wait()
    }

    /// Encodes a batch on the calling thread and hands it to the writer
    /// without waiting: a single thread can keep several batches in flight
    /// and let group commit share one fsync among them.
    pub fn submit(&self, batch: &[LogRecord]) -> Result<AppendTicket> {
        self.submit_encoded(EncodedBatch::encode(batch)?)
    }

    /// As [`Engine::submit`], for a batch already encoded (and checked, see
    /// [`EncodedBatch::from_payload`]) elsewhere: the server hands a
    /// client's bytes to the log without decoding and re-encoding them.
    pub fn submit_encoded(&self, encoded: EncodedBatch) -> Result<AppendTicket> {
        let (reply, rx) = bounded(1);
        self.send_append(encoded, Reply::Channel(reply))?;
        Ok(AppendTicket { rx })
    }

    /// As [`Engine::submit_encoded`], but `done` is called with the outcome
    /// instead of a ticket being waited on: an async server wakes its task
    /// from there and keeps no thread blocked per append. `done` runs on
    /// the writer thread and must return quickly. When this returns an
    /// error, `done` is not called.
    pub fn submit_encoded_then(
        &self,
        encoded: EncodedBatch,
        done: impl FnOnce(Result<SeqRange>) + Send + 'static,
    ) -> Result<()> {
        self.send_append(encoded, Reply::Callback(Box::new(done)))
    }

    /// Hands a batch to the writer, which answers `reply`; an empty batch
    /// is answered at once with the empty range at the end of the log.
    fn send_append(&self, encoded: EncodedBatch, reply: Reply) -> Result<()> {
        let writer = self.writer()?;
        if self.shared.opts.replicated {
            return Err(Error::InvalidArgument(
                "a replicated log takes entries from its consensus layer (append_entries)"
                    .to_owned(),
            ));
        }
        if encoded.count() == 0 {
            let end = self.shared.read().end_seq;
            reply.send(Ok(SeqRange { start: end, end }));
            return Ok(());
        }
        self.refuse_if_no_space()?;
        let limit = self.shared.opts.max_batch_bytes;
        if encoded.frame_len() > limit {
            return Err(Error::BatchTooLarge {
                bytes: encoded.frame_len(),
                limit,
            });
        }
        writer
            .send(WriterMsg::Append(AppendReq {
                batch: Arc::new(encoded),
                log_id: None,
                reply,
            }))
            .map_err(|_| Error::Closed)
    }

    /// The data directory's free space and floor, as last measured (at
    /// most a quarter of a second ago while the engine writes, a tick
    /// ago otherwise). While `low`, an embedded engine refuses appends
    /// ([`Error::NoSpace`]); a cluster node refuses writes cluster-wide.
    pub fn space(&self) -> crate::Space {
        self.shared.space.get()
    }

    /// [`Error::NoSpace`] while the free space is below the floor.
    fn refuse_if_no_space(&self) -> Result<()> {
        if !self.shared.space.low() {
            return Ok(());
        }
        let space = self.shared.space.get();
        Err(Error::NoSpace {
            path: self.shared.wal_dir.clone(),
            free: space.free,
            floor: space.floor,
        })
    }

    pub(crate) fn sealer(&self) -> Result<&Sender<SealerMsg>> {
        self.sealer_tx.as_ref().ok_or(Error::Closed)
    }

    pub(crate) fn writer(&self) -> Result<&Sender<WriterMsg>> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        self.writer_tx.as_ref().ok_or(Error::Closed)
    }

    /// Makes every append acknowledged so far durable (an fdatasync of the
    /// WAL); under `Durability::Sync` they already are. A bulk loader
    /// appends with `Durability::Buffered` and calls this at checkpoints.
    pub fn sync(&self) -> Result<()> {
        let writer = self.writer()?;
        let (reply, rx) = bounded(1);
        writer
            .send(WriterMsg::Sync(reply))
            .map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Seals the active segment (if it holds records) and waits until every
    /// finished segment is sealed. Normally sealing happens by size or age
    /// on its own; this is for tests, benchmarks and orderly shutdowns.
    pub fn seal(&self) -> Result<()> {
        let writer = self.writer_tx.as_ref().ok_or(Error::Closed)?;
        let (reply, rx) = bounded(1);
        writer
            .send(WriterMsg::SealAll(reply))
            .map_err(|_| Error::Closed)?;
        crate::sealer::await_answer(&rx)
    }

    /// Tests: stops this engine as a power loss would, now. The writer
    /// takes no further message (appends, cuts and state saves still
    /// queued are lost, their callers answered as by a closed engine),
    /// the bytes of the active WAL file that were not fsynced are cut
    /// off, and the sealer starts no further step. The engine is then
    /// only good for dropping: reopening its directory recovers it.
    #[doc(hidden)]
    pub fn crash(&self) {
        self.shared.crashed.store(true, Ordering::Release);
        let Some(writer) = self.writer_tx.as_ref() else {
            return;
        };
        // Wakes the writer, which drops this message with the rest; the
        // answer is the channel closing once the writer has stopped.
        let (reply, rx) = bounded(1);
        if writer.send(WriterMsg::Sync(reply)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Applies retention now, as if the time were `now` (ns since the
    /// epoch); the background thread does the same every tick with the
    /// wall clock.
    pub fn enforce_retention(&self, now: i64) -> Result<RetentionReport> {
        let sealer = self.sealer_tx.as_ref().ok_or(Error::Closed)?;
        let (reply, rx) = bounded(1);
        sealer
            .send(SealerMsg::Retention { now, reply })
            .map_err(|_| Error::Closed)?;
        crate::sealer::await_answer(&rx)
    }

    /// The seq retention would keep from as of `now` (ns since the
    /// epoch), if it would drop anything: what a replicated log's leader
    /// proposes (every node then calls [`drop_below`](Engine::drop_below)).
    pub fn retention_floor(&self, now: i64) -> Option<u64> {
        crate::sealer::doomed_by_policy(&self.shared, now)
            .last()
            .map(|s| s.last_seq + 1)
    }

    /// Drops the records below seq `floor`: the sealed segments wholly
    /// below it go, the rest of one that straddles it is hidden. A
    /// replicated log's retention, carried out when its decision applies.
    pub fn drop_below(&self, floor: u64) -> Result<RetentionReport> {
        let sealer = self.sealer_tx.as_ref().ok_or(Error::Closed)?;
        let (reply, rx) = bounded(1);
        sealer
            .send(SealerMsg::DropBelow { floor, reply })
            .map_err(|_| Error::Closed)?;
        crate::sealer::await_answer(&rx)
    }

    /// The SST file of a sealed segment as it was sealed, if this is a
    /// replicated log and still holds it: what a lagging node is sent.
    pub fn segment_file(&self, segment: &SegmentMeta) -> Option<PathBuf> {
        let path = self.shared.segment_path(segment)?;
        let len = fs::metadata(&path).ok()?.len();
        (len == segment.sst_bytes).then_some(path)
    }

    /// The retention bounds the engine was opened with.
    pub fn retention(&self) -> crate::Retention {
        self.shared.opts.retention
    }

    /// The data directory the engine was opened on.
    /// Named values kept for the engine's user (a server keeps its
    /// tokens here), as of the last change: durable, and in a snapshot a
    /// replicated log installs. The engine does not read them.
    pub fn settings(&self) -> Arc<Settings> {
        self.shared.settings()
    }

    /// How many times the settings changed since open: a reader that
    /// caches what it made of them rebuilds it when this moves.
    pub fn settings_generation(&self) -> u64 {
        self.shared.settings_generation()
    }

    /// Sets (or, with `None`, removes) the setting `name`, durably. A
    /// replicated log calls it as it applies the entries that decide it,
    /// in log order, so every node holds the same settings.
    pub fn put_setting(&self, name: &str, value: Option<&[u8]>) -> Result<()> {
        self.shared.store.put_setting(name, value)?;
        self.shared.reload_settings()
    }

    /// The largest encoded batch (whole frame) an append takes: a front
    /// end or a cluster's leader cuts or refuses larger ones before they
    /// reach the log.
    pub fn max_batch_bytes(&self) -> usize {
        self.shared.opts.max_batch_bytes
    }

    /// Which keyed batches the log remembers.
    pub fn key_window(&self) -> crate::KeyWindow {
        self.shared.opts.keys
    }

    pub fn data_dir(&self) -> &Path {
        self.shared.wal_dir.parent().unwrap_or(&self.shared.wal_dir)
    }

    /// Sealed segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentMeta> {
        self.shared.read().sealed.values().cloned().collect()
    }

    /// Stops the threads after the writer has written and synced every
    /// append it accepted. Dropping the engine does the same.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        match self.shared.poisoned() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        // The writer drains its queue before it sees the channel close.
        self.writer_tx = None;
        self.stop_sealer.store(true, Ordering::Release);
        self.sealer_tx = None;
        let here = std::thread::current().id();
        // The sealer may be mid-seal at idle priority: on a busy machine it
        // would finish only when the CPUs fall idle.
        let _hurry = (!self.threads.is_empty()).then(crate::hurry_background);
        for thread in self.threads.drain(..) {
            // The last holder can let go on one of the engine's own
            // threads (an append's callback runs on the writer): that
            // thread cannot join itself, and ends by itself once it sees
            // its channel closed.
            if thread.thread().id() != here {
                let _ = thread.join();
            }
        }
        self.shared.close();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Deletes the files in `dir` that are not a sealed segment's whole SST
/// (a crash between linking and committing a seal, or before a dropped
/// segment's file went).
fn keep_only_sealed(
    dir: &Path,
    sealed: &std::collections::BTreeMap<u64, SegmentMeta>,
) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(Error::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("list", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        if let Some(renamed) = renamed_to_current(&name, sealed) {
            let to = dir.join(renamed);
            fs::rename(&path, &to).map_err(Error::io("rename", &path))?;
            continue;
        }
        let kept = name
            .to_str()
            .and_then(|n| n.get(..20))
            .and_then(|n| n.parse::<u64>().ok())
            .and_then(|first_seq| sealed.get(&first_seq))
            .is_some_and(|s| {
                name.to_str() == Some(crate::shared::segment_file_name(s).as_str())
                    && entry.metadata().is_ok_and(|m| m.len() == s.sst_bytes)
            });
        if !kept {
            fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        }
    }
    Ok(())
}

/// A kept segment file named as before files carried their crc
/// (`<first seq>.sst`): its name now, when it is a manifest segment's.
fn renamed_to_current(
    name: &std::ffi::OsStr,
    sealed: &std::collections::BTreeMap<u64, SegmentMeta>,
) -> Option<String> {
    let first_seq = name.to_str()?.strip_suffix(".sst")?.parse::<u64>().ok()?;
    sealed.get(&first_seq).map(crate::shared::segment_file_name)
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(Error::io("spawn thread", name))
}
