//! The index handle: a tantivy index that follows the engine, and searches.
//!
//! An indexer thread subscribes to the engine from the last seq the index
//! committed, adds every record as a document and commits at least every
//! `commit_interval`, writing the last indexed seq into the commit's
//! payload. After a crash, uncommitted documents are gone and are indexed
//! again from that seq on: the index never misses an acknowledged record
//! and never holds one twice.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lode_engine::{Background, Engine, Record};
use lode_query::{Prepared, Query, parse};
use roaring::RoaringBitmap;
use tantivy::collector::{Collector, Count};
use tantivy::columnar::Column;
use tantivy::directory::MmapDirectory;
use tantivy::indexer::UserOperation;
use tantivy::query::{EnableScoring, Query as TQuery, RangeQuery, Weight};
use tantivy::{
    DocId, DocSet, Executor, IndexReader, IndexWriter, ReloadPolicy, Searcher, SegmentReader, Term,
    Warmer,
};

use crate::bitmaps::FieldBitmaps;
use crate::columns::Columns;
use crate::error::{Error, Result};
use crate::facets::{HistogramCollector, TopValuesCollector, ceil_div, choose_width, tally_values};
use crate::recheck::Recheck;
use crate::schema::{
    Fields, TOKENIZER, analyzer, document, reads_messages, schema, settings, translate_restricted,
};
use crate::time::{TimeRange, span};

/// How long a reader waits for the index before the indexer is raised to
/// normal priority (under a commit interval: the wait of an index that
/// keeps up is rarely longer).
const HURRY_AFTER: Duration = Duration::from_millis(200);
/// Records durable but not yet searchable past which indexing is
/// hurried, until the lag is a quarter of it (see `bound_lag`)...
const LAG_BOUND: u64 = 262_144;
/// ... or once a durable record has waited this long to be searchable.
const LAG_AGE: Duration = Duration::from_secs(3);
/// How often the lag is compared with its bound.
const LAG_CHECK: Duration = Duration::from_millis(250);

/// Keeps the index lag bounded: the indexer runs on CPU time nobody else
/// wants, so under ingest, or beside other busy processes, it may get
/// none. Past `LAG_BOUND` records, or once a record has waited `LAG_AGE`,
/// background threads run as normal ones until it has caught up
/// ([`lode_engine::Overdue`]). Runs until its sender is dropped.
fn bound_lag(engine: &Engine, indexed_upto: &AtomicU64, stop: &std::sync::mpsc::Receiver<()>) {
    let mut indexing = lode_engine::Overdue::default();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(LAG_CHECK) {
        let durable = engine.next_seq().saturating_sub(1);
        indexing.check(
            indexed_upto.load(Ordering::Acquire),
            durable,
            LAG_BOUND,
            LAG_AGE,
        );
    }
}
/// Most records the indexer adds between two looks at the commit deadline.
const CATCH_UP_ROUND: u64 = 50_000;
/// Documents handed to tantivy's indexing thread at once: one channel send
/// each (one per document spun on the full channel: 4% of a 1M ingest's
/// CPU in perf).
const DOCS_PER_SEND: usize = 256;
/// Buckets of a histogram whose width is not given.
const HISTOGRAM_BUCKETS: i64 = 24;

/// Counts per time bucket: `buckets[i]` counts `start + i * width <= ts <
/// start + (i + 1) * width`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub start: i64,
    pub width: i64,
    pub buckets: Vec<u64>,
}

/// The fields whose top values can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FacetField {
    Level,
    Service,
    Host,
    /// The tenant a record belongs to (`default` for the default one).
    Tenant,
}

impl FacetField {
    /// Its place among the four (for per-field arrays).
    pub(crate) fn index(self) -> usize {
        match self {
            FacetField::Level => 0,
            FacetField::Service => 1,
            FacetField::Host => 2,
            FacetField::Tenant => 3,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            FacetField::Level => "level",
            FacetField::Service => "service",
            FacetField::Host => "host",
            FacetField::Tenant => "tenant",
        }
    }
}

/// Options of [`Index::open`].
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// New records become searchable within this (plus indexing time).
    pub commit_interval: Duration,
    /// Memory of tantivy's indexing buffer.
    pub writer_memory: usize,
    /// Largest page a search returns.
    pub max_limit: usize,
    /// Scheduling priority of the indexing and merge threads, so that on
    /// a busy machine acknowledging appends wins the CPU and the index lags
    /// (reported as `lag`) rather than ingest slowing.
    pub background: Background,
    /// Keep where each word of a message is, for phrases. Off, a phrase
    /// matches the records holding all its words and reads their messages
    /// from the engine to check the order: the index is 11 bytes a record
    /// smaller (an eighth of everything lode stores), a newest-first page
    /// of a phrase reads about one message per result, but counting or
    /// bucketing a common phrase reads every candidate (a scan of the
    /// engine). Changing it rebuilds the index from the engine at open.
    pub positions: bool,
    /// Keep roaring bitmaps of each segment's docs per level, service,
    /// host and tenant in memory (about 3.6 bytes a record on generated logs), and per
    /// value of attributes with few values once a query names one (about
    /// 1.8 more), so counts and top values of field filters visit no
    /// document. Off, they go through tantivy like every other query, and
    /// top values build the bitmaps of the field they tally, per query.
    pub field_bitmaps: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            commit_interval: Duration::from_millis(500),
            writer_memory: 64 << 20,
            max_limit: 10_000,
            background: Background::Idle,
            positions: false,
            field_bitmaps: true,
        }
    }
}

/// A search request: the query text and what to return.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub query: String,
    /// Only records with `since <= ts < until` (ns).
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Most records to return (default 100).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only records of these tenants; `None`: every tenant's.
    pub tenants: Option<Vec<String>>,
}

/// The query `text` restricted to records of `tenants` (`None`: every
/// tenant's): how a server scopes each read to its caller. The
/// restriction is a conjunction in the parsed query, not text, so the
/// query cannot undo it.
pub fn scoped(text: &str, tenants: Option<&[String]>) -> Result<Query> {
    let query = parse(text)?;
    Ok(match tenants {
        None => query,
        Some(tenants) => {
            let allowed: Vec<Query> = tenants
                .iter()
                .map(|t| Query::FieldIs(lode_query::Field::Tenant, t.clone()))
                .collect();
            let allowed = match <[Query; 1]>::try_from(allowed) {
                Ok([one]) => one,
                Err(many) => Query::Or(many),
            };
            Query::And(vec![allowed, query])
        }
    })
}

/// One page of results, newest (highest seq) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Record>,
    /// Pass it back as `Search::cursor` for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// Figures of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Every record up to this seq is searchable.
    pub indexed_upto: u64,
    /// Durable records not yet searchable.
    pub lag: u64,
    /// Memory the segments' field bitmaps take ([`crate::bitmaps`]), with
    /// the ordinals of the fields whose top values were asked
    /// ([`crate::ordinals`]).
    pub bitmap_bytes: u64,
}

/// A full-text index over an engine. See the crate documentation.
pub struct Index {
    engine: Arc<Engine>,
    fields: Fields,
    reader: IndexReader,
    indexed_upto: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    indexer: Option<JoinHandle<Result<()>>>,
    /// Bounds the lag (see `bound_lag`); stopped by dropping the sender.
    lag_watch: Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>,
    max_limit: usize,
    /// Each segment's seq and time columns; also a warmer of the reader,
    /// which keeps it alive only through this `Arc`.
    columns: Arc<Columns>,
    /// Runs a histogram's or top values' collection of each segment on a
    /// thread of a pool, one per core: they read every match.
    scans: Executor,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("indexed_upto", &self.indexed_upto)
            .finish_non_exhaustive()
    }
}

/// The index may hold records the engine no longer has: appends that were
/// only buffered (`Durability::Buffered`) when the machine lost power, or a
/// data directory restored from an older copy. Their documents are deleted
/// before indexing resumes, or new records reusing those seqs would be
/// indexed twice. Returns the seq the index is complete up to.
fn forget_beyond_engine(
    writer: &mut IndexWriter,
    fields: &Fields,
    committed: u64,
    next_seq: u64,
) -> Result<u64> {
    let durable = next_seq.saturating_sub(1);
    if committed <= durable {
        return Ok(committed);
    }
    tracing::warn!(
        committed,
        durable,
        "index is ahead of the engine; forgetting the records the engine lost"
    );
    let lower = Bound::Included(Term::from_field_u64(fields.seq, next_seq));
    writer.delete_query(Box::new(RangeQuery::new(lower, Bound::Unbounded)))?;
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&durable.to_string());
    prepared.commit()?;
    Ok(durable)
}

/// Opens or creates the tantivy index in `dir`. An index of another schema
/// (an older lode's) is derived data: it is removed and rebuilt from the
/// engine, which the indexer does from seq 1 on.
fn open_tantivy(dir: &Path, positions: bool) -> Result<(tantivy::Index, Fields)> {
    let (schema, fields) = schema(positions);
    let open = || {
        tantivy::Index::builder()
            .schema(schema.clone())
            .settings(settings())
            .open_or_create(MmapDirectory::open(dir)?)
    };
    let index = match open() {
        Err(tantivy::TantivyError::SchemaError(reason)) => {
            tracing::warn!(
                dir = %dir.display(),
                "{reason} The index was built by another lode version: rebuilding it from the engine"
            );
            let io = |source| Error::Io {
                path: dir.to_owned(),
                source,
            };
            std::fs::remove_dir_all(dir).map_err(io)?;
            std::fs::create_dir_all(dir).map_err(io)?;
            open()?
        }
        other => other?,
    };
    Ok((index, fields))
}

/// A pool of one thread per core for [`Index::scan`]; one thread, the
/// caller's, when there is one core or the pool cannot start.
fn scan_executor() -> Executor {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 {
        return Executor::single_thread();
    }
    Executor::multi_thread(cores.min(8), "lode-scan-").unwrap_or_else(|e| {
        tracing::warn!(error = %e, "no thread pool for scans; scanning on one thread");
        Executor::single_thread()
    })
}

fn parse_cursor(cursor: &str) -> Result<u64> {
    cursor
        .parse()
        .map_err(|_| Error::BadRequest(format!("cursor '{cursor}' is not one this index gave")))
}

impl Index {
    /// Opens (creating if needed) the index in `dir`, catches up with the
    /// engine in the background and follows it from then on.
    pub fn open(engine: Arc<Engine>, dir: impl AsRef<Path>, opts: IndexOptions) -> Result<Index> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_owned(),
            source: e,
        })?;
        let (index, fields) = open_tantivy(dir, opts.positions)?;
        index.tokenizers().register(TOKENIZER, analyzer());
        let committed: u64 = index
            .load_metas()?
            .payload
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // Tantivy's indexing and merge threads inherit the priority of the
        // thread that creates the writer.
        let background = opts.background;
        let mut writer: IndexWriter = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    lode_engine::lower_thread_priority(background);
                    index.writer_with_num_threads(1, opts.writer_memory)
                })
                .join()
                .map_err(|_| Error::Indexer("creating the index writer panicked".into()))
        })??;
        let committed = forget_beyond_engine(&mut writer, &fields, committed, engine.next_seq())?;
        let columns = Arc::new(Columns::new(opts.field_bitmaps));
        let warmer: Arc<dyn Warmer> = columns.clone();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .warmers(vec![Arc::downgrade(&warmer)])
            .try_into()?;
        let indexed_upto = Arc::new(AtomicU64::new(committed));
        let stop = Arc::new(AtomicBool::new(false));
        let indexer = Indexer {
            engine: Arc::clone(&engine),
            writer,
            reader: reader.clone(),
            fields,
            indexed_upto: Arc::clone(&indexed_upto),
            stop: Arc::clone(&stop),
            commit_interval: opts.commit_interval,
            pruned_below: 0,
            prune_pending: false,
        };
        let handle = std::thread::Builder::new()
            .name("lode-indexer".into())
            .spawn(move || {
                lode_engine::lower_thread_priority(background);
                indexer.run(committed + 1)
            })
            .map_err(|e| Error::Io {
                path: dir.to_owned(),
                source: e,
            })?;
        let lag_watch = {
            let (stop_watch, stopped) = std::sync::mpsc::channel();
            let (engine, indexed_upto) = (Arc::clone(&engine), Arc::clone(&indexed_upto));
            let watching = std::thread::Builder::new()
                .name("lode-index-lag".into())
                .spawn(move || bound_lag(&engine, &indexed_upto, &stopped))
                .map_err(|e| Error::Io {
                    path: dir.to_owned(),
                    source: e,
                })?;
            Some((stop_watch, watching))
        };
        Ok(Index {
            engine,
            fields,
            reader,
            indexed_upto,
            stop,
            indexer: Some(handle),
            lag_watch,
            max_limit: opts.max_limit,
            columns,
            scans: scan_executor(),
        })
    }

    /// Newest records matching `search`, with a cursor for the next page.
    pub fn search(&self, search: &Search) -> Result<Page> {
        let limit = search.limit.unwrap_or(100).clamp(1, self.max_limit.max(1));
        let before = search.cursor.as_deref().map(parse_cursor).transpose()?;
        let query = scoped(&search.query, search.tenants.as_deref())?;
        let seqs = self.rechecking(|recheck| {
            let tquery = self.query(&query, search.since, search.until, before, recheck)?;
            self.newest(&self.reader.searcher(), tquery.as_ref(), limit, recheck)
        })?;
        // Records retention dropped after they were indexed are left out.
        let records = self.engine.get_many(&seqs)?;
        let last_seq = seqs.last().copied();
        let next_cursor = if seqs.len() == limit {
            last_seq.map(|s| s.to_string())
        } else {
            None
        };
        Ok(Page {
            records,
            next_cursor,
        })
    }

    /// The seqs of the `limit` newest matches, newest first.
    ///
    /// Segments are visited newest seq range first and skipped once they
    /// cannot beat the `limit`-th best. A segment whose doc order is seq
    /// order (what the single-threaded indexer writes) is read from its end
    /// and only as far as matches can get in ([`newest_from_end`]); other
    /// segments are read whole.
    fn newest(
        &self,
        searcher: &Searcher,
        query: &dyn TQuery,
        limit: usize,
        recheck: &Recheck,
    ) -> Result<Vec<u64>> {
        let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
        let mut segments = Vec::new();
        for reader in searcher
            .segment_readers()
            .iter()
            .filter(|r| r.num_docs() > 0)
        {
            let columns = self.columns.of(reader)?;
            segments.push((columns.seqs.max_value(), reader, columns));
        }
        segments.sort_by_key(|(max, _, _)| Reverse(*max));
        let mut best = TopSeqs::new(limit);
        for (max, reader, columns) in &segments {
            if best.rejects(*max) {
                break;
            }
            let seqs = &columns.seqs;
            if columns.ordered {
                newest_from_end(weight.as_ref(), reader, seqs, &mut best, recheck)?;
            } else {
                weight.for_each_no_score(reader, &mut |docs| {
                    for &doc in docs {
                        if let Some(seq) = seqs.first(doc).filter(|_| alive(reader, doc)) {
                            best.offer(seq);
                        }
                    }
                })?;
            }
        }
        Ok(best.newest_first())
    }

    /// Calls `visit` with each record (and its seq) that matches `text`
    /// with `since <= ts < until`, newest seq first, until it returns false:
    /// for callers that look at every match (a window of LogQL's log
    /// queries) rather than a page of them. The matches' seqs are
    /// collected first, then their records are read in runs of 4096
    /// through one store iterator each.
    pub fn for_each_match(
        &self,
        text: &str,
        tenants: Option<&[String]>,
        since: Option<i64>,
        until: Option<i64>,
        visit: &mut dyn FnMut(u64, &lode_engine::LogRecord) -> bool,
    ) -> Result<()> {
        let seqs = self.matching_seqs(text, tenants, since, until)?;
        for run in seqs.rchunks(FETCH_RUN) {
            let mut records = Vec::with_capacity(run.len());
            let mut failed = None;
            self.engine
                .visit_seqs(run, |seq, record| match record.to_owned_record() {
                    Ok(record) => records.push((seq, record)),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                })?;
            if let Some(e) = failed {
                return Err(Error::Engine(e.into()));
            }
            for (seq, record) in records.iter().rev() {
                if !visit(*seq, record) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// [`Index::for_each_match`] reading each record in place, not copied
    /// out, in no particular order: for callers that look at each match
    /// once and keep little of it (LogQL's metric queries).
    pub fn visit_matches(
        &self,
        text: &str,
        tenants: Option<&[String]>,
        since: Option<i64>,
        until: Option<i64>,
        visit: &mut dyn FnMut(u64, lode_engine::RecordRef<'_>) -> bool,
    ) -> Result<()> {
        let seqs = self.matching_seqs(text, tenants, since, until)?;
        for run in seqs.rchunks(FETCH_RUN) {
            let mut going = true;
            self.engine.visit_seqs(run, |seq, record| {
                going = going && visit(seq, record);
            })?;
            if !going {
                break;
            }
        }
        Ok(())
    }

    /// The seqs of the records that match `text` with `since <= ts <
    /// until`, ascending.
    fn matching_seqs(
        &self,
        text: &str,
        tenants: Option<&[String]>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<u64>> {
        let query = scoped(text, tenants)?;
        let mut seqs = self.rechecking(|recheck| {
            let tquery = self.query(&query, since, until, None, recheck)?;
            let searcher = self.reader.searcher();
            let weight = tquery.weight(EnableScoring::disabled_from_searcher(&searcher))?;
            let mut seqs = Vec::new();
            for reader in searcher.segment_readers() {
                let columns = self.columns.of(reader)?;
                weight.for_each_no_score(reader, &mut |docs| {
                    seqs.extend(
                        docs.iter()
                            .filter(|&&doc| alive(reader, doc))
                            .filter_map(|&doc| columns.seqs.first(doc)),
                    );
                })?;
            }
            Ok(seqs)
        })?;
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// How many records match the query in the time range.
    pub fn count(
        &self,
        text: &str,
        tenants: Option<&[String]>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<u64> {
        let query = scoped(text, tenants)?;
        if since.is_none()
            && until.is_none()
            && let Some(counts) = self.field_matches(&query, |_, docs| docs.len())?
        {
            return Ok(counts.iter().sum());
        }
        let reads_messages = reads_messages(&self.fields, &query);
        self.rechecking(|recheck| {
            let tquery = self.query(&query, since, until, None, recheck)?;
            let searcher = self.reader.searcher();
            // Counting a phrase or a long number reads its candidates'
            // messages from the engine: worth a thread per core. Other
            // counts take microseconds, less than handing segments to the
            // pool.
            let count = if reads_messages {
                self.scan(&searcher, tquery.as_ref(), &Count)?
            } else {
                searcher.search(&tquery, &Count)?
            };
            Ok(count as u64)
        })
    }

    /// Runs `search` with a reader of records from the engine (exact times,
    /// phrases), and fails with the first engine error that reader met.
    fn rechecking<T>(&self, search: impl FnOnce(&Arc<Recheck>) -> Result<T>) -> Result<T> {
        let recheck = Recheck::new(Arc::clone(&self.engine), Arc::clone(&self.columns));
        let out = search(&recheck)?;
        recheck.finish()?;
        Ok(out)
    }

    /// `query` translated, restricted to `since <= ts < until` (exact
    /// times and phrases read through `recheck`) and to `seq < before`.
    fn query(
        &self,
        query: &Query,
        since: Option<i64>,
        until: Option<i64>,
        before: Option<u64>,
        recheck: &Arc<Recheck>,
    ) -> Result<Box<dyn tantivy::query::Query>> {
        let time = (since.is_some() || until.is_some()).then(|| TimeRange {
            since,
            until,
            recheck: Arc::clone(recheck),
        });
        Ok(translate_restricted(
            &self.fields,
            query,
            time,
            before,
            recheck,
        )?)
    }

    /// Matches per time bucket over `[since, until)` (the indexed time span
    /// where not given); `width` in ns, or a readable one giving at most 24
    /// buckets. Buckets start at a multiple of the width.
    pub fn histogram(
        &self,
        query: &str,
        tenants: Option<&[String]>,
        since: Option<i64>,
        until: Option<i64>,
        width: Option<i64>,
    ) -> Result<Histogram> {
        let parsed = scoped(query, tenants)?;
        let searcher = self.reader.searcher();
        let (mut low, mut high) = (i64::MAX, i64::MIN);
        for segment in searcher
            .segment_readers()
            .iter()
            .filter(|s| s.num_docs() > 0)
        {
            let ms = &self.columns.of(segment)?.ms;
            low = low.min(span(ms.min_value()).0);
            high = high.max(span(ms.max_value()).1);
        }
        let since = since.unwrap_or(if low <= high { low } else { 0 });
        let until = until.unwrap_or(if low <= high {
            high.saturating_add(1)
        } else {
            since.saturating_add(1)
        });
        if until <= since {
            return Err(Error::BadRequest(format!(
                "empty time range: since {since} >= until {until}"
            )));
        }
        let width = match width {
            Some(w) if w > 0 => w,
            Some(w) => {
                return Err(Error::BadRequest(format!(
                    "histogram bucket width {w} ns is not positive"
                )));
            }
            None => choose_width(since, until, HISTOGRAM_BUCKETS),
        };
        let sized = since
            .div_euclid(width)
            .checked_mul(width)
            .and_then(|start| {
                let buckets = usize::try_from(ceil_div(until.checked_sub(start)?, width)).ok()?;
                (buckets <= 100_000).then_some((start, buckets))
            });
        let (start, buckets) = sized.ok_or_else(|| {
            Error::BadRequest(format!(
                "a bucket width of {width} ns gives more than 100000 buckets over the time range"
            ))
        })?;
        let buckets = self.count_buckets(&parsed, (start, width, buckets), (since, until))?;
        Ok(Histogram {
            start,
            width,
            buckets,
        })
    }

    /// Matches per bucket `[origin + i * width, origin + (i + 1) * width)`
    /// for `i < buckets`: buckets placed where the caller wants them (a
    /// LogQL step's range ends on its time), exact to the nanosecond.
    pub fn histogram_at(
        &self,
        query: &str,
        tenants: Option<&[String]>,
        origin: i64,
        width: i64,
        buckets: usize,
    ) -> Result<Vec<u64>> {
        if width <= 0 || buckets == 0 || buckets > 100_000 {
            return Err(Error::BadRequest(format!(
                "{buckets} buckets of {width} ns: expected 1 to 100000 buckets of a positive width"
            )));
        }
        let until = i64::try_from(buckets)
            .ok()
            .and_then(|n| n.checked_mul(width))
            .and_then(|span| origin.checked_add(span))
            .ok_or_else(|| Error::BadRequest("histogram buckets past the end of time".into()))?;
        self.count_buckets(
            &scoped(query, tenants)?,
            (origin, width, buckets),
            (origin, until),
        )
    }

    fn count_buckets(
        &self,
        parsed: &lode_query::Query,
        (origin, width, buckets): (i64, i64, usize),
        (since, until): (i64, i64),
    ) -> Result<Vec<u64>> {
        let searcher = self.reader.searcher();
        self.rechecking(|recheck| {
            // The collector applies the time range (it reads every match's
            // grain anyway), which spares the query a time filter; unless
            // the query reads messages: then the range keeps it from
            // reading records outside it.
            let (from, to) = match reads_messages(&self.fields, parsed) {
                true => (Some(since), Some(until)),
                false => (None, None),
            };
            let tquery = self.query(parsed, from, to, None, recheck)?;
            let collector = HistogramCollector {
                origin,
                width,
                buckets,
                since,
                until,
                recheck: Arc::clone(recheck),
            };
            Ok(self.scan(&searcher, tquery.as_ref(), &collector)?)
        })
    }

    /// The `k` most frequent values of `field` among the matches, most
    /// frequent first (ties by value).
    pub fn top_values(
        &self,
        query: &str,
        tenants: Option<&[String]>,
        since: Option<i64>,
        until: Option<i64>,
        field: FacetField,
        k: usize,
    ) -> Result<Vec<(String, u64)>> {
        let parsed = scoped(query, tenants)?;
        if since.is_none()
            && until.is_none()
            && let Some(tallies) =
                self.field_matches(&parsed, |b, docs| tally_values(b.of(field), docs))?
        {
            let mut counts = HashMap::new();
            for (value, n) in tallies.into_iter().flatten() {
                *counts.entry(value).or_insert(0) += n;
            }
            return Ok(top_k(counts, k));
        }
        let counts = self.rechecking(|recheck| {
            let tquery = self.query(&parsed, since, until, None, recheck)?;
            let collector = TopValuesCollector {
                field,
                columns: Arc::clone(&self.columns),
            };
            Ok(self.scan(&self.reader.searcher(), tquery.as_ref(), &collector)?)
        })?;
        Ok(top_k(counts, k))
    }

    /// `each` of each segment's bitmaps and matches of `query`, from its
    /// field bitmaps, when every segment answers it so (a query of field
    /// filters only, segments without deleted docs: see
    /// [`crate::bitmaps`]).
    fn field_matches<T>(
        &self,
        query: &Query,
        mut each: impl FnMut(&FieldBitmaps, &RoaringBitmap) -> T,
    ) -> Result<Option<Vec<T>>> {
        let searcher = self.reader.searcher();
        let mut out = Vec::new();
        for reader in searcher.segment_readers() {
            let columns = self.columns.of(reader)?;
            let bitmaps = columns.bitmaps.as_ref().filter(|_| !reader.has_deletes());
            let Some((bitmaps, docs)) = bitmaps.and_then(|b| Some((b, b.matches(reader, query)?)))
            else {
                return Ok(None);
            };
            out.push(each(bitmaps, &docs));
        }
        Ok(Some(out))
    }

    /// Collects every match of `query`, segments in parallel.
    fn scan<C: Collector>(
        &self,
        searcher: &Searcher,
        query: &dyn TQuery,
        collector: &C,
    ) -> tantivy::Result<C::Fruit> {
        let scoring = EnableScoring::disabled_from_searcher(searcher);
        searcher.search_with_executor(query, collector, &self.scans, scoring)
    }

    /// A live tail: records from `from_seq` on that match `query`, as they
    /// become durable (read from the engine, filtered by the query's
    /// brute-force meaning, so it needs no index commit).
    pub fn tail(&self, query: &str, tenants: Option<&[String]>, from_seq: u64) -> Result<Tail> {
        Ok(Tail {
            query: scoped(query, tenants)?,
            subscription: self.engine.subscribe(from_seq),
        })
    }

    pub fn stats(&self) -> IndexStats {
        let indexed_upto = self.indexed_upto.load(Ordering::Acquire);
        let durable = self.engine.next_seq().saturating_sub(1);
        let searcher = self.reader.searcher();
        let bitmap_bytes = searcher
            .segment_readers()
            .iter()
            .filter_map(|reader| self.columns.of(reader).ok())
            .filter_map(|columns| columns.bitmaps.as_ref().map(FieldBitmaps::bytes))
            .sum();
        IndexStats {
            indexed_upto,
            lag: durable.saturating_sub(indexed_upto),
            bitmap_bytes,
        }
    }

    /// Waits until every record up to `seq` is searchable; false on timeout.
    /// Past a short wait, the indexer runs at normal priority until then
    /// ([`lode_engine::hurry_background`]): other processes keeping the
    /// machine busy do not starve it while someone waits.
    pub fn wait_indexed(&self, seq: u64, timeout: Duration) -> bool {
        let started = Instant::now();
        let mut hurry = None;
        while self.indexed_upto.load(Ordering::Acquire) < seq {
            let waited = started.elapsed();
            if waited >= timeout {
                return false;
            }
            if hurry.is_none() && waited >= HURRY_AFTER {
                hurry = Some(lode_engine::hurry_background());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Commits what is indexed and stops the indexer.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        if let Some((stop_watch, watching)) = self.lag_watch.take() {
            drop(stop_watch);
            let _ = watching.join();
        }
        match self.indexer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Indexer("the indexer thread panicked".into())),
            None => Ok(()),
        }
    }
}

/// The `k` largest counts, largest first (ties by value).
fn top_k(counts: HashMap<String, u64>, k: usize) -> Vec<(String, u64)> {
    let mut top: Vec<(String, u64)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(k);
    top
}

/// The `limit` highest seqs offered so far.
struct TopSeqs {
    best: BinaryHeap<Reverse<u64>>,
    limit: usize,
}

impl TopSeqs {
    fn new(limit: usize) -> TopSeqs {
        TopSeqs {
            best: BinaryHeap::with_capacity(limit + 1),
            limit,
        }
    }

    /// Whether `seq` (and so any lower seq) cannot get in any more.
    fn rejects(&self, seq: u64) -> bool {
        self.best.len() >= self.limit && self.best.peek().is_some_and(|Reverse(min)| seq <= *min)
    }

    /// How many more seqs it takes to hold `limit`.
    fn missing(&self) -> usize {
        self.limit.saturating_sub(self.best.len())
    }

    /// Keeps `seq` if it is among the best so far; false if it is not.
    fn offer(&mut self, seq: u64) -> bool {
        if self.rejects(seq) {
            return false;
        }
        self.best.push(Reverse(seq));
        if self.best.len() > self.limit {
            self.best.pop();
        }
        true
    }

    fn newest_first(self) -> Vec<u64> {
        let mut out: Vec<u64> = self.best.into_iter().map(|Reverse(seq)| seq).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }
}

/// Records [`Index::for_each_match`] reads through one store iterator.
const FETCH_RUN: usize = 4096;

fn alive(reader: &SegmentReader, doc: DocId) -> bool {
    reader.alive_bitset().is_none_or(|a| a.is_alive(doc))
}

/// Offers the matches of a segment whose docs are in seq order, newest
/// first: read in windows of docs from the end until a match cannot get
/// in, so a common word's page does not read the word's whole doclist.
/// The first window is 4096 docs; each next one is sized by
/// [`next_window`] from the matches the last one held, so that a phrase,
/// whose candidates are read from the engine, checks about as many more
/// as the page still lacks. A segment whose matches cost at most a
/// window's worth of docs to read (a rare word, not a phrase) is read in
/// one pass rather than with a new scorer per window. Each window's
/// filtered parts (phrases, cut milliseconds) check only the window's
/// candidates (see [`Recheck::scorer_within`]).
fn newest_from_end(
    weight: &dyn Weight,
    reader: &SegmentReader,
    seqs: &Column<u64>,
    best: &mut TopSeqs,
    recheck: &Recheck,
) -> Result<()> {
    let mut end = reader.max_doc();
    let mut window: DocId = 4096;
    // The first scorer serves the first window or, if cheap, the whole
    // segment (made again without bounds if its filtered parts had them).
    let (scorer, bound) = recheck.scorer_within(weight, reader, end.saturating_sub(window)..end)?;
    let mut first = Some(scorer);
    if first
        .as_ref()
        .is_some_and(|s| s.cost() <= u64::from(window))
    {
        // Cheap to read whole: in one pass, by a scorer of every doc.
        window = end;
        if bound {
            first = Some(weight.scorer(reader, 1.0)?);
        }
    }
    while end > 0 {
        let start = end.saturating_sub(window);
        let mut scorer = match first.take() {
            Some(scorer) => scorer,
            None => recheck.scorer_within(weight, reader, start..end)?.0,
        };
        let mut docs = Vec::new();
        let mut doc = scorer.seek(start.max(scorer.doc()));
        while doc < end {
            if alive(reader, doc) {
                docs.push(doc);
            }
            doc = scorer.advance();
        }
        for &doc in docs.iter().rev() {
            let Some(seq) = seqs.first(doc) else { continue };
            if !best.offer(seq) {
                return Ok(());
            }
        }
        end = start;
        window = next_window(window, docs.len(), best.missing());
    }
    Ok(())
}

/// The docs of the next window back: enough for the `missing` matches at
/// the density the last window (of `window` docs, `found` matches)
/// showed, and a quarter more, between a sixteenth and eight times the
/// last window; twice the last window if it held no match.
fn next_window(window: DocId, found: usize, missing: usize) -> DocId {
    if found == 0 {
        return window.saturating_mul(2);
    }
    let wanted = (missing.max(1) as u64 * u64::from(window) * 5 / 4).div_ceil(found as u64);
    let (low, high) = ((window / 16).max(64), window.saturating_mul(8));
    DocId::try_from(wanted)
        .unwrap_or(DocId::MAX)
        .clamp(low, high.max(low))
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A live, filtered subscription; see [`Index::tail`].
#[derive(Debug)]
pub struct Tail {
    query: Query,
    subscription: lode_engine::Subscription,
}

impl Tail {
    /// The next matching record, waiting at most `timeout` in all.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.subscription.next_timeout(left)? {
                Some(record) if self.query.matches(&Prepared::new(&record)) => {
                    return Ok(Some(record));
                }
                Some(_) if !left.is_zero() => continue,
                _ => return Ok(None),
            }
        }
    }
}

struct Indexer {
    engine: Arc<Engine>,
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    indexed_upto: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    commit_interval: Duration,
    /// Documents below this seq are deleted (or their deletion is pending).
    pruned_below: u64,
    prune_pending: bool,
}

impl Indexer {
    fn run(mut self, from: u64) -> Result<()> {
        let mut next = from;
        let mut pending: Option<u64> = None;
        let mut last_commit = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if !stopping && self.engine.wait_for(next, Duration::from_millis(20)) {
                // Index what is durable, in place, up to the commit deadline.
                // Bounded rounds, so commits stay timely while catching up.
                let end = self
                    .engine
                    .next_seq()
                    .min(next.saturating_add(CATCH_UP_ROUND));
                let (writer, fields) = (&self.writer, &self.fields);
                let mut failed = None;
                let mut batch = Vec::with_capacity(DOCS_PER_SEND);
                let reached = self.engine.visit(next..end, |seq, record| {
                    if failed.is_none() {
                        batch.push(UserOperation::Add(document(fields, seq, record)));
                        pending = Some(seq);
                        if batch.len() >= DOCS_PER_SEND
                            && let Err(e) = writer.run(batch.drain(..))
                        {
                            failed = Some(e);
                        }
                    }
                })?;
                if failed.is_none()
                    && !batch.is_empty()
                    && let Err(e) = writer.run(batch.drain(..))
                {
                    failed = Some(e);
                }
                if let Some(e) = failed {
                    return Err(e.into());
                }
                next = reached.max(next);
            }
            let pruned = self.prune_retained()?;
            let due = stopping || last_commit.elapsed() >= self.commit_interval;
            if due && (pending.is_some() || pruned) {
                let seq = pending.unwrap_or_else(|| self.indexed_upto.load(Ordering::Acquire));
                self.commit(seq)?;
                pending = None;
                last_commit = Instant::now();
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Deletes the documents of records retention dropped from the engine
    /// (below its first seq); true when there is a deletion to commit.
    fn prune_retained(&mut self) -> Result<bool> {
        let floor = self.engine.first_seq();
        if floor <= self.pruned_below {
            return Ok(self.prune_pending);
        }
        let upper = Bound::Excluded(Term::from_field_u64(self.fields.seq, floor));
        self.writer
            .delete_query(Box::new(RangeQuery::new(Bound::Unbounded, upper)))?;
        self.pruned_below = floor;
        self.prune_pending = true;
        Ok(true)
    }

    fn commit(&mut self, seq: u64) -> Result<()> {
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&seq.to_string());
        prepared.commit()?;
        self.reader.reload()?;
        self.indexed_upto.store(seq, Ordering::Release);
        self.prune_pending = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lode_engine::{LogRecord, Options};

    use super::*;

    /// A window back from the end is sized by the density the last one
    /// showed, within bounds, and doubles when the last held nothing.
    #[test]
    fn next_window_follows_the_density_seen() {
        // 80 matches in 4096 docs, 20 missing: 20 / (80 / 4096) * 1.25.
        assert_eq!(next_window(4096, 80, 20), 1280);
        assert_eq!(next_window(4096, 0, 20), 8192);
        // Dense: a sixteenth of the window at least (and 64 docs).
        assert_eq!(next_window(4096, 4000, 1), 256);
        assert_eq!(next_window(100, 100, 1), 64);
        // Sparse: eight times the window at most.
        assert_eq!(next_window(4096, 1, 99), 32768);
        assert_eq!(next_window(DocId::MAX, 1, 100), DocId::MAX);
        assert_eq!(next_window(DocId::MAX, 0, 100), DocId::MAX);
    }

    fn open(dir: &Path, times: &[i64]) -> (Arc<Engine>, Index) {
        let engine = Arc::new(Engine::open(dir.join("data"), Options::default()).unwrap());
        let records: Vec<LogRecord> = times
            .iter()
            .map(|&ts| LogRecord {
                ts,
                message: "tick".into(),
                ..LogRecord::default()
            })
            .collect();
        engine.append(&records).unwrap();
        let index = Index::open(
            Arc::clone(&engine),
            dir.join("index"),
            IndexOptions::default(),
        )
        .unwrap();
        assert!(index.wait_indexed(times.len() as u64, Duration::from_secs(30)));
        (engine, index)
    }

    /// Every match in the range once, newest seq first (the order a
    /// search pages in), and a visitor's `false` stops the walk.
    #[test]
    fn for_each_match_visits_the_range_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let base = 1_700_000_000_000_000_000;
        let times: Vec<i64> = (0..10_000).map(|i| base + i * 1_000_000).collect();
        let (_engine, index) = open(dir.path(), &times);
        let (since, until) = (Some(times[100]), Some(times[9_000]));
        let mut seen = Vec::new();
        index
            .for_each_match("tick", None, since, until, &mut |seq, record| {
                assert!(record.ts >= times[100] && record.ts < times[9_000]);
                seen.push(seq);
                true
            })
            .unwrap();
        let want: Vec<u64> = (101..=9_000).rev().collect();
        assert_eq!(seen, want);
        let mut first = Vec::new();
        index
            .for_each_match("tick", None, None, None, &mut |seq, _| {
                first.push(seq);
                first.len() < 3
            })
            .unwrap();
        assert_eq!(first, [10_000, 9_999, 9_998]);
        let mut none = 0;
        index
            .for_each_match("tock", None, None, None, &mut |_, _| {
                none += 1;
                true
            })
            .unwrap();
        assert_eq!(none, 0);
    }

    /// Three records in one millisecond and one in the next: bounds and
    /// bucket edges that cut the millisecond are settled by exact times.
    #[test]
    fn bounds_and_edges_inside_a_millisecond_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let ms = 1_700_000_000_000_000_000;
        let (_engine, index) = open(dir.path(), &[ms + 100, ms + 500, ms + 900, ms + 1_000_100]);
        let count = |since, until| index.count("tick", None, since, until).unwrap();
        assert_eq!(count(Some(ms + 500), None), 3);
        assert_eq!(count(Some(ms + 501), None), 2);
        assert_eq!(count(None, Some(ms + 500)), 1);
        assert_eq!(count(Some(ms + 100), Some(ms + 901)), 3);
        assert_eq!(count(Some(ms + 101), Some(ms + 900)), 1);
        assert_eq!(count(Some(ms), Some(ms + 1_000_000)), 3);
        assert_eq!(count(Some(ms + 1_000_000), Some(ms + 1_000_101)), 1);
        assert_eq!(count(Some(ms + 1), Some(ms)), 0);
        let page = index
            .search(&Search {
                query: "tick".into(),
                since: Some(ms + 200),
                until: Some(ms + 1_000_000),
                ..Search::default()
            })
            .unwrap();
        let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [3, 2]);
        let histogram = index
            .histogram("*", None, Some(ms), Some(ms + 2_000_000), Some(400))
            .unwrap();
        assert_eq!(histogram.start, ms);
        let nonzero: Vec<(usize, u64)> = histogram
            .buckets
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(nonzero, [(0, 1), (1, 1), (2, 1), (2500, 1)]);
        let whole = index.histogram("*", None, None, None, None).unwrap();
        assert_eq!(whole.buckets.iter().sum::<u64>(), 4);
    }

    /// Bounds at the ends of time: the grains of i64::MIN and i64::MAX
    /// are cut like any other.
    #[test]
    fn bounds_at_the_ends_of_time() {
        let dir = tempfile::tempdir().unwrap();
        let (low, high) = (i64::MIN + 5, i64::MAX - 5);
        let (_engine, index) = open(dir.path(), &[low, high]);
        let count = |since, until| index.count("tick", None, since, until).unwrap();
        assert_eq!(count(None, Some(i64::MAX)), 2);
        assert_eq!(count(Some(i64::MAX), None), 0);
        assert_eq!(count(Some(high), None), 1);
        assert_eq!(count(Some(high + 1), None), 0);
        assert_eq!(count(Some(i64::MIN), Some(low)), 0);
        assert_eq!(count(Some(i64::MIN), Some(low + 1)), 1);
        assert_eq!(count(None, Some(i64::MIN)), 0);
        let last = index.histogram("tick", None, Some(high - 1000), None, None);
        assert_eq!(last.unwrap().buckets.iter().sum::<u64>(), 1);
        // Every time there is: counted, or refused as too many buckets.
        match index.histogram("tick", None, None, None, None) {
            Ok(histogram) => assert_eq!(histogram.buckets.iter().sum::<u64>(), 2),
            Err(e) => assert!(e.to_string().contains("buckets"), "{e}"),
        }
    }

    /// An index of another schema (an older lode's) is rebuilt from the
    /// engine instead of refusing to open.
    #[test]
    fn an_index_of_another_schema_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let index_dir = dir.path().join("index");
        std::fs::create_dir_all(&index_dir).unwrap();
        let mut builder = tantivy::schema::Schema::builder();
        builder.add_i64_field("ts", tantivy::schema::FAST);
        tantivy::Index::create_in_dir(&index_dir, builder.build()).unwrap();
        let (_engine, index) = open(dir.path(), &[1, 2, 3]);
        assert_eq!(index.count("*", None, None, None).unwrap(), 3);
    }

    /// An index of before top values were tallied from bitmaps (level,
    /// service, host and tenant columns too) is rebuilt at open, without
    /// them.
    #[test]
    fn an_index_with_value_columns_is_rebuilt() {
        use tantivy::schema::{FAST, IndexRecordOption, TextFieldIndexing, TextOptions};

        use crate::schema::{ATTR_FIELD, SEQ_FIELD, TS_FIELD};
        let old_schema = |columns: bool| {
            let indexing = |tokenizer: &str| {
                let indexing = TextFieldIndexing::default()
                    .set_tokenizer(tokenizer)
                    .set_index_option(IndexRecordOption::Basic)
                    .set_fieldnorms(false);
                TextOptions::default().set_indexing_options(indexing)
            };
            let mut builder = tantivy::schema::Schema::builder();
            builder.add_u64_field(SEQ_FIELD, FAST);
            builder.add_i64_field(TS_FIELD, FAST);
            builder.add_text_field("message", indexing(TOKENIZER));
            for name in ["level", "service", "host", "tenant"] {
                let value = indexing("raw");
                builder.add_text_field(
                    name,
                    if columns {
                        value.set_fast("raw")
                    } else {
                        value
                    },
                );
            }
            builder.add_text_field(ATTR_FIELD, indexing("raw"));
            builder.build()
        };
        // The columns are the only difference.
        assert_eq!(old_schema(false), schema(false).0);
        let dir = tempfile::tempdir().unwrap();
        let index_dir = dir.path().join("index");
        std::fs::create_dir_all(&index_dir).unwrap();
        tantivy::Index::create_in_dir(&index_dir, old_schema(true)).unwrap();
        let (_engine, index) = open(dir.path(), &[1, 2, 3]);
        assert_eq!(index.count("*", None, None, None).unwrap(), 3);
        let level = FacetField::Level;
        assert_eq!(
            index
                .top_values("*", None, Some(0), None, level, 1)
                .unwrap()
                .len(),
            1
        );
        let rebuilt = tantivy::Index::open_in_dir(&index_dir).unwrap().schema();
        assert_eq!(rebuilt, schema(false).0);
    }

    /// An index of the tokenizer before long numbers went into buckets
    /// (named "lode", every number a term of its own) is rebuilt at open:
    /// a long number is then found through its bucket.
    #[test]
    fn an_index_without_number_buckets_is_rebuilt() {
        use tantivy::tokenizer::{LowerCaser, SimpleTokenizer, TextAnalyzer};
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path().join("data"), Options::default()).unwrap());
        let record = LogRecord {
            message: "served block 1608999687919862906 to 10.0.3.7".into(),
            ..LogRecord::default()
        };
        engine.append(std::slice::from_ref(&record)).unwrap();
        // The index of before: every number a term, and the tokenizer's
        // name in its schema "lode".
        let index_dir = dir.path().join("index");
        std::fs::create_dir_all(&index_dir).unwrap();
        let (schema, fields) = schema(false);
        let old = tantivy::Index::create_in_dir(&index_dir, schema).unwrap();
        let words = TextAnalyzer::builder(SimpleTokenizer::default()).filter(LowerCaser);
        old.tokenizers().register(TOKENIZER, words.build());
        let mut writer: tantivy::IndexWriter = old.writer(15_000_000).unwrap();
        engine
            .visit(1..2, |seq, record| {
                writer.add_document(document(&fields, seq, record)).unwrap();
            })
            .unwrap();
        let mut prepared = writer.prepare_commit().unwrap();
        prepared.set_payload("1");
        prepared.commit().unwrap();
        drop(writer);
        let meta = index_dir.join("meta.json");
        let text = std::fs::read_to_string(&meta).unwrap();
        let renamed = text.replace(&format!("\"{TOKENIZER}\""), "\"lode\"");
        std::fs::write(&meta, renamed).unwrap();
        let index = Index::open(engine, &index_dir, IndexOptions::default()).unwrap();
        assert!(index.wait_indexed(1, Duration::from_secs(30)));
        for query in [
            "1608999687919862906",
            "block 1608999687919862906",
            "160899*",
        ] {
            assert_eq!(index.count(query, None, None, None).unwrap(), 1, "{query}");
        }
        assert_eq!(
            index
                .count("1608999687919862907", None, None, None)
                .unwrap(),
            0
        );
    }

    /// Phrases beside other conditions of an AND are checked together,
    /// after the rest: each phrase must hold, with or without positions.
    #[test]
    fn phrases_in_one_conjunction_each_hold() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path().join("data"), Options::default()).unwrap());
        let records = [
            ("api", "disk full on sda"),
            ("api", "full disk on sda"),
            ("api", "disk full sda on"),
            ("db", "disk full on sda"),
            ("api", "on sda disk full"),
        ];
        let records: Vec<LogRecord> = records
            .iter()
            .map(|(service, message)| LogRecord {
                service: (*service).into(),
                message: (*message).into(),
                ..LogRecord::default()
            })
            .collect();
        engine.append(&records).unwrap();
        for positions in [false, true] {
            let opts = IndexOptions {
                positions,
                ..IndexOptions::default()
            };
            let index = Index::open(Arc::clone(&engine), dir.path().join("index"), opts).unwrap();
            assert!(index.wait_indexed(5, Duration::from_secs(30)));
            let seqs = |query: &str| -> Vec<u64> {
                let search = Search {
                    query: query.into(),
                    ..Search::default()
                };
                let page = index.search(&search).unwrap();
                page.records.iter().map(|r| r.seq).collect()
            };
            assert_eq!(seqs("\"disk full\" \"on sda\""), [5, 4, 1], "{positions}");
            assert_eq!(seqs("\"on sda\" \"disk full\" service:api"), [5, 1]);
            assert_eq!(seqs("-\"on sda\""), [3]);
            assert_eq!(seqs("disk -\"on sda\""), [3]);
            let not_phrase = "\"disk full\" -\"on sda\"";
            assert_eq!(index.count(not_phrase, None, None, None).unwrap(), 1);
            assert_eq!(seqs(not_phrase), [3]);
            assert_eq!(seqs("(\"disk full\" \"full on\") OR \"sda on\""), [4, 3, 1]);
            assert_eq!(seqs("(\"full disk\" \"disk on\") OR \"sda on\""), [3, 2]);
            assert_eq!(
                index
                    .count("service:db \"full disk\"", None, None, None)
                    .unwrap(),
                0
            );
            index.close().unwrap();
        }
    }

    /// Turning positions on or off rebuilds the index; phrases give the
    /// same answers either way.
    #[test]
    fn positions_can_be_turned_on_and_off() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path().join("data"), Options::default()).unwrap());
        let messages = ["Connection refused by peer", "refused: connection lost"];
        let records: Vec<LogRecord> = messages
            .iter()
            .map(|m| LogRecord {
                message: (*m).into(),
                ..LogRecord::default()
            })
            .collect();
        engine.append(&records).unwrap();
        for positions in [false, true, false] {
            let opts = IndexOptions {
                positions,
                ..IndexOptions::default()
            };
            let index = Index::open(Arc::clone(&engine), dir.path().join("index"), opts).unwrap();
            assert!(index.wait_indexed(2, Duration::from_secs(30)));
            assert_eq!(
                index.count("*", None, None, None).unwrap(),
                2,
                "{positions}"
            );
            let page = index
                .search(&Search {
                    query: "\"connection refused\"".into(),
                    ..Search::default()
                })
                .unwrap();
            let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, [1], "positions: {positions}");
            assert_eq!(
                index.count("connection refused", None, None, None).unwrap(),
                2
            );
            index.close().unwrap();
        }
    }
}

#[cfg(test)]
mod field_bitmaps {
    use lode_engine::{Level, LogRecord, Options};

    use super::*;

    /// Records `seqs` (as numbers), `step` ns apart from `ts`: every
    /// `error_every`-th an error, the others info.
    fn leveled(seqs: std::ops::Range<u64>, ts: i64, step: i64, error_every: u64) -> Vec<LogRecord> {
        seqs.map(|i| LogRecord {
            ts: ts + i as i64 * step,
            level: if i % error_every == 0 {
                Level::Error
            } else {
                Level::Info
            },
            message: format!("message {i}"),
            ..LogRecord::default()
        })
        .collect()
    }

    /// Whether the field bitmaps answer `query` (every segment's).
    fn answered_by_bitmaps(index: &Index, query: &str) -> bool {
        let query = parse(query).unwrap();
        index.field_matches(&query, |_, _| ()).unwrap().is_some()
    }

    /// An index over `engine` in `dir/index` that commits every 5 ms.
    fn quick_index(engine: &Arc<Engine>, dir: &Path) -> Index {
        let opts = IndexOptions {
            commit_interval: Duration::from_millis(5),
            ..IndexOptions::default()
        };
        Index::open(Arc::clone(engine), dir.join("index"), opts).unwrap()
    }

    /// Counts and top values of field-filter queries, answered from the
    /// field bitmaps, equal what tantivy finds (forced by a time range that
    /// holds every record), over several segments, odd levels and empty
    /// values included.
    #[test]
    fn field_bitmaps_answer_as_tantivy_does() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path().join("data"), Options::default()).unwrap());
        let index = quick_index(&engine, dir.path());
        let levels = [
            Level::Info,
            Level::Warn,
            Level::Error,
            Level::Other("NOTICE".into()),
        ];
        let records: Vec<LogRecord> = (0..3000u64)
            .map(|i| LogRecord {
                ts: 1_700_000_000_000_000_000 + i as i64,
                level: levels[(i % 7 % 4) as usize].clone(),
                service: ["api", "db", "", "Web"][(i % 5 % 4) as usize].into(),
                host: format!("h{}", i % 3),
                attrs: vec![
                    (
                        "component".into(),
                        ["Dfs", "net", "gc"][(i % 3) as usize].into(),
                    ),
                    // 500 values in each segment: too many for bitmaps.
                    ("id".into(), i.to_string()),
                ],
                message: format!("message {i}"),
                tenant: String::new(),
            })
            .collect();
        // One commit (a segment) per chunk.
        for chunk in records.chunks(500) {
            let appended = engine.append(chunk).unwrap();
            assert!(index.wait_indexed(appended.end - 1, Duration::from_secs(30)));
        }
        assert!(index.reader.searcher().segment_readers().len() > 1);
        let queries = [
            "*",
            "level:error",
            "level:notice",
            "level:>=warn",
            "NOT level:info",
            "service:api OR host:h2",
            "service:web level:error",
            "(service:db OR service:api) -host:h1",
            "service:nothing",
            "attrs.component:dfs",
            "attrs.component:net level:error",
            "NOT attrs.component:gc OR host:h1",
            "attrs.nothing:x",
        ];
        for query in queries {
            assert!(answered_by_bitmaps(&index, query), "{query}");
            let everything = Some(0);
            assert_eq!(
                index.count(query, None, None, None).unwrap(),
                index.count(query, None, everything, None).unwrap(),
                "count of {query}"
            );
            for field in [FacetField::Level, FacetField::Service, FacetField::Host] {
                assert_eq!(
                    index.top_values(query, None, None, None, field, 3).unwrap(),
                    index
                        .top_values(query, None, everything, None, field, 3)
                        .unwrap(),
                    "top {field:?} of {query}"
                );
            }
        }
        // Words and attribute keys with many values are not in the
        // bitmaps: tantivy answers.
        for query in [
            "message level:error",
            "attrs.id:7",
            "attrs.id:7 OR level:info",
        ] {
            assert!(!answered_by_bitmaps(&index, query), "{query}");
        }
        assert_eq!(index.count("attrs.id:7", None, None, None).unwrap(), 1);
        // Attribute bitmaps are built when a query first asks for one.
        let searcher = index.reader.searcher();
        let segment = &searcher.segment_readers()[0];
        let bitmaps = FieldBitmaps::build(segment).unwrap();
        let before = bitmaps.bytes();
        let query = parse("attrs.component:net").unwrap();
        assert!(bitmaps.matches(segment, &query).is_some());
        assert!(bitmaps.bytes() > before);
        assert_eq!(index.count("*", None, None, None).unwrap(), 3000);
        assert!(index.stats().bitmap_bytes > 0);
    }

    /// Retention deletes the oldest records from a segment that also holds
    /// newer ones: its bitmaps still hold the deleted docs, so counts and
    /// top values of field filters go through tantivy.
    #[test]
    fn a_segment_with_deleted_docs_is_not_answered_from_bitmaps() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            retention: lode_engine::Retention {
                max_age: Some(Duration::from_secs(100)),
                max_bytes: None,
            },
            ..Options::default()
        };
        let engine = Arc::new(Engine::open(dir.path().join("data"), opts).unwrap());
        let base = lode_engine::now_ns();
        for segment in 0..4u64 {
            let records = leveled(segment * 100..segment * 100 + 100, base, 1_000_000_000, 2);
            engine.append(&records).unwrap();
            engine.seal().unwrap();
        }
        // Indexed after the fact: one commit, one segment for all four.
        let index = quick_index(&engine, dir.path());
        assert!(index.wait_indexed(400, Duration::from_secs(30)));
        assert_eq!(index.reader.searcher().segment_readers().len(), 1);
        // Drops the first two engine segments (seqs 1 to 200).
        let now = base + 300 * 1_000_000_000;
        assert_eq!(engine.enforce_retention(now).unwrap().records, 200);
        let deadline = Instant::now() + Duration::from_secs(30);
        while index.count("*", None, Some(0), None).unwrap() != 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(index.count("*", None, None, None).unwrap(), 200);
        assert_eq!(index.count("level:error", None, None, None).unwrap(), 100);
        assert_eq!(
            index
                .top_values("*", None, None, None, FacetField::Level, 2)
                .unwrap(),
            vec![("error".to_owned(), 100), ("info".to_owned(), 100)]
        );
        // A time range: counted by each doc's level, deleted docs left
        // out by tantivy.
        assert_eq!(
            index
                .top_values("*", None, Some(0), None, FacetField::Level, 2)
                .unwrap(),
            vec![("error".to_owned(), 100), ("info".to_owned(), 100)]
        );
    }

    /// A segment with more hosts than ordinals tell apart tallies top
    /// hosts against its bitmaps, and levels by ordinals: both as counted.
    #[test]
    fn top_values_of_a_field_of_too_many_values_for_ordinals() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path().join("data"), Options::default()).unwrap());
        let records: Vec<LogRecord> = (0..66_000u32)
            .map(|i| LogRecord {
                ts: 1_700_000_000_000_000_000 + i64::from(i),
                level: if i % 3 == 0 {
                    Level::Error
                } else {
                    Level::Info
                },
                host: format!("h{}", i % 65_600),
                message: "tick".into(),
                ..LogRecord::default()
            })
            .collect();
        engine.append(&records).unwrap();
        // One segment, written and committed here as the indexer would
        // (its payload the last seq indexed), so no commit falls midway.
        let index_dir = dir.path().join("index");
        std::fs::create_dir_all(&index_dir).unwrap();
        let (schema, fields) = schema(false);
        let built = tantivy::Index::create_in_dir(&index_dir, schema).unwrap();
        built.tokenizers().register(TOKENIZER, analyzer());
        let mut writer: tantivy::IndexWriter =
            built.writer_with_num_threads(1, 50_000_000).unwrap();
        engine
            .visit(1..66_001, |seq, record| {
                writer.add_document(document(&fields, seq, record)).unwrap();
            })
            .unwrap();
        let mut prepared = writer.prepare_commit().unwrap();
        prepared.set_payload("66000");
        prepared.commit().unwrap();
        drop(writer);
        let index = Index::open(Arc::clone(&engine), &index_dir, IndexOptions::default()).unwrap();
        assert_eq!(index.stats().indexed_upto, 66_000);
        let searcher = index.reader.searcher();
        assert_eq!(searcher.segment_readers().len(), 1);
        let columns = index.columns.of(&searcher.segment_readers()[0]).unwrap();
        let bitmaps = columns.bitmaps.as_ref().unwrap();
        assert!(bitmaps.ordinals(FacetField::Host).is_none());
        assert!(bitmaps.ordinals(FacetField::Level).is_some());
        // Hosts h0 to h399 hold two records each, the rest one.
        let hosts = index
            .top_values("tick", None, Some(0), None, FacetField::Host, 2)
            .unwrap();
        assert_eq!(hosts, vec![("h0".to_owned(), 2), ("h1".to_owned(), 2)]);
        let levels = index
            .top_values("tick", None, Some(0), None, FacetField::Level, 2)
            .unwrap();
        assert_eq!(
            levels,
            vec![("info".to_owned(), 44_000), ("error".to_owned(), 22_000)]
        );
    }

    /// Off, no bitmaps are built or used, and answers are the same.
    #[test]
    fn field_bitmaps_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path().join("data"), Options::default()).unwrap());
        engine
            .append(&leveled(0..100, 1_700_000_000_000_000_000, 1, 4))
            .unwrap();
        let opts = IndexOptions {
            field_bitmaps: false,
            ..IndexOptions::default()
        };
        let index = Index::open(Arc::clone(&engine), dir.path().join("index"), opts).unwrap();
        assert!(index.wait_indexed(100, Duration::from_secs(30)));
        assert!(!answered_by_bitmaps(&index, "level:error"));
        assert_eq!(index.count("level:error", None, None, None).unwrap(), 25);
        assert_eq!(
            index
                .top_values("*", None, None, None, FacetField::Level, 2)
                .unwrap(),
            vec![("info".to_owned(), 75), ("error".to_owned(), 25)]
        );
        assert_eq!(index.stats().bitmap_bytes, 0);
    }
}
