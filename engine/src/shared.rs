//! State shared by the engine handle, its writer and sealer threads and
//! its readers.
//!
//! Owns the map of where every record lives (sealed segment or WAL frame)
//! and the durable end of the log. Every change to it is made under the
//! `state` write lock, briefly, after the disk already holds what it says.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::Duration;

use crate::options::Options;
use crate::store::Store;
use crate::wal::{TailCut, WalSegment};
use lode_codec::SegmentMeta;

#[derive(Debug)]
pub(crate) struct State {
    /// Sealed segments by first seq.
    pub(crate) sealed: BTreeMap<u64, SegmentMeta>,
    /// WAL segments, oldest first; the last one is active.
    pub(crate) wal: VecDeque<WalSegment>,
    /// Replicated mode: WAL files already sealed, kept as the Raft log
    /// until purged. Records are read from the sealed segments, never here.
    pub(crate) retained: VecDeque<WalSegment>,
    /// Replicated mode: the last applied log index; records of entries up
    /// to it are readable (`end_seq`), later ones are not yet.
    pub(crate) applied: Option<u64>,
    /// Oldest seq retention keeps.
    pub(crate) first_seq: u64,
    /// One past the newest readable seq: durable, and in replicated mode
    /// also applied.
    pub(crate) end_seq: u64,
}

impl State {
    /// Every WAL segment still on disk, oldest first: retained, then live.
    pub(crate) fn log_segments(&self) -> impl DoubleEndedIterator<Item = &WalSegment> {
        self.retained.iter().chain(self.wal.iter())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appends: AtomicU64,
    pub(crate) appended_records: AtomicU64,
    pub(crate) group_commits: AtomicU64,
    pub(crate) wal_bytes_written: AtomicU64,
    pub(crate) seals: AtomicU64,
    pub(crate) seal_failures: AtomicU64,
    pub(crate) dropped_segments: AtomicU64,
    pub(crate) dropped_records: AtomicU64,
    pub(crate) dropped_bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) wal_dir: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    /// A replicated log's copy of each sealed segment's SST file (a hard
    /// link: no bytes copied), what a lagging node is sent.
    pub(crate) segments_dir: Option<PathBuf>,
    pub(crate) opts: Options,
    pub(crate) store: Store,
    state: RwLock<State>,
    /// Signalled whenever `end_seq` grows or the engine closes.
    durable: Mutex<()>,
    durable_cv: Condvar,
    closed: AtomicBool,
    poison: Mutex<Option<String>>,
    pub(crate) last_seal_error: Mutex<Option<String>>,
    pub(crate) recovery: Vec<TailCut>,
    pub(crate) counters: Counters,
    /// The settings as stored (see [`crate::Engine::settings`]), and how
    /// many times they changed.
    settings: RwLock<std::sync::Arc<crate::store::Settings>>,
    settings_generation: AtomicU64,
    /// How many keyed batches the store remembers (see
    /// [`crate::KeyWindow`]).
    pub(crate) keyed: std::sync::atomic::AtomicUsize,
    /// The data directory's free space, as the writer last measured it.
    pub(crate) space: crate::space::SpaceWatch,
    /// Failpoint: the next WAL sync fails (tests only).
    #[cfg(test)]
    pub(crate) fail_next_sync: AtomicBool,
    /// Tests: the engine stopped as a power loss would
    /// ([`crate::Engine::crash`]); its threads do nothing more.
    pub(crate) crashed: AtomicBool,
}

impl Shared {
    /// Where the file of `segment` is kept: named by its first seq and
    /// its file's crc, so that a segment installed from another node never
    /// takes the name of one it replaces.
    pub(crate) fn segment_path(&self, segment: &SegmentMeta) -> Option<PathBuf> {
        Some(self.segments_dir.as_ref()?.join(segment_file_name(segment)))
    }

    pub(crate) fn new(
        wal_dir: PathBuf,
        tmp_dir: PathBuf,
        segments_dir: Option<PathBuf>,
        opts: Options,
        store: Store,
        state: State,
        recovery: Vec<TailCut>,
    ) -> Shared {
        Shared {
            wal_dir,
            tmp_dir,
            segments_dir,
            opts,
            store,
            state: RwLock::new(state),
            durable: Mutex::new(()),
            durable_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            poison: Mutex::new(None),
            last_seal_error: Mutex::new(None),
            recovery,
            counters: Counters::default(),
            settings: RwLock::default(),
            settings_generation: AtomicU64::new(0),
            keyed: std::sync::atomic::AtomicUsize::new(0),
            space: crate::space::SpaceWatch::default(),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
        }
    }

    /// The settings, as last read from the store.
    pub(crate) fn settings(&self) -> std::sync::Arc<crate::store::Settings> {
        std::sync::Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn settings_generation(&self) -> u64 {
        self.settings_generation.load(Ordering::Acquire)
    }

    /// Reads the settings from the store again (after they changed there).
    pub(crate) fn reload_settings(&self) -> crate::Result<()> {
        let settings = std::sync::Arc::new(self.store.settings()?);
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = settings;
        self.settings_generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    // A panic in another thread never leaves these structures half-changed
    // (each change is a few assignments), so a poisoned lock is still good.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn poison(&self, cause: String) {
        tracing::error!(%cause, "engine poisoned: refusing further writes");
        Self::lock(&self.poison).get_or_insert(cause);
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        Self::lock(&self.poison).clone()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The replicated log's state file (vote, committed index), beside the
    /// WAL directory.
    pub(crate) fn state_path(&self) -> PathBuf {
        self.wal_dir
            .parent()
            .unwrap_or(&self.wal_dir)
            .join("raft-state")
    }

    /// Wakes readers waiting for new records.
    pub(crate) fn notify(&self) {
        let _guard = Self::lock(&self.durable);
        self.durable_cv.notify_all();
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify();
    }

    /// Waits until `end_seq > seq`, the engine closes, or `timeout` passes.
    pub(crate) fn wait_beyond(&self, seq: u64, timeout: Duration) {
        let guard = Self::lock(&self.durable);
        let _unused = self
            .durable_cv
            .wait_timeout_while(guard, timeout, |()| {
                self.read().end_seq <= seq && !self.is_closed()
            })
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// The name of a segment's kept file.
pub(crate) fn segment_file_name(segment: &SegmentMeta) -> String {
    format!("{:020}-{:08x}.sst", segment.first_seq, segment.sst_crc32c)
}

/// Nanoseconds since the Unix epoch, from the wall clock.
pub fn now_ns() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}
