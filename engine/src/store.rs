//! RocksDB: sealed segments and the manifest.
//!
//! Column families:
//! - `records`: key = seq (u64 big-endian, so keys sort by seq), value = a
//!   chunk of records in columns under its first seq (`lode_codec::Chunk`),
//!   an empty value marking a segment's last seq, or, in segments sealed
//!   by older versions, one record's tenant and rkyv encoding. Filled only
//!   by ingesting whole SST files, one per sealed segment; nothing goes
//!   through the memtable, so RocksDB's own WAL never carries a record.
//! - `meta`: `applied` (u64 LE: last WAL index whose records are sealed),
//!   `floor` (u64 LE: first seq retention keeps), `seg/` + first seq (u64
//!   BE) → [`SegmentMeta`], `set/` + name → a setting's bytes (opaque to
//!   the engine: a server's tokens), `key/` + log index (u64 BE) → a
//!   [`KeyedEntry`] (where a keyed batch of a sealed segment landed, the
//!   newest of them within the [`crate::KeyWindow`]). These few small
//!   writes go through RocksDB's WAL, synced, which is what makes a seal
//!   or a drop durable and atomic.
//!
//! Owns every RocksDB call of the engine; knows nothing of WAL files.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use lode_codec::{Chunk, ChunkReader, KeyedEntry, Layout, access_sealed_value};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    IngestExternalFileOptions, LruCacheOptions, Options as RocksOptions, SstFileWriter, WriteBatch,
    WriteOptions,
};

use crate::error::{Error, Result};
use crate::read::Visitor;
use lode_codec::SegmentMeta;

const CF_RECORDS: &str = "records";
const CF_META: &str = "meta";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_FLOOR: &[u8] = b"floor";
/// A replicated log's last snapshot, as the consensus layer described it:
/// its last index (u64 LE), then its bytes.
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const SEGMENT_PREFIX: &[u8] = b"seg/";
/// Settings: key `set/` + the setting's name, value its bytes.
const SETTING_PREFIX: &[u8] = b"set/";
/// One past every setting key (`/` + 1 is `0`).
const SETTING_END: &[u8] = b"set0";
/// Remembered keyed batches: key `key/` + the entry's log index (u64 BE).
const KEYED_PREFIX: &[u8] = b"key/";
/// One past every keyed-batch key.
const KEYED_END: &[u8] = b"key0";
/// Keys between full keys in a block of `records` (of one value per
/// record; a block of chunks holds about one key): a seek within a block
/// binary-searches the full keys, then decodes keys one by one from there,
/// half this many on average.
const RESTART_INTERVAL: u64 = 128;
/// In a segment of one value per record, a wanted seq at most this far
/// past the iterator's key is reached by stepping rather than by seeking (a binary search, then
/// `RESTART_INTERVAL / 2` keys decoded on average). A step goes through
/// RocksDB's whole iterator stack and costs several in-block key decodes:
/// a phrase's page at 1M records, whose candidates lie about 25 records
/// apart, took 0.97–1.60 ms with a limit of 64 and 0.73–0.75 with 16
/// (`index-pages`, see ARCHITECTURE).
const STEP_LIMIT: u64 = 16;
/// Values looked at, from the greatest key at or below a seq down, for a
/// chunk that holds it: a segment's end marker or an older file's chunk
/// may come first (see `seek_holder`).
const HOLDER_STEPS: usize = 4;

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn segment_key(first_seq: u64) -> Vec<u8> {
    let mut key = SEGMENT_PREFIX.to_vec();
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

fn keyed_key(index: u64) -> Vec<u8> {
    let mut key = KEYED_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Named values the engine keeps for its user (a server's tokens), by
/// name.
pub type Settings = std::collections::BTreeMap<String, Vec<u8>>;

fn setting_key(name: &str) -> Vec<u8> {
    let mut key = SETTING_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// What the manifest says at open.
#[derive(Debug, Default)]
pub(crate) struct Manifest {
    pub(crate) segments: Vec<SegmentMeta>,
    /// Last WAL index whose records are sealed, once one is.
    pub(crate) applied: Option<u64>,
    pub(crate) floor: u64,
}

pub(crate) struct Store {
    db: DB,
    path: PathBuf,
    records_options: RocksOptions,
    /// Seq ranges (inclusive) of segments sealed by older versions, one
    /// value per record, and their layouts; usually none. Every other
    /// sealed record is in a chunk.
    archives: std::sync::RwLock<std::sync::Arc<Archives>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Options of the `records` family, shared by the family and the SST
/// writer so that ingested files match it exactly.
fn records_options(zstd_level: i32, block_bytes: usize, cache: Option<&Cache>) -> RocksOptions {
    let mut opts = RocksOptions::default();
    let mut table = BlockBasedOptions::default();
    if let Some(cache) = cache {
        table.set_block_cache(cache);
    }
    // Large blocks give zstd the context that log text needs (measured with
    // `engine-append` when values were single records: 64 KiB blocks 55
    // bytes/record, 512 KiB 44; chunks of columns cut at the block size:
    // 32.5). Sealed records are read mostly by scans; a point read
    // decompresses a block.
    table.set_block_size(block_bytes);
    // Fewer full keys and restart offsets: seq keys delta-encode to a byte.
    table.set_block_restart_interval(RESTART_INTERVAL as i32);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Zstd);
    opts.set_compression_options(-14, zstd_level, 0, 0);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    opts.set_bottommost_compression_options(-14, zstd_level, 0, 0, true);
    // Sealed segments arrive as non-overlapping files at the bottom level
    // and are dropped whole: there is never anything to compact.
    opts.set_disable_auto_compactions(true);
    opts
}

/// Blocks each shard of the block cache has room for, about (a block is
/// a little over `sealed_block_bytes`: a chunk is cut once it reaches it).
const BLOCKS_PER_SHARD: usize = 64;

/// The cache of decompressed blocks of sealed records, for point reads: a
/// page of records spread over old segments reads a block each. RocksDB
/// shards a cache by key hash into up to 64 parts of at least 512 KiB
/// (sized for its default 4 KiB blocks), each its own LRU: a 256 MiB cache
/// of 512 KiB blocks became 64 shards of 7 blocks, and a page reading a few
/// hundred scattered blocks over and over overflowed some shards and
/// decompressed their blocks on every read. Shards have room for about
/// [`BLOCKS_PER_SHARD`] blocks instead.
fn block_cache(cache_bytes: usize, block_bytes: usize) -> Cache {
    let mut opts = LruCacheOptions::default();
    opts.set_capacity(cache_bytes);
    opts.set_num_shard_bits(shard_bits(cache_bytes, block_bytes));
    Cache::new_lru_cache_opts(&opts)
}

/// log2 of the number of shards of a cache of `cache_bytes` for blocks of
/// `block_bytes`: at most 64 shards (RocksDB's own most), each with
/// room for about [`BLOCKS_PER_SHARD`] blocks.
fn shard_bits(cache_bytes: usize, block_bytes: usize) -> i32 {
    let shard_least = block_bytes.max(1).saturating_mul(BLOCKS_PER_SHARD);
    let bits = (0..6)
        .take_while(|bits| cache_bytes >> (bits + 1) >= shard_least)
        .count();
    bits as i32
}

impl Store {
    pub(crate) fn open(
        path: &Path,
        zstd_level: i32,
        block_bytes: usize,
        cache_bytes: usize,
    ) -> Result<Store> {
        let mut db_opts = RocksOptions::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_log_file_size(8 << 20);
        // Every sealed segment is one SST; keep RocksDB's table cache well
        // inside the usual 1024 descriptors per process.
        db_opts.set_max_open_files(512);
        let cache = block_cache(cache_bytes, block_bytes);
        let records = ColumnFamilyDescriptor::new(
            CF_RECORDS,
            records_options(zstd_level, block_bytes, Some(&cache)),
        );
        let meta = ColumnFamilyDescriptor::new(CF_META, RocksOptions::default());
        let db = DB::open_cf_descriptors(&db_opts, path, vec![records, meta])?;
        Ok(Store {
            db,
            path: path.to_owned(),
            records_options: records_options(zstd_level, block_bytes, None),
            archives: std::sync::RwLock::default(),
        })
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::InvalidArgument(format!("column family {name} missing")))
    }

    fn synced() -> WriteOptions {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        opts
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64> {
        let Some(value) = self.db.get_pinned_cf(self.cf(CF_META)?, key)? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
            Error::corrupt(
                &self.path,
                0,
                format!(
                    "meta key {} holds {} bytes, not 8",
                    String::from_utf8_lossy(key),
                    value.len()
                ),
            )
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    pub(crate) fn load_manifest(&self) -> Result<Manifest> {
        let applied = match self.db.get_pinned_cf(self.cf(CF_META)?, KEY_APPLIED)? {
            Some(_) => Some(self.meta_u64(KEY_APPLIED)?),
            None => None,
        };
        let mut manifest = Manifest {
            applied,
            floor: self.meta_u64(KEY_FLOOR)?,
            ..Manifest::default()
        };
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_META)?);
        iter.seek(SEGMENT_PREFIX);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if !key.starts_with(SEGMENT_PREFIX) {
                break;
            }
            let meta = SegmentMeta::decode(value).map_err(|reason| {
                Error::corrupt(&self.path, 0, format!("manifest entry: {reason}"))
            })?;
            manifest.segments.push(meta);
            iter.next();
        }
        iter.status()?;
        Ok(manifest)
    }

    /// Notes which of `segments` hold one value per record.
    pub(crate) fn set_segments(&self, segments: &[SegmentMeta]) {
        let archives: Archives = segments
            .iter()
            .filter(|s| s.layout != Layout::Chunks)
            .map(|s| (s.first_seq, s.last_seq, s.layout))
            .collect();
        *self
            .archives
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(archives);
    }

    fn archives(&self) -> std::sync::Arc<Archives> {
        std::sync::Arc::clone(
            &self
                .archives
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Every setting, by name.
    pub(crate) fn settings(&self) -> Result<Settings> {
        let mut settings = Settings::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_META)?);
        iter.seek(SETTING_PREFIX);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let Some(name) = key.strip_prefix(SETTING_PREFIX) else {
                break;
            };
            settings.insert(String::from_utf8_lossy(name).into_owned(), value.to_vec());
            iter.next();
        }
        iter.status()?;
        Ok(settings)
    }

    /// Sets (or, `None`, removes) one setting, synced.
    pub(crate) fn put_setting(&self, name: &str, value: Option<&[u8]>) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let key = setting_key(name);
        match value {
            Some(value) => self.db.put_cf_opt(meta, key, value, &Self::synced())?,
            None => self.db.delete_cf_opt(meta, key, &Self::synced())?,
        }
        Ok(())
    }

    /// Starts the SST of one segment at `path`.
    pub(crate) fn sst_writer(&self, path: &Path) -> Result<SstBuilder<'_>> {
        let writer = SstFileWriter::create(&self.records_options);
        writer.open(path)?;
        Ok(SstBuilder { writer })
    }

    /// Ingests a finished SST of one segment, replacing any file a crashed
    /// earlier seal of the same segment left behind.
    pub(crate) fn ingest(&self, path: &Path, first_seq: u64, last_seq: u64) -> Result<()> {
        self.delete_files_within(first_seq, last_seq)?;
        self.ingest_over(path)
    }

    /// Ingests an SST over what is there: where files of the same seqs
    /// are held, its records are read from then on (until those files
    /// are deleted, they take space, never answers).
    pub(crate) fn ingest_over(&self, path: &Path) -> Result<()> {
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.cf(CF_RECORDS)?, &opts, vec![path])?;
        Ok(())
    }

    /// Deletes the record files whose seqs all lie in `first..=last`.
    pub(crate) fn delete_files_within(&self, first: u64, last: u64) -> Result<()> {
        self.db
            .delete_file_in_range_cf(self.cf(CF_RECORDS)?, seq_key(first), seq_key(last))?;
        Ok(())
    }

    /// Records a sealed segment, the WAL index it covers and its keyed
    /// batches, atomically; the remembered keyed batches through index
    /// `forget` go in the same write.
    pub(crate) fn commit_segment(
        &self,
        meta: &SegmentMeta,
        keys: &[KeyedEntry],
        forget: Option<u64>,
    ) -> Result<()> {
        let cf = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, segment_key(meta.first_seq), meta.encode());
        batch.put_cf(cf, KEY_APPLIED, meta.last_index.to_le_bytes());
        if let Some(through) = forget {
            batch.delete_range_cf(cf, keyed_key(0), keyed_key(through.saturating_add(1)));
        }
        for entry in keys {
            batch.put_cf(cf, keyed_key(entry.index), entry.encode());
        }
        self.db.write_opt(batch, &Self::synced())?;
        Ok(())
    }

    /// Every remembered keyed batch, oldest first.
    pub(crate) fn keyed(&self) -> Result<Vec<KeyedEntry>> {
        let mut out = Vec::new();
        self.each_keyed(|entry| {
            out.push(entry);
            true
        })?;
        Ok(out)
    }

    /// Calls `f` with the remembered keyed batches, oldest first, while it
    /// returns true.
    fn each_keyed(&self, mut f: impl FnMut(KeyedEntry) -> bool) -> Result<()> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_META)?);
        iter.seek(KEYED_PREFIX);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if !key.starts_with(KEYED_PREFIX) {
                break;
            }
            let entry = KeyedEntry::decode(value).ok_or_else(|| {
                Error::corrupt(&self.path, 0, "a remembered keyed batch of the wrong size")
            })?;
            if !f(entry) {
                return Ok(());
            }
            iter.next();
        }
        iter.status()?;
        Ok(())
    }

    /// Which of the oldest remembered keyed batches to forget: at least
    /// `excess` of them, and every one whose seqs end at or below
    /// `expired_end`. Returns the newest index to forget (none: nothing)
    /// and how many that is.
    pub(crate) fn keyed_to_forget(
        &self,
        excess: usize,
        expired_end: u64,
    ) -> Result<(Option<u64>, usize)> {
        let (mut through, mut n) = (None, 0);
        self.each_keyed(|entry| {
            if n >= excess && entry.seqs.end > expired_end {
                return false;
            }
            through = Some(entry.index);
            n += 1;
            true
        })?;
        Ok((through, n))
    }

    /// The last snapshot's index and description, if one was saved.
    pub(crate) fn snapshot(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(value) = self.db.get_pinned_cf(self.cf(CF_META)?, KEY_SNAPSHOT)? else {
            return Ok(None);
        };
        let (index, bytes) = value.split_at_checked(8).ok_or_else(|| {
            Error::corrupt(&self.path, 0, "meta key snapshot holds under 8 bytes")
        })?;
        let index = u64::from_le_bytes(index.try_into().unwrap_or([0; 8]));
        Ok(Some((index, bytes.to_vec())))
    }

    fn snapshot_value(index: u64, bytes: &[u8]) -> Vec<u8> {
        let mut value = index.to_le_bytes().to_vec();
        value.extend_from_slice(bytes);
        value
    }

    /// Saves a snapshot's description, synced.
    pub(crate) fn save_snapshot(&self, index: u64, bytes: &[u8]) -> Result<()> {
        self.db.put_cf_opt(
            self.cf(CF_META)?,
            KEY_SNAPSHOT,
            Self::snapshot_value(index, bytes),
            &Self::synced(),
        )?;
        Ok(())
    }

    /// Replaces the manifest by an installed snapshot's, in one synced
    /// batch: its segments in place of `replaced`, the applied index, the
    /// floor (records below it deleted), the snapshot's description, its
    /// remembered keyed batches and settings.
    pub(crate) fn install(
        &self,
        install: &crate::SnapshotInstall,
        replaced: &[SegmentMeta],
    ) -> Result<()> {
        let (applied, floor) = (install.through, install.floor);
        let meta = self.cf(CF_META)?;
        let records = self.cf(CF_RECORDS)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(meta, KEYED_PREFIX, KEYED_END);
        for entry in &install.keys {
            batch.put_cf(meta, keyed_key(entry.index), entry.encode());
        }
        if let Some(settings) = &install.settings {
            batch.delete_range_cf(meta, SETTING_PREFIX, SETTING_END);
            for (name, value) in settings {
                batch.put_cf(meta, setting_key(name), value);
            }
        }
        for segment in replaced {
            batch.delete_cf(meta, segment_key(segment.first_seq));
        }
        for segment in &install.segments {
            batch.put_cf(meta, segment_key(segment.first_seq), segment.encode());
        }
        batch.put_cf(meta, KEY_APPLIED, applied.to_le_bytes());
        batch.put_cf(meta, KEY_FLOOR, floor.to_le_bytes());
        batch.put_cf(
            meta,
            KEY_SNAPSHOT,
            Self::snapshot_value(applied, &install.description),
        );
        let cut = cut(floor, install.segments.iter());
        batch.delete_range_cf(records, seq_key(0), seq_key(cut));
        self.db.write_opt(batch, &Self::synced())?;
        self.reclaim_below(cut)
    }

    /// Whether the value under `key` is a chunk that holds `seq`; `None`
    /// for a segment's end marker.
    fn holds(&self, archives: &Archives, key: u64, value: &[u8], seq: u64) -> Result<Option<bool>> {
        if value.is_empty() {
            return Ok(None);
        }
        if layout_of(archives, key) != Layout::Chunks {
            return Ok(Some(false));
        }
        // The header alone: the chunk is parsed when it is read.
        let len = Chunk::records_in(value).map_err(|e| self.bad_chunk(key, e))?;
        Ok(Some(key <= seq && seq < key.saturating_add(len as u64)))
    }

    /// Places `iter` at a chunk that holds `seq` and says so, else at the
    /// first value after `seq`. The greatest key at or below `seq` is
    /// usually it; a segment's end marker, or a shorter chunk of an
    /// installed segment over the node's own, may come first.
    fn seek_holder(
        &self,
        iter: &mut rocksdb::DBRawIterator<'_>,
        archives: &Archives,
        seq: u64,
    ) -> Result<bool> {
        iter.seek_for_prev(seq_key(seq));
        for _ in 0..HOLDER_STEPS {
            let Some(key) = self.key_seq(iter)? else {
                break;
            };
            if self.holds(archives, key, iter.value().unwrap_or_default(), seq)? == Some(true) {
                return Ok(true);
            }
            iter.prev();
        }
        iter.seek(seq_key(seq));
        Ok(false)
    }

    /// Drops whole segments below `floor`: the floor and the manifest change
    /// atomically first, then the values below `cut` ([`cut`]) and their
    /// files go.
    pub(crate) fn drop_below(&self, floor: u64, cut: u64, dropped: &[SegmentMeta]) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let records = self.cf(CF_RECORDS)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_FLOOR, floor.to_le_bytes());
        for segment in dropped {
            batch.delete_cf(meta, segment_key(segment.first_seq));
        }
        batch.delete_range_cf(records, seq_key(0), seq_key(cut));
        self.db.write_opt(batch, &Self::synced())?;
        self.reclaim_below(cut)
    }

    /// Frees the files whose values all lie below `cut` ([`cut`]);
    /// idempotent, run at open too.
    pub(crate) fn reclaim_below(&self, cut: u64) -> Result<()> {
        if cut == 0 {
            return Ok(());
        }
        let records = self.cf(CF_RECORDS)?;
        self.db
            .delete_file_in_range_cf(records, seq_key(0), seq_key(cut - 1))?;
        self.db
            .compact_range_cf(records, Some(seq_key(0)), Some(seq_key(cut)));
        Ok(())
    }

    /// Calls `f` with up to `max` records with seq in `[from, end)`, in seq
    /// order, checked; returns the last seq visited.
    pub(crate) fn visit(
        &self,
        from: u64,
        end: u64,
        max: usize,
        f: &mut Visitor<'_>,
    ) -> Result<Option<u64>> {
        let archives = self.archives();
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_RECORDS)?);
        self.seek_holder(&mut iter, &archives, from)?;
        let mut reader = ChunkReader::default();
        // Values are visited in key order; one holding seqs already read
        // (an older file's, until it is freed) gives only those after, and
        // before passing over seqs, a chunk of a lower key that holds them
        // is looked for (`sought`: the seq last looked for).
        let (mut next, mut sought) = (from, from);
        let mut left = max;
        while left > 0 && next < end {
            let Some(key) = self.key_seq(&iter)?.filter(|&key| key < end) else {
                break;
            };
            let value = iter.value().unwrap_or_default();
            if key > next && sought != next && !value.is_empty() {
                sought = next;
                self.seek_holder(&mut iter, &archives, next)?;
                continue;
            }
            match layout_of(&archives, key) {
                _ if value.is_empty() => {} // a segment's end
                Layout::Chunks => {
                    let chunk = self.chunk(key, value)?;
                    let first = next.max(key);
                    let stop = end.min(key.saturating_add(chunk.len() as u64));
                    let seqs = (first..stop).take(left);
                    let read = self.read_chunk(key, &chunk, seqs, &mut reader, f)?;
                    if read > 0 {
                        next = first + read as u64;
                        left -= read;
                    }
                }
                layout if key >= next => {
                    access_sealed_value(value, layout == Layout::TenantArchives)
                        .and_then(|record| f(key, record))
                        .map_err(|e| self.corrupt(key, e))?;
                    next = key + 1;
                    left -= 1;
                }
                _ => {}
            }
            iter.next();
        }
        iter.status()?;
        Ok((next > from).then(|| next - 1))
    }

    /// Calls `f` with each of `seqs` (ascending) that is stored, checked;
    /// one iterator serves them all (a point read otherwise pays for an
    /// iterator of its own), and a chunk is parsed once for all its seqs.
    /// In segments of one value per record, a seq a little past the
    /// previous one is reached by stepping, not seeking (`STEP_LIMIT`): a
    /// page of a common word's matches is a few records apart.
    pub(crate) fn visit_seqs(&self, seqs: &[u64], f: &mut Visitor<'_>) -> Result<()> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_RECORDS)?);
        let archives = self.archives();
        let mut reader = ChunkReader::default();
        let mut at: Option<u64> = None;
        let mut rest = seqs;
        while let Some((&seq, after)) = rest.split_first() {
            let layout = layout_of(&archives, seq);
            if layout == Layout::Chunks {
                at = None;
                rest = self.visit_chunk(&mut iter, &archives, &mut reader, rest, f)?;
                continue;
            }
            rest = after;
            if !self.step_to(&mut iter, &mut at, seq)? {
                continue; // dropped by retention
            }
            let value = iter.value().unwrap_or_default();
            access_sealed_value(value, layout == Layout::TenantArchives)
                .and_then(|record| f(seq, record))
                .map_err(|e| self.corrupt(seq, e))?;
        }
        iter.status()?;
        Ok(())
    }

    /// Visits the first of `seqs` and those after it in the same chunk;
    /// returns the seqs left.
    fn visit_chunk<'s>(
        &self,
        iter: &mut rocksdb::DBRawIterator<'_>,
        archives: &Archives,
        reader: &mut ChunkReader,
        seqs: &'s [u64],
        f: &mut Visitor<'_>,
    ) -> Result<&'s [u64]> {
        let Some(&seq) = seqs.first() else {
            return Ok(seqs);
        };
        let rest = seqs.get(1..).unwrap_or_default();
        if !self.seek_holder(iter, archives, seq)? {
            return Ok(rest); // dropped by retention
        }
        let Some(key) = self.key_seq(iter)? else {
            return Ok(rest);
        };
        let chunk = self.chunk(key, iter.value().unwrap_or_default())?;
        let end = key.saturating_add(chunk.len() as u64);
        let (here, rest) = seqs.split_at(seqs.partition_point(|&s| s < end));
        self.read_chunk(key, &chunk, here.iter().copied(), reader, f)?;
        Ok(rest)
    }

    /// Calls `f` with the records at `seqs` (ascending, all inside the
    /// chunk stored under `key`); returns how many it read.
    fn read_chunk(
        &self,
        key: u64,
        chunk: &Chunk<'_>,
        seqs: impl Iterator<Item = u64>,
        reader: &mut ChunkReader,
        f: &mut Visitor<'_>,
    ) -> Result<usize> {
        let mut at = chunk.start();
        let mut read = 0;
        for seq in seqs {
            chunk
                .seek(at, (seq - key) as usize)
                .and_then(|found| {
                    at = found;
                    f(seq, reader.read(chunk, &mut at)?)
                })
                .map_err(|e| self.corrupt(seq, e))?;
            read += 1;
        }
        Ok(read)
    }

    /// Moves `iter` to the value of `seq`, stepping from `at` when it is a
    /// little before, else seeking; whether it is stored.
    fn step_to(
        &self,
        iter: &mut rocksdb::DBRawIterator<'_>,
        at: &mut Option<u64>,
        seq: u64,
    ) -> Result<bool> {
        match *at {
            Some(key) if key <= seq && seq - key <= STEP_LIMIT => {
                while at.is_some_and(|key| key < seq) {
                    iter.next();
                    *at = self.key_seq(iter)?;
                }
            }
            _ => {
                iter.seek(seq_key(seq));
                *at = self.key_seq(iter)?;
            }
        }
        Ok(*at == Some(seq))
    }

    /// The chunk stored under `key`, parsed.
    fn chunk<'v>(&self, key: u64, value: &'v [u8]) -> Result<Chunk<'v>> {
        Chunk::parse(value).map_err(|e| self.bad_chunk(key, e))
    }

    fn bad_chunk(&self, key: u64, e: lode_codec::CodecError) -> Error {
        Error::corrupt(&self.path, key, format!("chunk at {key}: {e}"))
    }

    fn corrupt(&self, seq: u64, e: lode_codec::CodecError) -> Error {
        Error::corrupt(&self.path, seq, format!("record {seq}: {e}"))
    }

    /// Every key of `records`, in order.
    #[cfg(test)]
    pub(crate) fn record_keys(&self) -> Result<Vec<u64>> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_RECORDS)?);
        iter.seek_to_first();
        let mut keys = Vec::new();
        while let Some(key) = self.key_seq(&iter)? {
            keys.push(key);
            iter.next();
        }
        Ok(keys)
    }

    /// The seq of the iterator's key; `None` past the end.
    fn key_seq(&self, iter: &rocksdb::DBRawIterator<'_>) -> Result<Option<u64>> {
        iter.key()
            .map(|key| {
                key.try_into().map(u64::from_be_bytes).map_err(|_| {
                    Error::corrupt(&self.path, 0, format!("record key of {} bytes", key.len()))
                })
            })
            .transpose()
    }
}

/// The key below which values may be deleted for a retention `floor`:
/// the first seq of the segment (of `segments`) that holds the floor, whose
/// file's keys all lie at or above it (its records below the floor stay
/// stored, hidden by the floor), else the floor.
pub(crate) fn cut<'a>(floor: u64, segments: impl Iterator<Item = &'a SegmentMeta>) -> u64 {
    segments
        .filter(|s| s.first_seq <= floor && floor <= s.last_seq)
        .map(|s| s.first_seq)
        .min()
        .unwrap_or(floor)
}

/// Seq ranges (inclusive, sorted) of segments of one value per record,
/// with their layouts.
type Archives = Vec<(u64, u64, Layout)>;

/// The layout of the segment that holds `seq`: one of `archives`, else
/// chunks.
fn layout_of(archives: &Archives, seq: u64) -> Layout {
    let at = archives.partition_point(|(first, _, _)| *first <= seq);
    match at.checked_sub(1).and_then(|i| archives.get(i)) {
        Some(&(_, last, layout)) if seq <= last => layout,
        _ => Layout::Chunks,
    }
}

/// An SST being written; keys must be added in increasing seq order.
pub(crate) struct SstBuilder<'a> {
    writer: SstFileWriter<'a>,
}

impl SstBuilder<'_> {
    pub(crate) fn put(&mut self, seq: u64, value: &[u8]) -> Result<()> {
        self.writer.put(seq_key(seq), value)?;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        self.writer.finish()?;
        Ok(())
    }
}

/// crc32c of a whole file, read in 1 MiB steps.
pub(crate) fn file_crc(path: &Path) -> Result<(u64, u32)> {
    let mut file = File::open(path).map_err(Error::io("open", path))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = file.read(&mut buf).map_err(Error::io("read", path))?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        crc = crc32c::crc32c_append(crc, chunk);
        len += n as u64;
    }
    Ok((len, crc))
}

#[cfg(test)]
mod tests {
    use super::shard_bits;

    #[test]
    fn a_cache_shard_holds_many_blocks() {
        // The defaults: 256 MiB of 512 KiB blocks, 8 shards of 64 blocks.
        assert_eq!(shard_bits(256 << 20, 512 << 10), 3);
        assert_eq!(shard_bits(32 << 20, 512 << 10), 0);
        assert_eq!(shard_bits(1 << 20, 512 << 10), 0);
        // Never more than RocksDB's 64 shards.
        assert_eq!(shard_bits(64 << 30, 4 << 10), 6);
        assert_eq!(shard_bits(256 << 20, 0), 6);
    }
}
