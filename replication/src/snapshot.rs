//! Catch-up by segments: what a node lacks of a snapshot, and where the
//! segment files it receives wait until they are whole.
//!
//! A snapshot is the leader's manifest: its sealed segments, each named by
//! its seqs and the checksum of its records ([`SegmentMeta`]). A follower
//! compares it with its own ([`diff`]): a segment it holds with the same
//! seqs and records is kept, any other it lacks. Each lacking segment's
//! SST file comes in chunks into the [`Staging`] area, each chunk checked,
//! written and synced before it is acknowledged, so a transfer broken off
//! (a crash, a lost connection) resumes from what the staging area holds;
//! a finished file is checked whole against the manifest before it is
//! named complete.
//!
//! [`Transfers`] is a node's side of it: the follower's answers to an
//! offer and to each chunk, the leader's sending of the missing files
//! (paced by a bandwidth cap), and what both count for `/metrics` and
//! `lode cluster status`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lode_engine::{Engine, SegmentMeta};
use lode_replication_wire::NodeId;
use lode_replication_wire::wire::{Chunk, Needed, Response, SegmentList};

/// How a follower's segments compare with a snapshot's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// The snapshot's segments the follower holds alike: kept.
    pub kept: Vec<SegmentMeta>,
    /// The snapshot's segments it lacks (or holds with other records):
    /// to be sent.
    pub missing: Vec<SegmentMeta>,
    /// The follower's segments the snapshot does not have: to be dropped
    /// when the snapshot is installed.
    pub surplus: Vec<SegmentMeta>,
}

/// Whether two nodes' segments hold the same records: the same seqs and
/// the same records checksum (unknown on either side is not the same).
pub fn same_records(a: &SegmentMeta, b: &SegmentMeta) -> bool {
    (a.first_seq, a.last_seq) == (b.first_seq, b.last_seq)
        && a.records_crc32c.is_some()
        && a.records_crc32c == b.records_crc32c
}

/// Compares the segments a snapshot offers with those a node holds.
pub fn diff(offered: &[SegmentMeta], held: &[SegmentMeta]) -> Diff {
    let mut out = Diff::default();
    for segment in offered {
        if held.iter().any(|h| same_records(h, segment)) {
            out.kept.push(segment.clone());
        } else {
            out.missing.push(segment.clone());
        }
    }
    out.surplus = held
        .iter()
        .filter(|h| !offered.iter().any(|o| same_records(o, h)))
        .cloned()
        .collect();
    out
}

/// A step of staging a chunk, each a point where a crash may stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Opening (creating, on the first chunk) the partial file.
    Open,
    /// Writing the chunk's bytes.
    Write,
    /// Syncing them.
    Sync,
    /// Checking the finished file against the manifest.
    Verify,
    /// Naming it complete.
    Rename,
    /// Syncing the directory, so that the name lasts.
    SyncDir,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StagingError {
    #[error("chunk at offset {offset} of segment {first_seq} fails its checksum")]
    BadChunk { first_seq: u64, offset: u64 },
    #[error(
        "chunk at offset {offset} of segment {first_seq}: {staged} bytes are staged, send from there"
    )]
    Offset {
        first_seq: u64,
        offset: u64,
        staged: u64,
    },
    #[error("chunk of segment {first_seq} ends at {end}, past the file's {size} bytes")]
    TooLong { first_seq: u64, end: u64, size: u64 },
    #[error(
        "segment {first_seq}'s staged file has crc32c {got:08x}, the manifest {want:08x}: discarded"
    )]
    BadFile { first_seq: u64, got: u32, want: u32 },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A test stopped the staging at this step, as a crash would.
    #[error("stopped before {0:?}")]
    Stopped(Step),
}

type Result<T> = std::result::Result<T, StagingError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StagingError {
    let path = path.to_path_buf();
    move |source| StagingError::Io { what, path, source }
}

/// The directory where a follower's incoming segment files wait: one
/// `<first seq>-<file crc>.part` per file under way, renamed `.sst` once
/// whole and checked.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    /// Tests: the step at which staging stops, as if the process died.
    stop_at: Option<Step>,
}

impl Staging {
    /// Opens (creating) the staging directory `dir`.
    pub fn open(dir: &Path) -> Result<Staging> {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            stop_at: None,
        })
    }

    /// Makes every later chunk stop before `step` (fault injection).
    pub fn stop_at(&mut self, step: Option<Step>) {
        self.stop_at = step;
    }

    fn reach(&self, step: Step) -> Result<()> {
        match self.stop_at {
            Some(stop) if stop == step => Err(StagingError::Stopped(step)),
            _ => Ok(()),
        }
    }

    fn name(&self, segment: &SegmentMeta, ext: &str) -> PathBuf {
        self.dir.join(format!(
            "{:020}-{:08x}.{ext}",
            segment.first_seq, segment.sst_crc32c
        ))
    }

    /// The complete, checked file of `segment`, if staged.
    pub fn complete(&self, segment: &SegmentMeta) -> Option<PathBuf> {
        let path = self.name(segment, "sst");
        let len = fs::metadata(&path).ok()?.len();
        (len == segment.sst_bytes).then_some(path)
    }

    /// Bytes of `segment`'s file staged so far (its size once complete).
    fn staged(&self, segment: &SegmentMeta) -> u64 {
        if self.complete(segment).is_some() {
            return segment.sst_bytes;
        }
        fs::metadata(self.name(segment, "part")).map_or(0, |m| m.len().min(segment.sst_bytes))
    }

    /// Where `segment`'s transfer resumes: the bytes staged so far (its
    /// size once complete). A file that was staged whole but not yet
    /// checked (a crash came first) is checked now: named complete, or
    /// discarded and sent again from the start.
    pub fn resume(&self, segment: &SegmentMeta) -> Result<u64> {
        let staged = self.staged(segment);
        if staged < segment.sst_bytes || self.complete(segment).is_some() {
            return Ok(staged);
        }
        match self.finish(segment, &self.name(segment, "part")) {
            Ok(()) => Ok(staged),
            Err(StagingError::BadFile { .. }) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Stages the chunk of `segment`'s file that starts at `offset`, whose
    /// crc32c the leader says is `crc`; returns the bytes staged after it.
    /// A chunk must start where the staged bytes end; one already staged
    /// whole is acknowledged again.
    pub fn write_chunk(
        &self,
        segment: &SegmentMeta,
        offset: u64,
        bytes: &[u8],
        crc: u32,
    ) -> Result<u64> {
        let first_seq = segment.first_seq;
        if crc32c::crc32c(bytes) != crc {
            return Err(StagingError::BadChunk { first_seq, offset });
        }
        let staged = self.staged(segment);
        if staged == segment.sst_bytes {
            return Ok(staged);
        }
        if offset != staged {
            return Err(StagingError::Offset {
                first_seq,
                offset,
                staged,
            });
        }
        let end = offset + bytes.len() as u64;
        if end > segment.sst_bytes {
            return Err(StagingError::TooLong {
                first_seq,
                end,
                size: segment.sst_bytes,
            });
        }
        let part = self.name(segment, "part");
        self.reach(Step::Open)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .map_err(io("open", &part))?;
        // A torn earlier write may have left more than was acknowledged.
        file.set_len(offset).map_err(io("truncate", &part))?;
        self.reach(Step::Write)?;
        file.write_all(bytes).map_err(io("write", &part))?;
        self.reach(Step::Sync)?;
        file.sync_data().map_err(io("sync", &part))?;
        if end == segment.sst_bytes {
            self.finish(segment, &part)?;
        }
        Ok(end)
    }

    /// Checks a whole file against the manifest and names it complete.
    fn finish(&self, segment: &SegmentMeta, part: &Path) -> Result<()> {
        self.reach(Step::Verify)?;
        let got = file_crc(part)?;
        if got != segment.sst_crc32c {
            let _ = fs::remove_file(part);
            return Err(StagingError::BadFile {
                first_seq: segment.first_seq,
                got,
                want: segment.sst_crc32c,
            });
        }
        self.reach(Step::Rename)?;
        let done = self.name(segment, "sst");
        fs::rename(part, &done).map_err(io("rename", part))?;
        self.reach(Step::SyncDir)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", &self.dir))
    }

    /// Deletes every staged file but those of `keep` (a transfer of
    /// another snapshot left them, or they were installed).
    pub fn retain(&self, keep: &[SegmentMeta]) -> Result<()> {
        let wanted: Vec<PathBuf> = keep
            .iter()
            .flat_map(|s| [self.name(s, "part"), self.name(s, "sst")])
            .collect();
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let path = entry.map_err(io("list", &self.dir))?.path();
            if !wanted.contains(&path) {
                fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        Ok(())
    }
}

/// crc32c of a whole file.
fn file_crc(path: &Path) -> Result<u32> {
    let mut file = File::open(path).map_err(io("open", path))?;
    let mut crc = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io("read", path))?;
        let Some(read) = buf.get(..n).filter(|r| !r.is_empty()) else {
            return Ok(crc);
        };
        crc = crc32c::crc32c_append(crc, read);
    }
}

/// Counts of snapshot transfers since the node started, for `/metrics`.
#[derive(Debug, Default)]
pub struct TransferCounts {
    pub snapshots_sent: AtomicU64,
    pub snapshots_received: AtomicU64,
    /// Bytes of segment files put on the wire in chunks: refused ones,
    /// and ones a follower's crash cut off, included.
    pub bytes_sent: AtomicU64,
    /// Bytes of chunks the follower refused (damaged, misplaced).
    pub bytes_refused: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Transfers that went on from files staged (wholly or in part) by
    /// one broken off before.
    pub resumes: AtomicU64,
    /// Chunks refused by the follower and sent again.
    pub chunk_retries: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A transfer under way, as `lode cluster status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferProgress {
    /// The other node (the leader, for a transfer this node receives).
    pub peer: Option<NodeId>,
    /// This node sends (it leads), or receives.
    pub sending: bool,
    pub files_done: u64,
    pub files: u64,
    pub bytes_done: u64,
    pub bytes: u64,
    /// Bytes per second since the transfer began.
    pub rate: f64,
    /// Seconds left at that rate, once there is one.
    pub eta_secs: Option<f64>,
}

#[derive(Debug, Clone)]
struct Underway {
    files_done: u64,
    files: u64,
    bytes_done: u64,
    bytes: u64,
    started: Instant,
}

/// A node's side of catch-up by segments: the staging area it receives
/// into, the files it sends from (its engine's), and what it counts.
#[derive(Debug)]
pub struct Transfers {
    engine: Arc<Engine>,
    staging: Mutex<Staging>,
    pub counts: TransferCounts,
    underway: Mutex<BTreeMap<(bool, Option<NodeId>), Underway>>,
    /// The leader sends at most this many bytes of files per second.
    pub(crate) bytes_per_sec: Option<u64>,
    /// Bytes of file per chunk.
    pub(crate) chunk_bytes: usize,
    /// Tests: every chunk whose number (from 1) divides by this is sent
    /// with a byte flipped after its checksum was taken.
    damage_every: Option<u64>,
    chunks_sent: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bytes of file per chunk unless configured: within the 1-4 MiB that
/// keeps a chunk's fsync and round trip small beside its transfer.
pub const CHUNK_BYTES: usize = 2 << 20;

impl Transfers {
    /// The transfers of a node whose engine is `engine`: staging under
    /// its data directory (`staging/`).
    pub fn open(
        engine: Arc<Engine>,
        bytes_per_sec: Option<u64>,
        chunk_bytes: usize,
    ) -> Result<Transfers> {
        let staging = Staging::open(&engine.data_dir().join("staging"))?;
        Ok(Transfers {
            engine,
            staging: Mutex::new(staging),
            counts: TransferCounts::default(),
            underway: Mutex::default(),
            bytes_per_sec: bytes_per_sec.filter(|&b| b > 0),
            chunk_bytes: chunk_bytes.clamp(4096, 16 << 20),
            damage_every: None,
            chunks_sent: AtomicU64::new(0),
        })
    }

    /// Tests: damage every `n`-th chunk this node sends, in transit.
    pub fn damage_every(&mut self, n: Option<u64>) {
        self.damage_every = n.filter(|&n| n > 0);
    }

    /// Follower: the offered segments this node lacks, each with the
    /// bytes already staged; staged files of other snapshots go.
    pub fn offer(&self, list: &SegmentList, leader: Option<NodeId>) -> Result<Vec<Needed>> {
        let missing = diff(&list.segments, &self.engine.segments()).missing;
        let staging = lock(&self.staging);
        staging.retain(&missing)?;
        let mut needed = Vec::with_capacity(missing.len());
        let mut underway = Underway {
            files_done: 0,
            files: missing.len() as u64,
            bytes_done: 0,
            bytes: 0,
            started: Instant::now(),
        };
        for segment in &missing {
            let from = staging.resume(segment)?;
            if from == segment.sst_bytes {
                underway.files_done += 1;
            }
            underway.bytes += segment.sst_bytes - from;
            needed.push(Needed {
                first_seq: segment.first_seq,
                sst_crc32c: segment.sst_crc32c,
                from,
            });
        }
        drop(staging);
        lock(&self.underway).insert((false, leader), underway);
        Ok(needed)
    }

    /// Follower: stages one chunk; the answer says how far the file is
    /// staged, or why the chunk was refused and where to send from.
    pub fn chunk(&self, chunk: &Chunk) -> Response {
        let staging = lock(&self.staging);
        let written = staging.write_chunk(&chunk.segment, chunk.offset, &chunk.bytes, chunk.crc32c);
        match written {
            Ok(staged) => {
                drop(staging);
                add(&self.counts.bytes_received, chunk.bytes.len() as u64);
                let whole = staged == chunk.segment.sst_bytes;
                self.progress(false, |u| {
                    u.bytes_done += chunk.bytes.len() as u64;
                    u.files_done += u64::from(whole);
                });
                Response::ChunkStaged(staged)
            }
            Err(
                e @ (StagingError::BadChunk { .. }
                | StagingError::Offset { .. }
                | StagingError::TooLong { .. }
                | StagingError::BadFile { .. }),
            ) => match staging.resume(&chunk.segment) {
                Ok(staged) => Response::ChunkRefused {
                    staged,
                    reason: e.to_string(),
                },
                Err(e) => Response::Error(e.to_string()),
            },
            Err(e) => Response::Error(e.to_string()),
        }
    }

    fn progress(&self, sending: bool, change: impl FnOnce(&mut Underway)) {
        let mut underway = lock(&self.underway);
        if let Some(u) = underway.iter_mut().find(|((s, _), _)| *s == sending) {
            change(u.1);
        }
    }

    /// Follower, installing: the snapshot's segments as this node will
    /// hold them (its own where alike, else the leader's) and the staged
    /// file of each it lacks; an error names the segments not staged.
    pub fn resolve(&self, list: &SegmentList) -> std::result::Result<Resolved, String> {
        let held = self.engine.segments();
        let staging = lock(&self.staging);
        let mut resolved = Resolved::default();
        let mut lacking = Vec::new();
        for segment in &list.segments {
            if let Some(own) = held.iter().find(|h| same_records(h, segment)) {
                resolved.segments.push(own.clone());
                continue;
            }
            match staging.complete(segment) {
                Some(path) => {
                    resolved.segments.push(segment.clone());
                    resolved.files.push((segment.clone(), path));
                }
                None => lacking.push(format!("{}..={}", segment.first_seq, segment.last_seq)),
            }
        }
        if lacking.is_empty() {
            Ok(resolved)
        } else {
            Err(format!("segments not staged yet: {}", lacking.join(", ")))
        }
    }

    /// Follower: a snapshot was installed; its staged files go.
    pub fn installed(&self) {
        if let Err(e) = lock(&self.staging).retain(&[]) {
            tracing::warn!(error = %e, "could not clear the staging area");
        }
        lock(&self.underway).retain(|(sending, _), _| *sending);
        add(&self.counts.snapshots_received, 1);
    }

    /// Leader: a transfer to `peer` of `files` files, `bytes` bytes.
    pub(crate) fn sending(&self, peer: NodeId, files: u64, bytes: u64) {
        lock(&self.underway).insert(
            (true, Some(peer)),
            Underway {
                files_done: 0,
                files,
                bytes_done: 0,
                bytes,
                started: Instant::now(),
            },
        );
    }

    /// Leader: a chunk of `bytes` goes on the wire.
    pub(crate) fn sending_chunk(&self, bytes: u64) {
        add(&self.counts.bytes_sent, bytes);
    }

    /// Leader: `bytes` more were staged by `peer`, and a file if `whole`.
    pub(crate) fn sent(&self, peer: NodeId, bytes: u64, whole: bool) {
        if let Some(u) = lock(&self.underway).get_mut(&(true, Some(peer))) {
            u.bytes_done += bytes;
            u.files_done += u64::from(whole);
        }
    }

    /// Leader: the transfer to `peer` ended (installed if `done`).
    pub(crate) fn ended(&self, peer: NodeId, done: bool) {
        lock(&self.underway).remove(&(true, Some(peer)));
        if done {
            add(&self.counts.snapshots_sent, 1);
        }
    }

    pub(crate) fn resumed(&self) {
        add(&self.counts.resumes, 1);
    }

    pub(crate) fn retried(&self, bytes: u64) {
        add(&self.counts.chunk_retries, 1);
        add(&self.counts.bytes_refused, bytes);
    }

    /// Leader: the chunk of `segment`'s file at `offset`, with its crc
    /// (damaged after the crc is taken, when a test asks).
    pub(crate) fn read_chunk(&self, segment: &SegmentMeta, offset: u64) -> io::Result<Chunk> {
        let path = self.engine.segment_file(segment).ok_or_else(|| {
            io::Error::other(format!(
                "segment {}..={} is no longer held here",
                segment.first_seq, segment.last_seq
            ))
        })?;
        let len = (segment.sst_bytes.saturating_sub(offset)).min(self.chunk_bytes as u64);
        let mut bytes = vec![0u8; len as usize];
        let file = File::open(&path)?;
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, offset)?;
        let crc32c = crc32c::crc32c(&bytes);
        let n = self.chunks_sent.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .damage_every
            .is_some_and(|every| n.is_multiple_of(every))
            && let Some(byte) = bytes.last_mut()
        {
            *byte ^= 0x5a;
        }
        Ok(Chunk {
            segment: segment.clone(),
            offset,
            crc32c,
            bytes,
        })
    }

    /// The counters as (metric name, help, value), for `/metrics`.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let c = &self.counts;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            (
                "lode_snapshots_sent_total",
                "Snapshots this node sent and a follower installed.",
                load(&c.snapshots_sent),
            ),
            (
                "lode_snapshots_received_total",
                "Snapshots this node received and installed.",
                load(&c.snapshots_received),
            ),
            (
                "lode_snapshot_sent_bytes_total",
                "Bytes of segment files put on the wire in snapshot chunks.",
                load(&c.bytes_sent),
            ),
            (
                "lode_snapshot_refused_bytes_total",
                "Bytes of snapshot chunks refused by the follower (sent again).",
                load(&c.bytes_refused),
            ),
            (
                "lode_snapshot_received_bytes_total",
                "Bytes of segment files received and staged.",
                load(&c.bytes_received),
            ),
            (
                "lode_snapshot_resumes_total",
                "Snapshot transfers that went on from files a broken-off one staged.",
                load(&c.resumes),
            ),
            (
                "lode_snapshot_chunk_retries_total",
                "Snapshot chunks refused by the follower and sent again.",
                load(&c.chunk_retries),
            ),
        ]
    }

    /// Transfers under way.
    pub fn underway(&self) -> Vec<TransferProgress> {
        lock(&self.underway)
            .iter()
            .map(|((sending, peer), u)| {
                let secs = u.started.elapsed().as_secs_f64();
                let rate = if secs > 0.0 {
                    u.bytes_done as f64 / secs
                } else {
                    0.0
                };
                let left = u.bytes.saturating_sub(u.bytes_done) as f64;
                TransferProgress {
                    peer: *peer,
                    sending: *sending,
                    files_done: u.files_done,
                    files: u.files,
                    bytes_done: u.bytes_done,
                    bytes: u.bytes,
                    rate,
                    eta_secs: (rate > 0.0).then(|| left / rate),
                }
            })
            .collect()
    }
}

/// A snapshot's segments as a follower will hold them, and the files to
/// install.
#[derive(Debug, Default)]
pub struct Resolved {
    pub segments: Vec<SegmentMeta>,
    pub files: Vec<(SegmentMeta, PathBuf)>,
}

/// Keeps a sender at most `bytes_per_sec` (none: no limit).
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_sec: Option<u64>,
    /// Tokio's clock: a paused test clock moves it.
    started: tokio::time::Instant,
    sent: u64,
}

impl Pacer {
    pub(crate) fn new(bytes_per_sec: Option<u64>) -> Pacer {
        Pacer {
            bytes_per_sec,
            started: tokio::time::Instant::now(),
            sent: 0,
        }
    }

    /// Counts `bytes` sent; waits while the rate is above the cap.
    pub(crate) async fn pace(&mut self, bytes: u64) {
        self.sent += bytes;
        let Some(cap) = self.bytes_per_sec else {
            return;
        };
        let due = std::time::Duration::from_secs_f64(self.sent as f64 / cap as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn segment(first_seq: u64, last_seq: u64, records_crc32c: Option<u32>) -> SegmentMeta {
        SegmentMeta {
            first_seq,
            last_seq,
            first_index: first_seq,
            last_index: last_seq,
            min_ts: 0,
            max_ts: 0,
            records: last_seq - first_seq + 1,
            wal_bytes: 0,
            sst_bytes: 0,
            sst_crc32c: 0,
            sealed_at: 0,
            records_crc32c,
            layout: lode_codec::Layout::Chunks,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_holds_a_sender_to_its_cap() {
        let started = tokio::time::Instant::now();
        let mut pacer = Pacer::new(Some(1_000_000));
        for _ in 0..10 {
            pacer.pace(200_000).await;
        }
        // 2 MB at 1 MB/s: 2 s of (virtual) time.
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(1990)
                && took < std::time::Duration::from_millis(2100),
            "{took:?}"
        );
        let mut free = Pacer::new(None);
        let started = tokio::time::Instant::now();
        free.pace(u64::MAX / 2).await;
        assert!(started.elapsed() < std::time::Duration::from_millis(1));
    }

    #[test]
    fn the_diff_keeps_what_is_alike_and_sends_the_rest() {
        let leader = [
            segment(1, 100, Some(1)),
            segment(101, 200, Some(2)),
            segment(201, 300, Some(3)),
            segment(301, 400, Some(4)),
        ];
        let follower = [
            // Alike (its SST's own bytes may differ: not compared).
            SegmentMeta {
                sst_crc32c: 99,
                ..segment(1, 100, Some(1))
            },
            // The same seqs, other records: lacking, and surplus.
            segment(101, 200, Some(7)),
            // Sealed at other boundaries: lacking, and surplus.
            segment(201, 250, Some(3)),
            // Sealed before records were checksummed: not trusted.
            segment(301, 400, None),
            // Beyond the snapshot.
            segment(401, 500, Some(5)),
        ];
        let d = diff(&leader, &follower);
        let ranges = |v: &[SegmentMeta]| -> Vec<(u64, u64)> {
            v.iter().map(|s| (s.first_seq, s.last_seq)).collect()
        };
        assert_eq!(ranges(&d.kept), [(1, 100)]);
        assert_eq!(ranges(&d.missing), [(101, 200), (201, 300), (301, 400)]);
        assert_eq!(
            ranges(&d.surplus),
            [(101, 200), (201, 250), (301, 400), (401, 500)]
        );
        assert_eq!(diff(&leader, &[]).missing.len(), 4);
        assert_eq!(diff(&leader, &leader).kept.len(), 4);
    }

    /// A file of `len` bytes and the manifest entry that names it.
    fn file(len: usize, seed: u8) -> (Vec<u8>, SegmentMeta) {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let meta = SegmentMeta {
            sst_bytes: len as u64,
            sst_crc32c: crc32c::crc32c(&bytes),
            ..segment(
                1 + u64::from(seed) * 1000,
                1000 + u64::from(seed) * 1000,
                Some(1),
            )
        };
        (bytes, meta)
    }

    /// Sends `bytes` from where the staging area resumes, in chunks of
    /// `chunk`; returns the bytes sent, or the error that stopped it.
    fn send(
        staging: &Staging,
        meta: &SegmentMeta,
        bytes: &[u8],
        chunk: usize,
        sent: &mut u64,
    ) -> Result<()> {
        loop {
            let from = staging.resume(meta)? as usize;
            if from == bytes.len() {
                return Ok(());
            }
            let piece = &bytes[from..(from + chunk).min(bytes.len())];
            *sent += piece.len() as u64;
            staging.write_chunk(meta, from as u64, piece, crc32c::crc32c(piece))?;
        }
    }

    #[test]
    fn a_transfer_stopped_at_any_step_resumes_and_finishes_whole() {
        let steps = [
            Step::Open,
            Step::Write,
            Step::Sync,
            Step::Verify,
            Step::Rename,
            Step::SyncDir,
        ];
        const CHUNK: usize = 1000;
        for step in steps {
            for stopped_chunk in [0, 3, 9] {
                let dir = tempfile::tempdir().unwrap();
                let (bytes, meta) = file(9 * CHUNK + 123, 1);
                let mut staging = Staging::open(dir.path()).unwrap();
                let mut sent = 0;
                // Whole chunks, then a stop at `step` in chunk
                // `stopped_chunk` (the last chunk reaches every step).
                for _ in 0..stopped_chunk {
                    let from = staging.staged(&meta) as usize;
                    let piece = &bytes[from..from + CHUNK];
                    sent += CHUNK as u64;
                    staging
                        .write_chunk(&meta, from as u64, piece, crc32c::crc32c(piece))
                        .unwrap();
                }
                staging.stop_at(Some(step));
                match send(&staging, &meta, &bytes, CHUNK, &mut sent) {
                    Err(StagingError::Stopped(s)) => assert_eq!(s, step),
                    other => {
                        // Steps of finishing are reached only by the last chunk.
                        assert!(
                            matches!(step, Step::Verify | Step::Rename | Step::SyncDir)
                                && stopped_chunk < 9,
                            "{step:?} at chunk {stopped_chunk}: {other:?}"
                        );
                    }
                }
                // The process "restarts": a new staging area on the same files.
                let staging = Staging::open(dir.path()).unwrap();
                let resumed_from = staging.resume(&meta).unwrap();
                send(&staging, &meta, &bytes, CHUNK, &mut sent).unwrap();
                let done = staging.complete(&meta).expect("complete");
                assert_eq!(fs::read(done).unwrap(), bytes, "{step:?}");
                // At most one chunk is sent twice per interruption.
                assert!(
                    sent <= bytes.len() as u64 + CHUNK as u64,
                    "{step:?}: {sent} sent, resumed from {resumed_from}"
                );
            }
        }
    }

    #[test]
    fn bad_chunks_and_bad_files_are_refused_and_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let (bytes, meta) = file(2500, 2);
        // A chunk damaged in transit.
        let mut damaged = bytes[..1000].to_vec();
        damaged[17] ^= 1;
        let crc = crc32c::crc32c(&bytes[..1000]);
        assert!(matches!(
            staging.write_chunk(&meta, 0, &damaged, crc),
            Err(StagingError::BadChunk { offset: 0, .. })
        ));
        assert_eq!(staging.staged(&meta), 0, "nothing of it staged");
        // Out of place, or too long.
        assert!(matches!(
            staging.write_chunk(
                &meta,
                1000,
                &bytes[1000..2000],
                crc32c::crc32c(&bytes[1000..2000])
            ),
            Err(StagingError::Offset { staged: 0, .. })
        ));
        let long = vec![0u8; 2501];
        assert!(matches!(
            staging.write_chunk(&meta, 0, &long, crc32c::crc32c(&long)),
            Err(StagingError::TooLong { .. })
        ));
        // A whole file whose bytes differ from the manifest's: discarded,
        // never named complete, and sent again from the start.
        let mut wrong = bytes.clone();
        wrong[2400] ^= 0xff;
        let mut sent = 0;
        assert!(matches!(
            send(&staging, &meta, &wrong, 1000, &mut sent),
            Err(StagingError::BadFile { .. })
        ));
        assert!(staging.complete(&meta).is_none());
        assert_eq!(staging.staged(&meta), 0);
        send(&staging, &meta, &bytes, 1000, &mut sent).unwrap();
        assert_eq!(fs::read(staging.complete(&meta).unwrap()).unwrap(), bytes);
        // A chunk of a complete file is acknowledged again.
        assert_eq!(
            staging
                .write_chunk(&meta, 0, &bytes[..1000], crc32c::crc32c(&bytes[..1000]))
                .unwrap(),
            2500
        );
        // A torn write beyond what was acknowledged is cut off.
        let (other, other_meta) = file(3000, 3);
        let staging = Staging::open(dir.path()).unwrap();
        staging
            .write_chunk(
                &other_meta,
                0,
                &other[..1000],
                crc32c::crc32c(&other[..1000]),
            )
            .unwrap();
        let part = dir.path().join(format!(
            "{:020}-{:08x}.part",
            other_meta.first_seq, other_meta.sst_crc32c
        ));
        let mut f = OpenOptions::new().append(true).open(&part).unwrap();
        f.write_all(&[0xaa; 10]).unwrap();
        // The leader resumes from what is there (1010): the garbage makes
        // the whole file fail its check, and it is sent again whole.
        let mut sent = 0;
        let first = send(&staging, &other_meta, &other, 1000, &mut sent);
        assert!(
            matches!(first, Err(StagingError::BadFile { .. })),
            "{first:?}"
        );
        send(&staging, &other_meta, &other, 1000, &mut sent).unwrap();
        assert_eq!(
            fs::read(staging.complete(&other_meta).unwrap()).unwrap(),
            other
        );
        // Files of other snapshots go.
        staging.retain(std::slice::from_ref(&other_meta)).unwrap();
        assert!(staging.complete(&meta).is_none());
        assert!(staging.complete(&other_meta).is_some());
    }
}
