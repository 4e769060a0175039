//! Engine options with defaults that work out of the box.

use std::time::Duration;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged after `fdatasync`: concurrent appends share one write
    /// and one sync (group commit). Survives power loss.
    Sync,
    /// Acknowledged after `write`; synced at most `window` later. Survives
    /// a process crash; a power loss may lose up to `window` of appends.
    Buffered { window: Duration },
}

/// What recovery does with a frame that fails its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Cut a torn tail of the newest WAL file; refuse to open (a `Corrupt`
    /// error) when valid frames follow the bad one, since those may have
    /// been acknowledged.
    TolerateTornTail,
    /// Cut at the first bad frame of the newest WAL file, whatever follows:
    /// the operator's choice after a `Corrupt` error.
    PointInTime,
}

/// Retention: sealed segments beyond these bounds are dropped whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Drop a segment once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// Drop the oldest segments while sealed bytes exceed this.
    pub max_bytes: Option<u64>,
}

/// How many keyed batches of sealed segments the log remembers, so that a
/// retry of one is answered with its first seqs (on any node, after any
/// restart or snapshot): the newest `count`, sealed at most `max_age` ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyWindow {
    pub count: usize,
    pub max_age: Duration,
}

impl Default for KeyWindow {
    fn default() -> Self {
        KeyWindow {
            count: 1 << 18,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Options of [`crate::Engine::open`].
#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    /// The active segment is sealed once its WAL file reaches this size.
    pub segment_bytes: u64,
    /// ... or once it is this old and holds at least one record (not in a
    /// replicated log, whose files end by size alone, at the same entries
    /// on every node).
    pub segment_age: Duration,
    pub retention: Retention,
    /// Largest encoded batch (whole frame) `append` accepts. A replicated
    /// log's entries are checked against it by the proposer, not by
    /// `append_entries`.
    pub max_batch_bytes: usize,
    /// Most bytes the writer puts in one group commit.
    pub max_group_bytes: usize,
    pub recovery: RecoveryMode,
    /// How often the background thread checks retention and segment age.
    pub tick: Duration,
    /// zstd level of sealed segments (1: sealing keeps up with appends on
    /// two cores; higher levels save a few percent of disk for much CPU).
    pub zstd_level: i32,
    /// Block size of sealed segments: larger compresses better, smaller
    /// makes point reads of sealed records cheaper.
    pub sealed_block_bytes: usize,
    /// Memory for decompressed blocks of sealed segments (RocksDB's block
    /// cache). With RocksDB's default of 32 MiB, a page of 100 records
    /// spread over old segments did not fit (100 blocks of 512 KiB) and
    /// every read of it decompressed them all again.
    pub block_cache_bytes: usize,
    /// Seal finished WAL segments in the background (the default); when
    /// false they are sealed only by [`crate::Engine::seal`], as a bulk
    /// loader that seals at its own checkpoints wants.
    pub background_sealing: bool,
    /// Scheduling priority of the sealing thread (see [`Background`]).
    pub background: Background,
    /// The log is a replicated (Raft) log: entries arrive with their term
    /// and index from the consensus layer ([`crate::Engine::append_entries`]),
    /// an uncommitted suffix can be cut ([`crate::Engine::truncate_after`]),
    /// and records become readable only once their entry is applied
    /// ([`crate::Engine::apply`]). Sealed WAL files are kept for the log
    /// until [`crate::Engine::purge`]. Off: the embedded engine, whose
    /// appends are readable once durable.
    pub replicated: bool,
    /// Which keyed batches of sealed segments are remembered.
    pub keys: KeyWindow,
    /// Writes are refused while the data directory's disk has fewer free
    /// bytes than this ([`crate::Error::NoSpace`]); `None`: the smaller of
    /// 1 GiB and 5% of the disk; `Some(0)`: only a full disk refuses.
    pub free_space_floor: Option<u64>,
}

/// How background threads (sealing, indexing, index merges) share the CPU
/// with the threads that acknowledge appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Background {
    /// Linux `SCHED_IDLE` (the default): background threads run on CPU
    /// time no other thread wants and give it up at once when an append's
    /// thread wakes. Under ingest that keeps every CPU busy they lag
    /// (`unsealed_records`, index `lag` grow) until the load drops.
    #[default]
    Idle,
    /// Nice value N (1..=19): background threads keep a share of a busy
    /// CPU (at 10, about a tenth against one normal thread), but a woken
    /// append thread may wait for one of them to finish its time slice
    /// (measured at nice 10: 15-30% less ingest than idle, embedded and
    /// over TCP alike).
    Nice(i32),
    /// The priority of the thread that opened the engine.
    Normal,
}

impl std::str::FromStr for Background {
    type Err = String;

    /// `idle`, `normal` or `nice:N` (N in 1..=19).
    fn from_str(text: &str) -> std::result::Result<Background, String> {
        match text {
            "idle" => Ok(Background::Idle),
            "normal" => Ok(Background::Normal),
            _ => text
                .strip_prefix("nice:")
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=19).contains(n))
                .map(Background::Nice)
                .ok_or_else(|| {
                    format!("'{text}': expected 'idle', 'normal' or 'nice:N' with N in 1..=19")
                }),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(15 * 60),
            retention: Retention::default(),
            max_batch_bytes: 64 << 20,
            max_group_bytes: 16 << 20,
            recovery: RecoveryMode::TolerateTornTail,
            tick: Duration::from_secs(1),
            zstd_level: 1,
            sealed_block_bytes: 512 << 10,
            block_cache_bytes: 256 << 20,
            background_sealing: true,
            background: Background::Idle,
            replicated: false,
            keys: KeyWindow::default(),
            free_space_floor: None,
        }
    }
}
