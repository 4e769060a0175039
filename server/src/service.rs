//! The one place every front end (binary protocol, HTTP, syslog, the CLI's
//! embedded mode) reaches the engine and the index through.
//!
//! The engine and index are blocking; each call here moves its work to
//! tokio's blocking pool so no async worker waits on a disk or a search.
//! Owns the mapping of engine and index errors to wire error codes and the
//! query time limit.

use std::sync::Arc;
use std::time::Duration;

use lode_engine::{
    BatchKey, EncodedBatch, Engine, FrameKind, LogRecord, SeqRange, now_ns, stored_tenant,
    tenant_name,
};
use lode_index::{FacetField, Histogram, Index, IndexOptions, Page, Search, Tail};
use lode_protocol::ErrorCode;
use lode_protocol::wire::Filter;
use lode_replication::ClusterNode;
use tokio::sync::{Semaphore, oneshot};

use crate::auth::{self, Caller, NewToken, Scope, Tokens};
use crate::config::{Config, Limits};
use crate::metrics::{Metrics, Source};
use crate::scoped::Scoped;
use crate::tenants::Tenants;

/// A failed request: a stable code and a message naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    /// When a refusal for load (`busy`) may be tried again, in seconds
    /// (HTTP's `Retry-After`).
    pub retry_after_s: Option<u64>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The same failure, to be tried again after `wait` (rounded up to
    /// whole seconds, at least one).
    pub fn retry_after(mut self, wait: Duration) -> Failure {
        self.retry_after_s = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        self
    }
}

impl From<lode_engine::Error> for Failure {
    fn from(e: lode_engine::Error) -> Failure {
        use lode_engine::Error as E;
        let code = match &e {
            E::BatchTooLarge { .. } => ErrorCode::TooLarge,
            E::InvalidArgument(_) | E::Codec(_) => ErrorCode::BadRequest,
            E::Poisoned { .. } | E::Closed => ErrorCode::Unavailable,
            E::NoSpace { .. } => ErrorCode::NoSpace,
            _ => ErrorCode::Internal,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<lode_index::Error> for Failure {
    fn from(e: lode_index::Error) -> Failure {
        use lode_index::Error as E;
        match e {
            E::Query(parse) => Failure::new(ErrorCode::BadQuery, parse.to_string()),
            E::BadRequest(reason) => Failure::new(ErrorCode::BadRequest, reason),
            E::Engine(engine) => engine.into(),
            other => Failure::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

/// Result of a service call.
pub type Outcome<T> = std::result::Result<T, Failure>;

/// An engine, its index, the limits and the figures of a server.
#[derive(Debug)]
pub struct Service {
    engine: Arc<Engine>,
    index: Arc<Index>,
    /// Present when this server is a node of a cluster: appends go
    /// through its Raft log, not straight to the engine.
    cluster: Option<Arc<ClusterNode>>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Turns of `limits.max_queries`.
    queries: Arc<Semaphore>,
    /// Whether requests must carry a credential.
    pub auth: auth::Mode,
    /// Whether `/metrics` is served without one.
    pub metrics_open: bool,
    /// The tokens, as of the engine's settings generation they were
    /// read at.
    tokens: std::sync::Mutex<(u64, Arc<Tokens>)>,
    /// Who plain syslog may come from, and its tenant.
    syslog: crate::config::SyslogAccess,
    /// Each tenant's limits and counts.
    pub tenants: Arc<Tenants>,
}

/// The engine lives in the data directory itself, the index beside it in
/// `index/`.
const INDEX_DIR: &str = "index";

impl Service {
    /// Opens (creating if needed) the data directory of `config`. Fails
    /// with the engine's `Locked` error, naming the holder, when another
    /// process has it.
    pub fn open(config: &Config) -> crate::Result<Service> {
        let engine = Arc::new(Engine::open(&config.data, config.engine_options()?)?);
        let index = Index::open(
            Arc::clone(&engine),
            config.data.join(INDEX_DIR),
            IndexOptions {
                max_limit: config.limits.max_result_records,
                background: config.background()?,
                positions: config.storage.phrase_positions,
                field_bitmaps: config.storage.field_bitmaps,
                commit_interval: config.index_commit_interval()?,
                ..IndexOptions::default()
            },
        )?;
        Ok(Service {
            engine,
            index: Arc::new(index),
            cluster: None,
            limits: config.limits.clone(),
            metrics: Arc::default(),
            queries: Arc::new(Semaphore::new(config.limits.max_queries.max(1))),
            auth: config.auth_mode()?,
            metrics_open: config.auth.metrics_open,
            tokens: std::sync::Mutex::new((u64::MAX, Arc::default())),
            syslog: config.syslog_access()?,
            tenants: Arc::new(config.tenants()?),
        })
    }

    /// The tokens this server knows (read again when the engine's
    /// settings changed: a token created or revoked on any node).
    pub fn tokens(&self) -> Arc<Tokens> {
        let generation = self.engine.settings_generation();
        let mut cached = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.0 != generation {
            let settings = self.engine.settings();
            *cached = (generation, Arc::new(Tokens::from_settings(settings.iter())));
        }
        Arc::clone(&cached.1)
    }

    /// Who a request acts as: `presented` is its token, `asked` the
    /// tenants it names. A refusal is counted for `front`.
    pub fn authenticate(
        &self,
        front: Source,
        presented: Option<&str>,
        asked: Option<Vec<String>>,
    ) -> Outcome<Caller> {
        let caller = auth::caller(self.auth, &self.tokens(), presented, asked, now_ns());
        if caller.is_err() {
            self.metrics.auth_failed(front);
        }
        self.counted(caller)
    }

    /// The limits of a caller's one tenant (a read of several tenants has
    /// the server's).
    fn tenant_limits(&self, caller: &Caller) -> Option<crate::tenants::TenantLimits> {
        match caller.tenants.as_slice() {
            [one] => Some(self.tenants.limits(one)),
            _ => None,
        }
    }

    /// Who a client with a certificate of `tenant` (signed by
    /// `tls.client_ca`, checked in the TLS handshake) acts as: it writes
    /// that tenant's records.
    pub fn certified(&self, tenant: &str) -> Caller {
        Caller {
            scopes: auth::Scopes::parse("ingest").unwrap_or_default(),
            tenants: vec![tenant.to_owned()],
            token: None,
        }
    }

    /// Who a plain syslog sender at `ip` writes as: everyone where auth
    /// is off, else only senders in `syslog_allow` (refusals counted).
    pub fn syslog_caller(&self, ip: std::net::IpAddr) -> Option<Caller> {
        let allowed = self.auth == auth::Mode::Off || self.syslog.allow.iter().any(|n| n.holds(ip));
        if !allowed {
            self.metrics.auth_failed(Source::Syslog);
            return None;
        }
        Some(Caller {
            scopes: auth::Scopes::parse("ingest").unwrap_or_default(),
            tenants: vec![self.syslog.tenant.clone()],
            token: None,
        })
    }

    /// Makes a token (`admin` scope needed): stored as a setting, on every
    /// node of a cluster. The secret is in the answer and nowhere else.
    pub async fn create_token(
        &self,
        caller: &Caller,
        tenant: Option<&str>,
        scopes: auth::Scopes,
        expires: Option<i64>,
    ) -> Outcome<NewToken> {
        self.counted(caller.require(Scope::Admin))?;
        let made = auth::new_token(tenant, scopes, now_ns(), expires)
            .map_err(|e| Failure::new(ErrorCode::BadRequest, e))?;
        let value = serde_json::to_vec(&made.info)
            .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
        self.store_token(&made.info.id, value).await?;
        Ok(made)
    }

    /// Keeps a token's record (JSON of its `TokenInfo`) under its id.
    pub(crate) async fn store_token(&self, id: &str, value: Vec<u8>) -> Outcome<()> {
        let name = format!("{}{id}", auth::TOKEN_PREFIX);
        self.put_setting(name, Some(value)).await
    }

    /// Revokes token `id` (`admin` scope needed); false if there is none.
    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Outcome<bool> {
        self.counted(caller.require(Scope::Admin))?;
        let name = format!("{}{id}", auth::TOKEN_PREFIX);
        if !self.engine.settings().contains_key(&name) {
            return Ok(false);
        }
        self.put_setting(name, None).await?;
        Ok(true)
    }

    /// Sets an engine setting: through the log in a cluster (every node
    /// makes it), else straight to the engine.
    async fn put_setting(&self, name: String, value: Option<Vec<u8>>) -> Outcome<()> {
        if let Some(cluster) = &self.cluster {
            let done = cluster.put_setting(&name, value).await;
            return self.counted(done.map_err(cluster_failure));
        }
        let engine = Arc::clone(&self.engine);
        let done = blocking(move || Ok(engine.put_setting(&name, value.as_deref())?)).await;
        self.counted(done)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether writes are refused for want of disk space: this engine's,
    /// or in a cluster any member's (its alarm).
    fn refuses_for_space(&self) -> bool {
        match &self.cluster {
            Some(cluster) => !cluster.no_space_alarms().is_empty(),
            None => self.engine.space().low,
        }
    }

    /// Makes this service a node of a cluster: starts Raft over its engine
    /// (opened replicated, see [`Config::engine_options`]).
    pub async fn join_cluster(
        &mut self,
        config: &lode_replication::ClusterConfig,
    ) -> crate::Result<()> {
        let node = ClusterNode::start(Arc::clone(&self.engine), config).await?;
        self.cluster = Some(Arc::new(node));
        Ok(())
    }

    /// Checksums of this node's log through entry `through`, by ranges of
    /// [`VERIFY_RANGE`] entries: `(first, last, crc32c of every entry's
    /// term, index, kind and payload)`. Nodes whose logs agree through an
    /// index give the same list.
    pub async fn log_checksums(&self, from: u64, through: u64) -> Outcome<Vec<(u64, u64, u32)>> {
        let engine = Arc::clone(&self.engine);
        blocking(move || {
            let mut out = Vec::new();
            let mut start = from;
            while start <= through {
                let end = start
                    .saturating_add(VERIFY_RANGE)
                    .min(through.saturating_add(1));
                let entries = engine.read_entries(start..end)?;
                if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                    let mut crc = 0u32;
                    for e in &entries {
                        crc = crc32c::crc32c_append(crc, &e.term.to_le_bytes());
                        crc = crc32c::crc32c_append(crc, &e.index.to_le_bytes());
                        crc = crc32c::crc32c_append(crc, &[e.kind() as u8]);
                        crc = crc32c::crc32c_append(crc, e.frame.payload());
                    }
                    out.push((first.index, last.index, crc));
                }
                start = end;
            }
            Ok(out)
        })
        .await
    }

    /// The cluster node, when this server is one.
    pub fn cluster(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Checks a batch payload a client encoded (in `reserved`, after
    /// `HEADER_LEN` bytes of room; a keyed batch's ends with its key) and
    /// hands it to the log without waiting: appends submitted in order get
    /// seqs in order.
    pub async fn submit_payload(
        &self,
        caller: &Caller,
        kind: FrameKind,
        reserved: Vec<u8>,
    ) -> Outcome<PendingAppend> {
        self.counted(caller.require(Scope::Ingest))?;
        let write_tenant = self.counted(caller.write_tenant())?.to_owned();
        let any_tenant = caller.scopes.allow(Scope::Admin);
        let engine = Arc::clone(&self.engine);
        let max_records = self.limits.max_batch_records;
        let metrics = Arc::clone(&self.metrics);
        let tenants = Arc::clone(&self.tenants);
        let clustered = self.cluster.is_some();
        let submitted = blocking(move || {
            let bad = |e: lode_engine::CodecError| {
                Failure::new(ErrorCode::BadRequest, format!("append: {e}"))
            };
            let write = stored_tenant(&write_tenant);
            let (reserved, named) =
                EncodedBatch::stamp_tenant(kind, reserved, write).map_err(bad)?;
            check_batch_tenant(&named, write, any_tenant)?;
            let batch = EncodedBatch::from_reserved_kind(kind, reserved).map_err(bad)?;
            check_batch_records(batch.count() as usize, max_records)?;
            let tenant = match named.as_str() {
                "" => write_tenant.as_str(),
                named => tenant_name(named),
            };
            let batch = match batch.key() {
                Some(key) => batch
                    .with_key(BatchKey {
                        producer: tenant_producer(tenant, key.producer),
                        sequence: key.sequence,
                    })
                    .map_err(bad)?,
                None => batch,
            };
            let now = std::time::Instant::now();
            let (count, bytes) = (u64::from(batch.count()), batch.payload().len() as u64);
            tenants.admit(tenant, count, bytes, now)?;
            metrics.received(Source::Binary, u64::from(batch.count()));
            if clustered {
                return Ok(Checked::Batch(batch));
            }
            submit(&engine, batch).map(Checked::Submitted)
        })
        .await;
        let submitted = self.hand_off(submitted).await;
        self.counted(submitted)
    }

    /// A checked batch goes to the cluster (in a cluster) or is already
    /// with the engine.
    async fn hand_off(&self, checked: Outcome<Checked>) -> Outcome<PendingAppend> {
        match (checked?, &self.cluster) {
            (Checked::Submitted(pending), _) => Ok(pending),
            (Checked::Batch(batch), Some(cluster)) => {
                let pending = cluster.submit(batch).await.map_err(cluster_failure)?;
                let (tx, rx) = oneshot::channel();
                tokio::spawn(async move {
                    let _ = tx.send(pending.wait().await.map_err(cluster_failure));
                });
                Ok(PendingAppend(rx))
            }
            (Checked::Batch(_), None) => Err(Failure::new(
                ErrorCode::Internal,
                "a batch for a cluster on a server that is not a node",
            )),
        }
    }

    /// Waits, without holding a thread, until a submitted append is durable.
    pub async fn acknowledged(&self, pending: PendingAppend) -> Outcome<SeqRange> {
        let outcome = match pending.0.await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::new(
                ErrorCode::Unavailable,
                "the engine closed before the append was durable",
            )),
        };
        let range = self.counted(outcome)?;
        self.metrics.appended(range.len());
        Ok(range)
    }

    /// Appends records parsed by a front end, after the per-record limits
    /// (`max_line_bytes`, `max_attrs`), in batches the log takes (at most
    /// `max_batch_records` records and `max_frame_bytes` encoded each):
    /// nothing a client sends can make an append fail inside the log for
    /// its size. Answers once every batch is durable (committed, in a
    /// cluster), with each batch's seqs in the records' order.
    ///
    /// With `request_key` (HTTP's `Idempotency-Key`) each batch is keyed
    /// by it and its place in the request: a retry of the same body, after
    /// any failure, on any node, writes only the batches that did not
    /// land and is answered with the first seqs of those that did.
    pub async fn append_records(
        &self,
        caller: &Caller,
        records: Vec<LogRecord>,
        request_key: Option<&str>,
    ) -> Outcome<Appended> {
        self.counted(caller.require(Scope::Ingest))?;
        let name = self.counted(caller.write_tenant())?;
        let producer = match request_key {
            Some(text) => Some(self.counted(request_producer(name, text))?),
            None => None,
        };
        let bytes = records.iter().map(|r| r.text_len() as u64).sum();
        let admitted =
            self.tenants
                .admit(name, records.len() as u64, bytes, std::time::Instant::now());
        self.counted(admitted)?;
        let tenant = stored_tenant(name).to_owned();
        let limits = self.limits.clone();
        let max_bytes = self.engine.max_batch_bytes();
        let engine = Arc::clone(&self.engine);
        let clustered = self.cluster.is_some();
        let checked = blocking(move || {
            let mut records = records;
            limits.admit(&mut records)?;
            // A key takes KEY_LEN bytes of the batch's room.
            let room = max_bytes - producer.map_or(0, |_| lode_engine::KEY_LEN);
            let batches = encode_batches(&records, &tenant, limits.max_batch_records, room)?;
            batches
                .into_iter()
                .enumerate()
                .map(|(i, batch)| (u64::from(batch.count()), i, batch))
                .map(|(count, i, batch)| match producer {
                    Some(producer) => batch
                        .with_key(BatchKey {
                            producer,
                            sequence: i as u64,
                        })
                        .map(|batch| (count, batch))
                        .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string())),
                    None => Ok((count, batch)),
                })
                .map(|batch| match clustered {
                    true => batch.map(|(count, batch)| (count, Checked::Batch(batch))),
                    false => batch.and_then(|(count, batch)| {
                        submit(&engine, batch).map(|s| (count, Checked::Submitted(s)))
                    }),
                })
                .collect::<Outcome<Vec<(u64, Checked)>>>()
        })
        .await;
        let checked = self.counted(checked)?;
        let mut pending = Vec::with_capacity(checked.len());
        for (count, batch) in checked {
            pending.push((count, self.counted(self.hand_off(Ok(batch)).await)?));
        }
        let mut ranges = Vec::with_capacity(pending.len());
        for (i, (count, pending)) in pending.into_iter().enumerate() {
            let range = self.acknowledged(pending).await?;
            // A keyed batch answered from an earlier try of another size:
            // the key came with another body (or split otherwise).
            if producer.is_some() && range.end - range.start != count {
                return self.counted(Err(Failure::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this Idempotency-Key was first used for another body: its batch {i} \
                         held {} records, this one {count}",
                        range.end - range.start
                    ),
                )));
            }
            ranges.push(range);
        }
        Ok(Appended(ranges))
    }

    /// One page of the newest matches.
    pub async fn query(
        &self,
        caller: &Caller,
        filter: Filter,
        limit: usize,
        cursor: Option<String>,
    ) -> Outcome<Page> {
        let max = self
            .tenant_limits(caller)
            .and_then(|l| l.max_result_records)
            .unwrap_or(self.limits.max_result_records);
        let filter = everything_if_empty(filter);
        let search = Search {
            query: filter.query,
            since: filter.since,
            until: filter.until,
            limit: Some(limit),
            cursor,
            tenants: None,
        };
        self.timed(caller, move |index| {
            if limit > max {
                return Err(Failure::new(
                    ErrorCode::TooLarge,
                    format!("limit {limit} exceeds max_result_records = {max}"),
                ));
            }
            Ok(index.search(search)?)
        })
        .await
    }

    pub async fn count(&self, caller: &Caller, filter: Filter) -> Outcome<u64> {
        let filter = everything_if_empty(filter);
        self.timed(caller, move |index| {
            Ok(index.count(&filter.query, filter.since, filter.until)?)
        })
        .await
    }

    pub async fn histogram(
        &self,
        caller: &Caller,
        filter: Filter,
        width: Option<i64>,
    ) -> Outcome<Histogram> {
        let filter = everything_if_empty(filter);
        self.timed(caller, move |index| {
            Ok(index.histogram(&filter.query, filter.since, filter.until, width)?)
        })
        .await
    }

    pub async fn top(
        &self,
        caller: &Caller,
        filter: Filter,
        field: &str,
        k: usize,
    ) -> Outcome<Vec<(String, u64)>> {
        let filter = everything_if_empty(filter);
        let field = match field {
            "level" => Ok(FacetField::Level),
            "service" => Ok(FacetField::Service),
            "host" => Ok(FacetField::Host),
            "tenant" => Ok(FacetField::Tenant),
            other => Err(Failure::new(
                ErrorCode::BadRequest,
                format!("top values of '{other}': expected level, service, host or tenant"),
            )),
        };
        self.timed(caller, move |index| {
            Ok(index.top_values(&filter.query, filter.since, filter.until, field?, k)?)
        })
        .await
    }

    /// A live tail from `from_seq` (the next record when `None`) of the
    /// caller's tenants' records.
    pub fn tail(&self, caller: &Caller, query: &str, from_seq: Option<u64>) -> Outcome<Tail> {
        self.counted(caller.require(Scope::Read))?;
        let from = from_seq.unwrap_or_else(|| self.engine.next_seq());
        let query = if query.trim().is_empty() { "*" } else { query };
        let scoped = Scoped::new(&self.index, &caller.tenants);
        self.counted(scoped.tail(query, from).map_err(Failure::from))
    }

    /// The engine's, index's and server's figures, by name.
    pub fn figures(&self) -> Vec<(String, u64)> {
        let s = self.engine.stats();
        let i = self.index.stats();
        let mut figures: Vec<(String, u64)> = [
            ("records", s.records),
            ("first_seq", s.first_seq),
            ("next_seq", s.next_seq),
            ("wal_segments", s.wal_segments),
            ("wal_bytes", s.wal_bytes),
            ("unsealed_records", s.unsealed_records),
            ("sealed_segments", s.sealed_segments),
            ("sealed_records", s.sealed_records),
            ("sealed_bytes", s.sealed_bytes),
            ("wal_appends", s.appends),
            ("group_commits", s.group_commits),
            ("seal_failures", s.seal_failures),
            ("dropped_segments", s.dropped_segments),
            ("dropped_records", s.dropped_records),
            ("indexed_upto", i.indexed_upto),
            ("index_lag", i.lag),
            ("index_bitmap_bytes", i.bitmap_bytes),
            ("poisoned", u64::from(s.poisoned.is_some())),
            (
                "retention_max_bytes",
                self.engine.retention().max_bytes.unwrap_or(0),
            ),
            ("disk_free_bytes", self.engine.space().free),
            ("disk_free_floor_bytes", self.engine.space().floor),
            ("no_space", u64::from(self.refuses_for_space())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        figures.extend(self.metrics.figures());
        if let Some(cluster) = &self.cluster {
            figures.extend(raft_figures(&cluster.status()));
        }
        figures
    }

    /// Counts a failure in the metrics: every failure a `Service` call
    /// returns is counted here, once; front ends count only their own
    /// (bad frames, busy).
    fn counted<T>(&self, outcome: Outcome<T>) -> Outcome<T> {
        if let Err(failure) = &outcome {
            self.metrics.failed(failure.code);
        }
        outcome
    }

    /// Runs a read of `caller` (who needs the `read` scope) on the
    /// blocking pool in one of `max_queries` turns, bounded (waiting for
    /// the turn included) by `query_timeout_ms`. The work sees the index
    /// only as the caller may: restricted to its tenants.
    pub(crate) async fn timed<T, F>(&self, caller: &Caller, work: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(&Scoped<'_>) -> Outcome<T> + Send + 'static,
    {
        self.counted(caller.require(Scope::Read))?;
        self.metrics.query();
        let tenants = caller.tenants.clone();
        let index = Arc::clone(&self.index);
        let timeout = self
            .tenant_limits(caller)
            .and_then(|l| l.query_timeout_ms)
            .map_or_else(|| self.limits.query_timeout(), Duration::from_millis);
        let turns = Arc::clone(&self.queries);
        // The turn goes with the work: a query that times out still holds it
        // until its blocking work ends.
        let run = async move {
            let turn = turns
                .acquire_owned()
                .await
                .map_err(|_| Failure::new(ErrorCode::Internal, "the server is closing"))?;
            blocking(move || {
                let result = work(&Scoped::new(&index, &tenants));
                drop(turn);
                result
            })
            .await
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                ErrorCode::Timeout,
                format!(
                    "the request ran past query_timeout_ms = {} (max_queries = {} run at once)",
                    timeout.as_millis(),
                    self.limits.max_queries
                ),
            )),
        };
        self.counted(result)
    }

    /// Returns once a read here sees every write acknowledged before the
    /// call (a linearizable read follows it): in a cluster, this node has
    /// applied everything the leader had committed when it confirmed its
    /// leadership with a quorum; then the index has caught up with what
    /// this node holds.
    pub async fn linearize(&self) -> Outcome<()> {
        if let Some(cluster) = &self.cluster {
            cluster.read_barrier().await.map_err(cluster_failure)?;
        }
        let last = self.engine.next_seq().saturating_sub(1);
        let index = Arc::clone(&self.index);
        let caught_up =
            tokio::task::spawn_blocking(move || index.wait_indexed(last, LINEARIZE_TIMEOUT))
                .await
                .unwrap_or(false);
        if !caught_up {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                format!("the index did not reach seq {last} within {LINEARIZE_TIMEOUT:?}"),
            ));
        }
        Ok(())
    }

    /// Waits until every durable record is searchable (tests, the CLI).
    pub fn wait_indexed(&self, timeout: Duration) -> bool {
        let last = self.engine.next_seq().saturating_sub(1);
        self.index.wait_indexed(last, timeout)
    }

    /// Stops the indexer and closes the engine, when this is the last
    /// holder of them.
    pub fn close(self) -> crate::Result<()> {
        // The cluster node (stopped by the server) holds the engine too.
        drop(self.cluster);
        if let Ok(index) = Arc::try_unwrap(self.index) {
            index.close()?;
        }
        if let Ok(engine) = Arc::try_unwrap(self.engine) {
            engine.close()?;
        }
        Ok(())
    }
}

/// How long a linearizable read waits for the index to catch up.
const LINEARIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Entries per checksum of [`Service::log_checksums`].
pub(crate) const VERIFY_RANGE: u64 = 65_536;

/// The seqs of appended records: one range per batch, in the records'
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended(pub Vec<SeqRange>);

impl Appended {
    /// The seq of the `at`-th record appended.
    pub fn seq_of(&self, mut at: u64) -> Option<u64> {
        for range in &self.0 {
            if at < range.len() {
                return Some(range.start + at);
            }
            at -= range.len();
        }
        None
    }

    /// How many records were appended.
    pub fn len(&self) -> u64 {
        self.0.iter().map(SeqRange::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes `records` into batches of `tenant` (stored form) of at most
/// `max_records` records and `max_bytes` bytes of frame each; a record
/// that does not fit a batch alone is refused, naming it and the limit.
/// The producer a request key stands for: the first 8 bytes of the
/// SHA-256 of the tenant and the key, so that tenants' keys never meet.
/// A key is 1 to 255 visible ASCII characters.
fn request_producer(tenant: &str, key: &str) -> Outcome<u64> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            "Idempotency-Key: expected 1 to 255 visible ASCII characters",
        ));
    }
    Ok(tenant_hash(tenant, key.as_bytes()))
}

/// The producer a client's batch key is kept under: its own, scoped by
/// the tenant it writes for, so that no tenant's key can answer another's
/// retry.
fn tenant_producer(tenant: &str, producer: u64) -> u64 {
    tenant_hash(tenant, &producer.to_le_bytes())
}

/// The first 8 bytes of SHA-256(tenant, 0, bytes), little-endian.
fn tenant_hash(tenant: &str, bytes: &[u8]) -> u64 {
    let mut text = Vec::with_capacity(tenant.len() + bytes.len() + 1);
    text.extend_from_slice(tenant.as_bytes());
    text.push(0);
    text.extend_from_slice(bytes);
    let digest = ring::digest::digest(&ring::digest::SHA256, &text);
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(first)
}

fn encode_batches(
    records: &[LogRecord],
    tenant: &str,
    max_records: usize,
    max_bytes: usize,
) -> Outcome<Vec<EncodedBatch>> {
    let mut batches = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let end = records.len().min(at + max_records.max(1));
        let rest = records.get(at..end).unwrap_or_default();
        let (batch, taken) = EncodedBatch::encode_prefix_as(rest, tenant, max_bytes).map_err(|e| match e {
            lode_engine::CodecError::RecordTooLarge { bytes, .. } => Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "record {at} of the request encodes to {bytes} bytes, over max_frame_bytes = {max_bytes}"
                ),
            ),
            other => Failure::new(ErrorCode::BadRequest, format!("encoding records: {other}")),
        })?;
        batches.push(batch);
        at += taken;
    }
    Ok(batches)
}

/// An append handed to the engine (or the cluster), not yet durable
/// (or committed).
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Outcome<SeqRange>>);

/// A batch checked on the blocking pool: handed to the engine there, or
/// back for the cluster.
enum Checked {
    Submitted(PendingAppend),
    Batch(EncodedBatch),
}

fn submit(engine: &Engine, batch: EncodedBatch) -> Outcome<PendingAppend> {
    let (tx, rx) = oneshot::channel();
    engine.submit_encoded_then(batch, move |outcome| {
        let _ = tx.send(outcome.map_err(Failure::from));
    })?;
    Ok(PendingAppend(rx))
}

/// A cluster's refusal as a request failure: no leader, or a leader that
/// moved, is `unavailable` (retry); the message names the leader known.
fn cluster_failure(e: lode_replication::Error) -> Failure {
    use lode_replication::Error as E;
    let code = match &e {
        E::NotLeader { .. }
        | E::Stopped(_)
        | E::OutcomeUnknown(_)
        | E::Peer { .. }
        | E::Raft(_) => ErrorCode::Unavailable,
        E::Timeout(_) => ErrorCode::Timeout,
        E::TooLarge { .. } => ErrorCode::TooLarge,
        E::NoSpace { .. } => ErrorCode::NoSpace,
        _ => ErrorCode::Internal,
    };
    Failure::new(code, e.to_string())
}

/// A node's Raft figures for `/metrics`: term, leader (0 for none),
/// indexes, and the leader's largest follower lag in entries.
fn raft_figures(s: &lode_replication::Status) -> Vec<(String, u64)> {
    let last = s.last_log_index.unwrap_or(0);
    // A follower known to hold nothing lacks the whole log.
    let lag = |matched: &Option<u64>| match matched {
        Some(m) => last.saturating_sub(*m),
        None => s.last_log_index.map_or(0, |l| l + 1),
    };
    let max_lag = s
        .matched
        .iter()
        .filter(|(id, _)| **id != s.node_id)
        .map(|(_, matched)| lag(matched))
        .max()
        .unwrap_or(0);
    [
        ("raft_node_id", s.node_id),
        ("raft_term", s.term),
        ("raft_leader", s.leader.unwrap_or(0)),
        ("raft_is_leader", u64::from(s.role == "leader")),
        ("raft_last_log_index", last),
        ("raft_committed_index", s.committed.unwrap_or(0)),
        ("raft_applied_index", s.applied.unwrap_or(0)),
        ("raft_max_follower_lag", max_lag),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// No query text means every record (the parser itself wants `*`).
fn everything_if_empty(mut filter: Filter) -> Filter {
    if filter.query.trim().is_empty() {
        filter.query = "*".into();
    }
    filter
}

/// A tenant a client named in its batch (stored form; empty: none, so
/// the session's was stamped on it) must be the caller's `write` tenant,
/// or, for an admin, any valid one.
fn check_batch_tenant(named: &str, write: &str, any: bool) -> Outcome<()> {
    if named.is_empty() || named == write {
        return Ok(());
    }
    if any {
        return lode_protocol::auth::check_tenant(named)
            .map_err(|e| Failure::new(ErrorCode::BadRequest, format!("append: {e}")));
    }
    Err(Failure::new(
        ErrorCode::Forbidden,
        format!(
            "append: the batch is for tenant '{named}', this connection writes '{}'",
            tenant_name(write)
        ),
    ))
}

fn check_batch_records(count: usize, max: usize) -> Outcome<()> {
    if count > max {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("batch of {count} records exceeds max_batch_records = {max}"),
        ));
    }
    Ok(())
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce() -> Outcome<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(Failure::new(ErrorCode::Internal, format!("worker: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A query past its timeout keeps its turn until its work ends: with
    /// one turn, the next query waits for it (and times out too), and
    /// runs once it is over.
    #[test]
    fn abandoned_query_work_keeps_its_turn() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data: dir.path().to_owned(),
            ..Config::default()
        };
        config.limits.max_queries = 1;
        config.limits.query_timeout_ms = 100;
        let service = Service::open(&config).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let started = Instant::now();
            let caller = Caller::everything();
            let slow = service
                .timed(&caller, |_| {
                    std::thread::sleep(Duration::from_millis(600));
                    Ok(1)
                })
                .await;
            assert_eq!(slow.unwrap_err().code, ErrorCode::Timeout);
            let waiting = service.timed(&caller, |_| Ok(2)).await;
            let failure = waiting.unwrap_err();
            assert_eq!(failure.code, ErrorCode::Timeout);
            assert!(
                failure.message.contains("max_queries = 1"),
                "{}",
                failure.message
            );
            tokio::time::sleep(Duration::from_millis(600).saturating_sub(started.elapsed())).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(service.timed(&caller, |_| Ok(3)).await.unwrap(), 3);
        });
        service.close().unwrap();
    }
}
