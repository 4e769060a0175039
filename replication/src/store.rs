//! openraft's storage over the lode engine: the WAL is the Raft log, the
//! engine's apply is the state machine.
//!
//! [`LogStore`] maps openraft's log calls onto the engine's replicated-log
//! operations; the vote, the committed log id, the purged log id and the
//! last snapshot's metadata live in the engine's state file, replaced
//! atomically on the writer thread, so they are ordered with appends.
//! Entries handed to `append` stay readable from memory until the engine
//! reports them durable (openraft reads them at once, to replicate them
//! while the fsync runs). [`StateMachine`] applies committed entries: that
//! makes their records readable and gives them their seqs.
//!
//! Must never decide anything of consensus: which entry is committed, when
//! to cut, and who leads are openraft's.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::{Stream, StreamExt};
use lode_engine::{EncodedBatch, Engine, FrameKind, LogEntry, SeqRange, SnapshotInstall};
use openraft::entry::RaftEntry;
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    RaftStateMachine, Snapshot, SnapshotMeta,
};
use openraft::{EntryPayload, OptionalSend};

use crate::keys::Keys;
pub use lode_replication_wire::wire::SegmentList;
use lode_replication_wire::wire::{self, SnapshotDescription, SnapshotState};

use crate::snapshot::Transfers;
use lode_replication_wire::{
    Applied, Batch, Entry, LogId, NodeId, StoredMembership, TypeConfig, Vote,
};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// What log and state machine share: the engine and the state file's
/// contents (kept in memory, written through on every change).
#[derive(Debug)]
struct Shared {
    engine: Arc<Engine>,
    state: Mutex<wire::LogState>,
    /// Entries appended but not yet reported durable, by index.
    pending: Unflushed,
    /// Where each recent batch key is in the log.
    keys: Arc<Keys>,
    /// How long appends take to be durable (write and fsync).
    append_latency: Arc<crate::latency::Latency>,
    /// Where installed snapshots' files are staged.
    transfers: Arc<Transfers>,
}

/// Entries a node handed to its log and has not yet seen durable, by
/// index.
pub(crate) type Unflushed = Arc<Mutex<BTreeMap<u64, Entry>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Changes the state file's contents and writes them, ordered after
    /// every append asked for before.
    async fn update(&self, change: impl FnOnce(&mut wire::LogState)) -> io::Result<()> {
        let bytes = {
            let mut state = lock(&self.state);
            change(&mut state);
            wire::encode_state(&state)
        };
        let engine = Arc::clone(&self.engine);
        blocking(move || engine.save_log_state(bytes)).await
    }
}

/// Runs blocking engine work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> lode_engine::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io_err)?
        .map_err(io_err)
}

/// Opens openraft's storage over a replicated engine (one opened with
/// `Options::replicated`) for node `node_id`: the log and the state
/// machine, which share it.
///
/// A node that led when it stopped does not lead again in the same term:
/// its committed vote for itself becomes an uncommitted one (same term,
/// same choice, so it still cannot vote for another in that term). A
/// leader replicates entries before its own fsync of them ends; killed
/// then, it comes back without them, and openraft, seeing its committed
/// vote, would resume leading the term and write other entries at those
/// indexes, under the same log ids its followers already hold. Made to
/// win a later term, it can only be elected by holding every committed
/// entry, and what it writes carries a new term.
pub fn open(engine: Arc<Engine>, node_id: NodeId) -> io::Result<(LogStore, StateMachine)> {
    let transfers =
        Transfers::open(Arc::clone(&engine), None, crate::snapshot::CHUNK_BYTES).map_err(io_err)?;
    open_with(engine, node_id, Arc::new(transfers))
}

/// [`open`], with the node's snapshot transfers (where installed
/// snapshots' files are staged).
pub(crate) fn open_with(
    engine: Arc<Engine>,
    node_id: NodeId,
    transfers: Arc<Transfers>,
) -> io::Result<(LogStore, StateMachine)> {
    let state = match engine.log_state().map_err(io_err)? {
        Some(bytes) => wire::decode_state(&bytes).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("raft-state file: {e}"))
        })?,
        None => wire::LogState::default(),
    };
    let mut state = state;
    if let Some(vote) = state.vote
        && vote.committed
        && vote.leader_id.voted_for == node_id
    {
        state.vote = Some(Vote::new(vote.leader_id.term, node_id));
        engine
            .save_log_state(wire::encode_state(&state))
            .map_err(io_err)?;
    }
    let keys = Arc::new(Keys::new(engine_window(&engine)));
    let shared = Arc::new(Shared {
        engine,
        state: Mutex::new(state),
        pending: Unflushed::default(),
        keys,
        append_latency: Arc::default(),
        transfers,
    });
    let (applied, membership) = recovered_applied_state(&shared)?;
    recover_keys(&shared, applied.map(|a| a.index))?;
    let sm = StateMachine {
        shared: Arc::clone(&shared),
        applied,
        membership,
    };
    Ok((LogStore { shared }, sm))
}

/// The state machine's applied state after a restart: the engine keeps the
/// records of sealed entries readable, so the newest sealed entry (or the
/// last snapshot, if later) is applied; openraft applies the rest again.
/// The membership is the newest membership entry at or below it, else the
/// snapshot's.
fn recovered_applied_state(shared: &Shared) -> io::Result<(Option<LogId>, StoredMembership)> {
    let snapshot = stored_snapshot(&shared.engine)?.map(|d| d.state);
    let engine = &shared.engine;
    let sealed = match engine.applied_index() {
        Some(index) => engine
            .read_entries(index..=index)
            .map_err(io_err)?
            .first()
            .map(|e| wire::log_id(e.term, e.index)),
        None => None,
    };
    let from_snapshot = snapshot.as_ref().and_then(|s| s.last_log_id);
    let applied = sealed.max(from_snapshot);
    if let Some(applied) = applied {
        // Records below a snapshot's last entry are readable at once.
        let _ = engine.apply(applied.index);
    }
    let in_log = match applied {
        Some(applied) => engine
            .last_entry_of_kind(FrameKind::Membership, applied.index)
            .map_err(io_err)?,
        None => None,
    };
    let snapshot_is_newer = |entry: &LogEntry| {
        snapshot
            .as_ref()
            .is_some_and(|s| s.membership_log_id.is_some_and(|m| m.index > entry.index))
    };
    let membership = match in_log {
        Some(entry) if !snapshot_is_newer(&entry) => {
            let m = wire::decode_membership(entry.frame.payload()).map_err(io_err)?;
            StoredMembership::new(Some(wire::log_id(entry.term, entry.index)), m)
        }
        _ => match snapshot {
            Some(s) => StoredMembership::new(s.membership_log_id, s.membership),
            None => StoredMembership::default(),
        },
    };
    Ok((applied, membership))
}

/// Fills the key table: the keyed batches the engine remembers with its
/// sealed segments (or received with a snapshot) are applied with their
/// seqs; those of the log's entries after `applied` are logged (openraft
/// applies them again). Entries at or below `applied` still in the log
/// are not read: after a snapshot install they may be a deposed
/// leader's, not the ones the snapshot holds.
fn recover_keys(shared: &Shared, applied: Option<u64>) -> io::Result<()> {
    let sealed = shared.engine.sealed_keys(applied).map_err(io_err)?;
    shared
        .keys
        .applied(sealed.iter().map(|k| (k.index, k.key, k.seqs)));
    let after = applied.map_or(0, |a| a + 1);
    let logged = shared.engine.batch_keys(after..).map_err(io_err)?;
    shared.keys.logged(logged.iter().map(|k| (k.index, k.key)));
    Ok(())
}

fn engine_window(engine: &Engine) -> usize {
    engine.key_window().count
}

/// An entry as openraft sees it, from the engine's stored form.
fn to_entry(stored: LogEntry) -> io::Result<Entry> {
    let log_id = wire::log_id(stored.term, stored.index);
    let payload = match stored.kind() {
        FrameKind::Batch | FrameKind::KeyedBatch | FrameKind::Retain | FrameKind::Setting => {
            EntryPayload::Normal(Batch::new(stored.frame))
        }
        FrameKind::Membership => EntryPayload::Membership(
            wire::decode_membership(stored.frame.payload()).map_err(io_err)?,
        ),
        _ => EntryPayload::Blank,
    };
    Ok(Entry::new(log_id, payload))
}

/// The engine's frame for an entry: a batch's own bytes (shared, not
/// copied), or the kind's.
fn to_frame(entry: &Entry) -> io::Result<Arc<EncodedBatch>> {
    match &entry.payload {
        EntryPayload::Normal(batch) => Ok(Arc::clone(&batch.0)),
        EntryPayload::Blank => EncodedBatch::without_records(FrameKind::Blank, b"")
            .map(Arc::new)
            .map_err(io_err),
        EntryPayload::Membership(m) => {
            EncodedBatch::without_records(FrameKind::Membership, &wire::encode_membership(m))
                .map(Arc::new)
                .map_err(io_err)
        }
    }
}

/// openraft's log storage over the engine's WAL. Cheap to clone: the
/// clones share the engine.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// The key table this log keeps.
    pub(crate) fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.shared.keys)
    }

    /// The entries this log holds that are not yet durable.
    pub(crate) fn unflushed(&self) -> Unflushed {
        Arc::clone(&self.shared.pending)
    }

    /// How long this log's appends take to be durable.
    pub(crate) fn append_latency(&self) -> Arc<crate::latency::Latency> {
        Arc::clone(&self.shared.append_latency)
    }

    /// Entries in `range` above the purged point: the durable ones from
    /// the engine, the rest from those still in flight.
    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> io::Result<Vec<Entry>> {
        let purged = lock(&self.shared.state).purged.map(|p| p.index);
        let kept = |index: u64| purged.is_none_or(|p| index > p);
        let pending: Vec<Entry> = lock(&self.shared.pending)
            .range(range)
            .map(|(_, e)| e.clone())
            .collect();
        let stored = self.shared.engine.read_entries(range).map_err(io_err)?;
        let mut out = Vec::with_capacity(stored.len() + pending.len());
        for entry in stored.into_iter().filter(|e| kept(e.index)) {
            out.push(to_entry(entry)?);
        }
        let next = out.last().map(|e| e.index() + 1);
        out.extend(
            pending
                .into_iter()
                .filter(|e| kept(e.index()) && next.is_none_or(|n| e.index() >= n)),
        );
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.entries(range))
            .await
            .map_err(io_err)?
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(lock(&self.shared.state).vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let purged = lock(&self.shared.state).purged;
        let in_flight = lock(&self.shared.pending)
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let on_disk = self
            .shared
            .engine
            .log_bounds()
            .map_err(io_err)?
            .map(|b| wire::log_id(b.last.0, b.last.1));
        let last = in_flight
            .max(on_disk)
            .filter(|l| purged.is_none_or(|p| l.index > p.index));
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let vote = *vote;
        self.shared.update(|s| s.vote = Some(vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.shared.update(|s| s.committed = committed).await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(lock(&self.shared.state).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut frames = Vec::with_capacity(entries.len());
        for entry in &entries {
            frames.push((entry.log_id.leader_id.term, entry.index(), to_frame(entry)?));
        }
        let ids: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
        self.shared
            .keys
            .logged(entries.iter().filter_map(|e| match &e.payload {
                EntryPayload::Normal(batch) => batch.0.key().map(|k| (e.index(), k)),
                _ => None,
            }));
        {
            let mut pending = lock(&self.shared.pending);
            for entry in entries {
                pending.insert(entry.index(), entry);
            }
        }
        // The callback runs on the engine's writer thread: it holds no
        // handle of the engine, so the engine is never dropped there.
        let (pending, latency) = (self.unflushed(), Arc::clone(&self.shared.append_latency));
        let started = std::time::Instant::now();
        let done = move |outcome: lode_engine::Result<()>| {
            latency.observe(started.elapsed());
            let mut pending = lock(&pending);
            for id in &ids {
                if pending.get(&id.index).is_some_and(|e| e.log_id == *id) {
                    pending.remove(&id.index);
                }
            }
            drop(pending);
            callback.io_completed(outcome.map_err(io_err));
        };
        self.shared
            .engine
            .append_entries(frames, done)
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let committed = lock(&self.shared.state).committed;
        if let Some(committed) = committed
            && last_log_id.is_none_or(|l| l.index < committed.index)
        {
            return Err(io_err(format!(
                "refusing to cut the log after {last_log_id:?}: {committed} is committed"
            )));
        }
        let after = last_log_id.map(|l| l.index);
        lock(&self.shared.pending).retain(|&index, _| after.is_some_and(|a| index <= a));
        self.shared.keys.cut_after(after);
        let engine = Arc::clone(&self.shared.engine);
        blocking(move || engine.truncate_after(after)).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.shared
            .update(|s| s.purged = s.purged.max(Some(log_id)))
            .await?;
        lock(&self.shared.pending).retain(|&index, _| index > log_id.index);
        let engine = Arc::clone(&self.shared.engine);
        blocking(move || engine.purge(log_id.index)).await
    }
}

/// The last snapshot this node built or installed, as its engine keeps it.
fn stored_snapshot(engine: &Engine) -> io::Result<Option<SnapshotDescription>> {
    match engine.snapshot().map_err(io_err)? {
        Some((_, bytes)) => wire::decode_description(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {e}"))),
        None => Ok(None),
    }
}

/// The snapshot data of a description: the segments this node holds
/// through its last entry (retention may have dropped some since).
fn segment_list(engine: &Engine, d: &SnapshotDescription) -> io::Result<SegmentList> {
    let through = d.state.last_log_id.map(|l| l.index);
    // What this node remembers now of the keyed batches through the
    // snapshot (the newest within its window).
    let keys = match through {
        Some(through) => engine.sealed_keys(Some(through)).map_err(io_err)?,
        None => Vec::new(),
    };
    Ok(SegmentList {
        segments: engine
            .segments()
            .into_iter()
            .filter(|s| through.is_some_and(|t| s.last_index <= t))
            .collect(),
        floor: d.floor.max(engine.first_seq()),
        end_seq: d.end_seq,
        settings: d.settings.clone(),
        keys,
    })
}

fn snapshot_of(engine: &Engine, d: &SnapshotDescription) -> io::Result<LodeSnapshot> {
    Ok(Snapshot {
        meta: SnapshotMeta {
            last_log_id: d.state.last_log_id,
            last_membership: StoredMembership::new(
                d.state.membership_log_id,
                d.state.membership.clone(),
            ),
        },
        snapshot: segment_list(engine, d)?,
    })
}

/// openraft's state machine over the engine: applying an entry makes its
/// records readable and answers their seqs.
#[derive(Debug)]
pub struct StateMachine {
    shared: Arc<Shared>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// Where a snapshot can be taken now: through the last sealed segment's
/// last entry, whose records and every earlier entry's are in segments;
/// with no segment and no readable record, through the applied entry.
/// `None` when that is not past the last snapshot.
fn snapshot_point(
    shared: &Shared,
    applied: Option<LogId>,
    membership: &StoredMembership,
) -> io::Result<Option<SnapshotDescription>> {
    let engine = &shared.engine;
    let previous = stored_snapshot(engine)?;
    let (last, end_seq) = match engine.segments().last() {
        Some(segment) => {
            let at = segment.last_index;
            let Some(entry) = engine.read_entries(at..=at).map_err(io_err)?.pop() else {
                // Purged: a snapshot covers it already.
                return Ok(None);
            };
            (wire::log_id(entry.term, entry.index), segment.last_seq + 1)
        }
        None if engine.next_seq() == engine.first_seq() => match applied {
            Some(applied) => (applied, engine.next_seq()),
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let previous_last = previous.as_ref().and_then(|p| p.state.last_log_id);
    if previous_last.is_some_and(|p| p >= last) {
        return Ok(None);
    }
    let (membership_log_id, membership) = match membership.log_id() {
        Some(id) if id.index <= last.index => (Some(*id), membership.membership().clone()),
        _ => match engine
            .last_entry_of_kind(FrameKind::Membership, last.index)
            .map_err(io_err)?
        {
            Some(entry) => (
                Some(wire::log_id(entry.term, entry.index)),
                wire::decode_membership(entry.frame.payload()).map_err(io_err)?,
            ),
            None => match previous {
                Some(p) => (p.state.membership_log_id, p.state.membership),
                None => (None, openraft::Membership::default()),
            },
        },
    };
    Ok(Some(SnapshotDescription {
        state: SnapshotState {
            last_log_id: Some(last),
            membership_log_id,
            membership,
        },
        floor: engine.first_seq(),
        end_seq,
        settings: Some((*engine.settings()).clone()),
    }))
}

/// Builds snapshots of a [`StateMachine`]: at its last seal, as of the
/// moment it was asked for.
#[derive(Debug)]
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

type LodeSnapshot = Snapshot<
    openraft::alias::CommittedLeaderIdOf<TypeConfig>,
    lode_replication_wire::NodeId,
    lode_replication_wire::Node,
    SegmentList,
>;

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SegmentList;

    /// Costs no copy: the description (last log id, membership, floor,
    /// next seq) is saved beside the manifest, whose segments are the
    /// data.
    async fn build_snapshot(&mut self) -> io::Result<LodeSnapshot> {
        let shared = Arc::clone(&self.shared);
        let (applied, membership) = (self.applied, self.membership.clone());
        tokio::task::spawn_blocking(move || {
            let point = snapshot_point(&shared, applied, &membership)?;
            let description = match point {
                Some(d) => {
                    let index = d.state.last_log_id.map_or(0, |l| l.index);
                    shared
                        .engine
                        .save_snapshot(index, wire::encode_description(&d))
                        .map_err(io_err)?;
                    d
                }
                None => match stored_snapshot(&shared.engine)? {
                    Some(d) => d,
                    // Nothing applied yet holds records: the state is
                    // the membership alone.
                    None if shared.engine.segments().is_empty()
                        && shared.engine.next_seq() == shared.engine.first_seq() =>
                    {
                        SnapshotDescription {
                            state: SnapshotState {
                                last_log_id: applied,
                                membership_log_id: *membership.log_id(),
                                membership: membership.membership().clone(),
                            },
                            floor: shared.engine.first_seq(),
                            end_seq: shared.engine.next_seq(),
                            settings: Some((*shared.engine.settings()).clone()),
                        }
                    }
                    None => return Err(io_err("nothing to snapshot yet: no segment is sealed")),
                },
            };
            snapshot_of(&shared.engine, &description)
        })
        .await
        .map_err(io_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SegmentList;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        let Some(last) = batch.last().map(|(e, _)| e.log_id) else {
            return Ok(());
        };
        let engine = Arc::clone(&self.shared.engine);
        let has_records = batch.iter().any(
            |(e, _)| matches!(&e.payload, EntryPayload::Normal(b) if b.0.kind().holds_records()),
        );
        // Retention decisions are carried out once the entries up to
        // them are applied: every node drops the same records.
        let floor = batch
            .iter()
            .filter_map(|(e, _)| match &e.payload {
                EntryPayload::Normal(b) => b.0.retain_floor(),
                _ => None,
            })
            .max();
        let applied = match blocking(move || engine.apply(last.index)).await {
            Ok(applied) => applied,
            // Entries without records change nothing in the engine; the
            // log may not hold them when the state machine is driven on
            // its own (openraft's storage suite does so).
            Err(_) if !has_records => Vec::new(),
            Err(e) => return Err(e),
        };
        if let Some(floor) = floor {
            let engine = Arc::clone(&self.shared.engine);
            blocking(move || engine.drop_below(floor)).await?;
        }
        // Settings are made in log order on every node (applied again
        // after a restart: setting a value twice changes nothing).
        let settings: Vec<(String, Option<Vec<u8>>)> = batch
            .iter()
            .filter_map(|(e, _)| match &e.payload {
                EntryPayload::Normal(b) if b.0.kind() == FrameKind::Setting => {
                    match wire::decode_setting(b.0.payload()) {
                        Ok(setting) => Some(setting),
                        Err(err) => {
                            tracing::warn!(index = e.log_id.index, error = %err, "a setting entry that does not read");
                            None
                        }
                    }
                }
                _ => None,
            })
            .collect();
        if !settings.is_empty() {
            let engine = Arc::clone(&self.shared.engine);
            blocking(move || {
                for (name, value) in settings {
                    engine.put_setting(&name, value.as_deref())?;
                }
                Ok(())
            })
            .await?;
        }
        let seqs: BTreeMap<u64, SeqRange> = applied.into_iter().collect();
        self.shared
            .keys
            .applied(batch.iter().filter_map(|(entry, _)| match &entry.payload {
                EntryPayload::Normal(b) => {
                    let key = b.0.key()?;
                    Some((entry.index(), key, *seqs.get(&entry.index())?))
                }
                _ => None,
            }));
        for (entry, responder) in batch {
            if let Some(m) = entry.get_membership() {
                self.membership = StoredMembership::new(Some(entry.log_id), m);
            }
            if let Some(responder) = responder {
                let seqs = seqs
                    .get(&entry.index())
                    .copied()
                    .unwrap_or(SeqRange { start: 0, end: 0 });
                responder.send(Applied {
                    start: seqs.start,
                    end: seqs.end,
                });
            }
        }
        self.applied = Some(last);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    /// Unforced, a snapshot is built only when a segment was sealed
    /// since the last one.
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<SnapshotBuilder> {
        let builder = self.get_snapshot_builder().await;
        if force {
            return Some(builder);
        }
        match snapshot_point(&self.shared, self.applied, &self.membership) {
            Ok(Some(_)) => Some(builder),
            _ => None,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<
            openraft::alias::CommittedLeaderIdOf<TypeConfig>,
            lode_replication_wire::NodeId,
            lode_replication_wire::Node,
        >,
        snapshot: SegmentList,
    ) -> io::Result<()> {
        // The segments it lacks were staged (and checked) by the
        // transfer; the engine swaps them in with the manifest, the
        // description and the applied index in one synced write.
        let resolved = self.shared.transfers.resolve(&snapshot).map_err(io_err)?;
        let description = SnapshotDescription {
            state: SnapshotState {
                last_log_id: meta.last_log_id,
                membership_log_id: *meta.last_membership.log_id(),
                membership: meta.last_membership.membership().clone(),
            },
            floor: snapshot.floor,
            end_seq: snapshot.end_seq,
            settings: snapshot.settings.clone(),
        };
        let through = meta
            .last_log_id
            .ok_or_else(|| io_err("a snapshot without a last log id"))?
            .index;
        let install = SnapshotInstall {
            segments: resolved.segments,
            files: resolved.files,
            floor: snapshot.floor,
            through,
            end_seq: snapshot.end_seq,
            description: wire::encode_description(&description),
            settings: snapshot.settings,
            keys: snapshot.keys.clone(),
        };
        let engine = Arc::clone(&self.shared.engine);
        blocking(move || engine.install_snapshot(install)).await?;
        self.shared.keys.installed(
            through,
            snapshot.keys.iter().map(|k| (k.index, k.key, k.seqs)),
        );
        self.shared.transfers.installed();
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<LodeSnapshot>> {
        let engine = Arc::clone(&self.shared.engine);
        tokio::task::spawn_blocking(move || {
            stored_snapshot(&engine)?
                .map(|d| snapshot_of(&engine, &d))
                .transpose()
        })
        .await
        .map_err(io_err)?
    }
}
