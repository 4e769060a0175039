//! The server's configuration: a TOML file, flags on top, defaults that
//! work out of the box (data in `./lode-data`, loopback addresses).
//!
//! ```toml
//! data = "/var/lib/lode"
//! listen = "0.0.0.0:7400"      # binary protocol, TCP
//! quic = "0.0.0.0:7400"        # binary protocol, QUIC (UDP)
//! http = "0.0.0.0:7401"        # JSON API, Elasticsearch _bulk, /metrics
//! syslog = "0.0.0.0:7514"      # syslog, TCP and UDP
//! syslog_allow = ["10.0.0.0/8"] # where auth is required, plain syslog is heard from these only
//! syslog_tenant = "default"    # the tenant of plain syslog's records
//!
//! [limits]
//! max_frame_bytes = 67108864
//! max_batch_records = 100000
//! max_connections = 1024
//! max_in_flight = 64
//! query_timeout_ms = 10000
//! max_queries = 16
//! max_result_records = 10000
//! max_body_bytes = 67108864
//! max_syslog_bytes = 65536
//! max_http_requests = 256
//! max_unpacked_bytes = 268435456  # a gzip, zstd or snappy body, unpacked
//! max_line_bytes = 1048576     # longest message; longer: 413, or cut
//! truncate_lines = false       # true: cut long messages instead of refusing
//! max_attrs = 128              # most attributes (labels) per record
//! header_timeout_ms = 10000    # slow clients: HTTP headers
//! body_timeout_ms = 60000      # ... an HTTP body, a binary frame's payload
//!
//! [tls]
//! mode = "auto"                # TLS on HTTP and binary TCP beyond loopback; "on" or "off"
//! cert = "/etc/lode/cert.pem"  # absent: a self-signed pair made into DATA/tls
//! key = "/etc/lode/key.pem"
//! client_ca = "/etc/lode/ca.pem"  # client certificates of `lode cert client --tenant NAME`
//! syslog = "0.0.0.0:6514"      # syslog over TLS (RFC 5425)
//!
//! [storage]
//! durability = "sync"          # or "buffered" (synced within 10 ms; not on a cluster node)
//! segment_bytes = 67108864
//! background = "idle"         # sealing and indexing: "idle", "nice:N" or "normal"
//! phrase_positions = false     # true: fast phrase counts, index 11 bytes/record larger
//! field_bitmaps = true         # false: saves ~3.6 bytes/record of memory (~5.4 once attributes are queried); field-filter counts slower
//! index_commit_ms = 500        # new records searchable within this (plus indexing time); longer: fewer, larger index segments
//! retention_max_age_s = 604800
//! retention_max_bytes = 107374182400
//! free_space_floor = 1073741824  # writes refused (507) below this many free bytes; absent: 1 GiB or 5% of a smaller disk; 0: only a full disk
//!
//! [tenant_limits]               # every tenant's; 0 or absent: none
//! ingest_records_per_sec = 0   # past it: 429 with Retry-After (a second's worth may come at once)
//! ingest_bytes_per_sec = 0
//! query_timeout_ms = 10000     # absent: limits.query_timeout_ms
//! max_result_records = 10000   # absent: limits.max_result_records
//!
//! [tenant.team-a]              # one tenant's, over [tenant_limits]
//! ingest_records_per_sec = 50000
//!
//! [auth]
//! mode = "auto"                # required once a client listener leaves loopback; "required" or "off"
//! metrics_open = false         # true: /metrics without a credential
//!
//! [cluster]                    # absent: a single node
//! node_id = 1
//! peers = ["1=10.0.0.1:7410", "2=10.0.0.2:7410", "3=10.0.0.3:7410"]
//! tls_dir = "/etc/lode/cluster"  # ca.pem, node-ID.pem, node-ID-key.pem (`lode cluster init`)
//! heartbeat_ms = 100
//! election_timeout_ms = [500, 1000]
//! join = false                 # true: join a running cluster (`lode cluster add`); peers = this node only
//!
//! [replication]                # a cluster node's catch-up by snapshot
//! keep_log_bytes = 536870912   # log kept below the snapshot for followers this close behind
//! snapshot_bytes_per_sec = 100000000  # cap on a snapshot transfer to one follower; 0: none
//! snapshot_chunk_bytes = 2097152
//! batch_keys = 262144          # a retried batch is stored once while among this many newest (at most 1048576) ...
//! batch_key_age_s = 86400      # ... written at most this long ago
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lode_engine::{Background, Durability, LogRecord, Options, Retention};
use lode_protocol::ErrorCode;
use serde::Deserialize;

use crate::service::Failure;
use crate::{Error, Result};

/// The most keyed batches a node may remember: a snapshot sends them in
/// one peer message (40 MiB at this bound, under its 80 MiB limit).
const MAX_BATCH_KEYS: usize = 1 << 20;

/// Everything `lode serve` can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data: PathBuf,
    /// Binary protocol over TCP.
    pub listen: Option<SocketAddr>,
    /// Binary protocol over QUIC.
    pub quic: Option<SocketAddr>,
    /// HTTP: JSON API, Elasticsearch `_bulk`, metrics, health.
    pub http: Option<SocketAddr>,
    /// Syslog over TCP and UDP on the same port.
    pub syslog: Option<SocketAddr>,
    /// Networks plain syslog is heard from where auth is required
    /// (`10.0.0.0/8`, `192.168.1.7`); none by default.
    pub syslog_allow: Vec<String>,
    /// The tenant of records from plain syslog.
    pub syslog_tenant: String,
    pub limits: Limits,
    pub tls: Tls,
    pub storage: Storage,
    /// Present: this server is one node of a Raft cluster.
    pub cluster: Option<Cluster>,
    /// How a cluster node keeps its log and sends snapshots.
    pub replication: Replication,
    /// Who may do what.
    pub auth: Auth,
    /// Every tenant's limits, unless `tenant.NAME` sets its own.
    pub tenant_limits: crate::tenants::TenantLimits,
    /// One tenant's limits (`[tenant.team-a]`), over `tenant_limits`.
    pub tenant: std::collections::BTreeMap<String, crate::tenants::TenantLimits>,
}

/// Credentials: whether they are asked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// `auto` (the default): required as soon as a client listener (HTTP,
    /// binary TCP or QUIC, syslog) binds an address other than loopback;
    /// `required`; or `off`.
    pub mode: String,
    /// Serve `/metrics` without a credential.
    pub metrics_open: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: "auto".into(),
            metrics_open: false,
        }
    }
}

/// How a cluster node keeps its log and catches followers up.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// Log bytes the leader keeps below its snapshot for a follower that
    /// is behind by no more (it catches up from the log); one further
    /// behind is sent the sealed segments it lacks.
    pub keep_log_bytes: u64,
    /// The most bytes per second a snapshot transfer sends to one
    /// follower; 0: no cap.
    pub snapshot_bytes_per_sec: u64,
    /// Bytes of file per snapshot chunk (1-4 MiB suits most links).
    pub snapshot_chunk_bytes: usize,
    /// A client's retried batch is answered with its first seqs, never
    /// written twice, while the first try is among this many newest
    /// keyed batches ...
    pub batch_keys: usize,
    /// ... and was written at most this many seconds ago.
    pub batch_key_age_s: u64,
}

impl Default for Replication {
    fn default() -> Self {
        let keys = lode_engine::KeyWindow::default();
        Replication {
            keep_log_bytes: lode_replication::KEEP_LOG_BYTES,
            snapshot_bytes_per_sec: lode_replication::SNAPSHOT_BYTES_PER_SEC,
            snapshot_chunk_bytes: lode_replication::snapshot::CHUNK_BYTES,
            batch_keys: keys.count,
            batch_key_age_s: keys.max_age.as_secs(),
        }
    }
}

/// One node's place in its cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub node_id: u64,
    /// Every voter of the initial cluster, `ID=HOST:PORT` (the peer
    /// address, QUIC), this node included.
    pub peers: Vec<String>,
    /// Where the cluster CA and this node's certificate and key are.
    pub tls_dir: PathBuf,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: [u64; 2],
    /// Joins a running cluster instead of forming one: the node waits to
    /// be added by the leader (`lode cluster add`).
    #[serde(default)]
    pub join: bool,
}

/// A cluster node's default heartbeat interval, ms.
pub const HEARTBEAT_MS: u64 = 100;
/// A cluster node's default election timeout, a random time in this
/// range, ms: long enough that nodes saturated by a burst of writes on
/// shared cores do not take late heartbeats for a dead leader.
pub const ELECTION_TIMEOUT_MS: [u64; 2] = [500, 1000];

fn default_heartbeat_ms() -> u64 {
    HEARTBEAT_MS
}

fn default_election_timeout_ms() -> [u64; 2] {
    ELECTION_TIMEOUT_MS
}

impl Cluster {
    /// The peers by id; a malformed entry or a duplicate id is named.
    pub fn peer_map(&self) -> Result<std::collections::BTreeMap<u64, String>> {
        let mut peers = std::collections::BTreeMap::new();
        for entry in &self.peers {
            let (id, addr) = entry
                .split_once('=')
                .and_then(|(id, addr)| Some((id.trim().parse::<u64>().ok()?, addr.trim())))
                .filter(|(_, addr)| !addr.is_empty())
                .ok_or_else(|| {
                    Error::BadConfig(format!("cluster.peers: '{entry}' is not ID=HOST:PORT"))
                })?;
            if peers.insert(id, addr.to_owned()).is_some() {
                return Err(Error::BadConfig(format!(
                    "cluster.peers: node {id} is listed twice"
                )));
            }
        }
        if !peers.contains_key(&self.node_id) {
            return Err(Error::BadConfig(format!(
                "cluster.peers does not list this node (cluster.node_id = {})",
                self.node_id
            )));
        }
        Ok(peers)
    }
}

/// Every server-side limit; each error that one causes names its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest binary frame payload (an append batch, a request).
    pub max_frame_bytes: u32,
    /// Most records in one append (binary, HTTP body, `_bulk`).
    pub max_batch_records: usize,
    /// Connections open at once per listener (binary protocol, syslog TCP);
    /// more are refused (`busy` on the binary protocol).
    pub max_connections: usize,
    /// Requests in flight on one binary connection; the server stops
    /// reading that connection until one finishes (back-pressure).
    pub max_in_flight: usize,
    /// A query, count, histogram or top-values request that runs longer is
    /// answered with `timeout`.
    pub query_timeout_ms: u64,
    /// Queries (search, count, histogram, top values) running at once;
    /// more wait for a turn within their `query_timeout_ms`. A query
    /// answered `timeout` keeps its turn until its work ends, so abandoned
    /// work cannot pile up.
    pub max_queries: usize,
    /// Most records one query page returns.
    pub max_result_records: usize,
    /// Largest HTTP request body (413 beyond).
    pub max_body_bytes: usize,
    /// Longest syslog message.
    pub max_syslog_bytes: usize,
    /// HTTP requests served at once; more are answered 429.
    pub max_http_requests: usize,
    /// Most bytes a compressed request body (gzip, zstd, snappy) may
    /// unpack to (413 beyond, found while unpacking).
    pub max_unpacked_bytes: usize,
    /// Longest message a record may carry; longer ones are refused (413)
    /// or, with `truncate_lines`, cut to this length (as Loki's
    /// `max_line_size` and `max_line_size_truncate`).
    pub max_line_bytes: usize,
    pub truncate_lines: bool,
    /// Most attributes (labels, structured metadata) one record may carry
    /// (413 beyond).
    pub max_attrs: usize,
    /// A client must send an HTTP request's headers within this.
    pub header_timeout_ms: u64,
    /// ... and an HTTP request's whole body, or a binary frame's payload
    /// once its header arrived, within this.
    pub body_timeout_ms: u64,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS on the client listeners (QUIC always has it).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// `auto` (the default): the HTTP and binary TCP listeners serve TLS
    /// when they bind beyond loopback; `on`: always; `off`: never.
    pub mode: String,
    /// The certificate and key (PEM) the listeners present; without
    /// them, a self-signed pair made into `DATA/tls` on first start
    /// (`lode cert server` makes a CA-signed pair for trials).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A CA (PEM) whose client certificates (`lode cert client --tenant
    /// NAME`) are accepted instead of a token: an ingest caller of the
    /// certificate's tenant, as `systemd-journal-upload` and RFC 5425
    /// syslog senders authenticate.
    pub client_ca: Option<PathBuf>,
    /// Syslog over TLS (RFC 5425, octet-counted) on this address.
    pub syslog: Option<SocketAddr>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            mode: "auto".into(),
            cert: None,
            key: None,
            client_ca: None,
            syslog: None,
        }
    }
}

/// Storage choices passed to the engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `sync` (acknowledge after fdatasync) or `buffered`.
    pub durability: String,
    pub segment_bytes: u64,
    /// Priority of sealing and indexing: `idle` (only CPU time nothing
    /// else wants), `nice:N` or `normal`; see [`lode_engine::Background`].
    pub background: String,
    /// Keep word positions in the index; see
    /// [`lode_index::IndexOptions::positions`].
    pub phrase_positions: bool,
    /// Keep field bitmaps in memory; see
    /// [`lode_index::IndexOptions::field_bitmaps`].
    pub field_bitmaps: bool,
    /// How often the index commits; see
    /// [`lode_index::IndexOptions::commit_interval`].
    pub index_commit_ms: u64,
    pub retention_max_age_s: Option<u64>,
    pub retention_max_bytes: Option<u64>,
    /// Writes are refused while the data directory's disk has fewer free
    /// bytes; see [`Options::free_space_floor`].
    pub free_space_floor: Option<u64>,
}

/// Who plain syslog is heard from, and its records' tenant.
#[derive(Debug, Clone, Default)]
pub struct SyslogAccess {
    pub allow: Vec<Network>,
    pub tenant: String,
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: std::net::IpAddr,
    bits: u8,
}

impl Network {
    pub fn parse(text: &str) -> Option<Network> {
        let (addr, bits) = match text.trim().split_once('/') {
            Some((addr, bits)) => (addr.parse().ok()?, Some(bits.parse::<u8>().ok()?)),
            None => (text.trim().parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Network { addr, bits })
    }

    /// Whether `ip` is in this block.
    pub fn holds(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.bits)
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.bits)
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    a.iter().zip(b).enumerate().all(|(i, (x, y))| {
        let keep = bits.saturating_sub(i * 8).min(8);
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        x & mask == y & mask
    })
}

/// Default addresses: loopback, so a first start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
pub const DEFAULT_HTTP: &str = "127.0.0.1:7401";
pub const DEFAULT_SYSLOG: &str = "127.0.0.1:7514";

fn addr(text: &str) -> Option<SocketAddr> {
    text.parse().ok()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("./lode-data"),
            listen: addr(DEFAULT_LISTEN),
            quic: addr(DEFAULT_LISTEN),
            http: addr(DEFAULT_HTTP),
            syslog: addr(DEFAULT_SYSLOG),
            syslog_allow: Vec::new(),
            syslog_tenant: lode_protocol::auth::DEFAULT_TENANT.to_owned(),
            limits: Limits::default(),
            tls: Tls::default(),
            storage: Storage::default(),
            cluster: None,
            replication: Replication::default(),
            auth: Auth::default(),
            tenant_limits: crate::tenants::TenantLimits::default(),
            tenant: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: lode_protocol::wire::DEFAULT_MAX_FRAME,
            max_batch_records: 100_000,
            max_connections: 1024,
            max_in_flight: 64,
            query_timeout_ms: 10_000,
            max_queries: 16,
            max_result_records: 10_000,
            max_body_bytes: 64 << 20,
            max_syslog_bytes: 64 << 10,
            max_http_requests: 256,
            max_unpacked_bytes: 256 << 20,
            max_line_bytes: 1 << 20,
            truncate_lines: false,
            max_attrs: 128,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            durability: "sync".into(),
            segment_bytes: Options::default().segment_bytes,
            background: "idle".into(),
            phrase_positions: false,
            field_bitmaps: true,
            index_commit_ms: lode_index::IndexOptions::default()
                .commit_interval
                .as_millis() as u64,
            retention_max_age_s: None,
            retention_max_bytes: None,
            free_space_floor: None,
        }
    }
}

impl Limits {
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    /// Applies the per-record limits to records a client sent: a message
    /// past `max_line_bytes` is cut (at a character boundary) when
    /// `truncate_lines`, else the request is refused, as it is for a
    /// record with more than `max_attrs` attributes; the refusal names
    /// the record and the limit.
    pub fn admit(&self, records: &mut [LogRecord]) -> std::result::Result<(), Failure> {
        for (i, record) in records.iter_mut().enumerate() {
            if record.message.len() > self.max_line_bytes {
                if !self.truncate_lines {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!(
                            "record {i}: a message of {} bytes exceeds limits.max_line_bytes = {} \
                             (limits.truncate_lines = true cuts it instead)",
                            record.message.len(),
                            self.max_line_bytes
                        ),
                    ));
                }
                let mut cut = self.max_line_bytes;
                while !record.message.is_char_boundary(cut) {
                    cut -= 1;
                }
                record.message.truncate(cut);
            }
            if record.attrs.len() > self.max_attrs {
                return Err(Failure::new(
                    ErrorCode::TooLarge,
                    format!(
                        "record {i}: {} attributes exceed limits.max_attrs = {}",
                        record.attrs.len(),
                        self.max_attrs
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads a TOML file; keys it does not set keep their defaults.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The client listeners that bind an address other than loopback.
    pub fn exposed_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            ("listen", self.listen),
            ("quic", self.quic),
            ("http", self.http),
            ("syslog", self.syslog),
            ("tls.syslog", self.tls.syslog),
        ]
        .into_iter()
        .filter_map(|(name, addr)| Some((name, addr?)))
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .collect()
    }

    /// The tenants' limits, their names checked.
    pub fn tenants(&self) -> Result<crate::tenants::Tenants> {
        for name in self.tenant.keys() {
            lode_protocol::auth::check_tenant(name)
                .map_err(|e| Error::BadConfig(format!("[tenant.{name}]: {e}")))?;
        }
        Ok(crate::tenants::Tenants::new(
            self.tenant_limits.clone(),
            self.tenant.clone(),
        ))
    }

    /// `syslog_allow` and `syslog_tenant`, checked.
    pub fn syslog_access(&self) -> Result<SyslogAccess> {
        lode_protocol::auth::check_tenant(&self.syslog_tenant)
            .map_err(|e| Error::BadConfig(format!("syslog_tenant: {e}")))?;
        let allow = self
            .syslog_allow
            .iter()
            .map(|text| {
                Network::parse(text).ok_or_else(|| {
                    Error::BadConfig(format!(
                        "syslog_allow: '{text}' is not ADDRESS or ADDRESS/BITS"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SyslogAccess {
            allow,
            tenant: self.syslog_tenant.clone(),
        })
    }

    /// Whether a listener on `addr` serves TLS: `tls.mode`, where `auto`
    /// means beyond loopback.
    pub fn tls_on(&self, addr: SocketAddr) -> Result<bool> {
        match self.tls.mode.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            "auto" => Ok(!addr.ip().is_loopback()),
            other => Err(Error::BadConfig(format!(
                "tls.mode = '{other}': expected 'auto', 'on' or 'off'"
            ))),
        }
    }

    /// Whether requests must carry a credential: `auth.mode`, where
    /// `auto` means required once a client listener leaves loopback.
    pub fn auth_mode(&self) -> Result<crate::auth::Mode> {
        match self.auth.mode.as_str() {
            "required" => Ok(crate::auth::Mode::Required),
            "off" => Ok(crate::auth::Mode::Off),
            "auto" if self.exposed_listeners().is_empty() => Ok(crate::auth::Mode::Off),
            "auto" => Ok(crate::auth::Mode::Required),
            other => Err(Error::BadConfig(format!(
                "auth.mode = '{other}': expected 'auto', 'required' or 'off'"
            ))),
        }
    }

    /// Priority of the background threads (sealing, indexing).
    pub fn background(&self) -> Result<Background> {
        self.storage
            .background
            .parse()
            .map_err(|e| Error::BadConfig(format!("storage.background = {e}")))
    }

    /// How often the index commits (`storage.index_commit_ms`, at least 1).
    pub fn index_commit_interval(&self) -> Result<Duration> {
        match self.storage.index_commit_ms {
            0 => Err(Error::BadConfig(
                "storage.index_commit_ms = 0: at least 1 (new records are searchable within it)"
                    .into(),
            )),
            ms => Ok(Duration::from_millis(ms)),
        }
    }

    /// The engine options these settings give.
    pub fn engine_options(&self) -> Result<Options> {
        let durability = match self.storage.durability.as_str() {
            "sync" => Durability::Sync,
            "buffered" if self.cluster.is_some() => {
                return Err(Error::BadConfig(
                    "storage.durability = 'buffered' on a cluster node: an entry is counted \
                     toward a quorum as durable, so a power loss on this node could lose an \
                     acknowledged write and leave the nodes' logs different; use 'sync'"
                        .into(),
                ));
            }
            "buffered" => Durability::Buffered {
                window: Duration::from_millis(10),
            },
            other => {
                return Err(Error::BadConfig(format!(
                    "storage.durability = '{other}': expected 'sync' or 'buffered'"
                )));
            }
        };
        // A snapshot carries the keys in one peer message (40 bytes each).
        if self.replication.batch_keys > MAX_BATCH_KEYS {
            return Err(Error::BadConfig(format!(
                "replication.batch_keys = {}: at most {MAX_BATCH_KEYS}",
                self.replication.batch_keys
            )));
        }
        Ok(Options {
            durability,
            segment_bytes: self.storage.segment_bytes,
            background: self.background()?,
            retention: Retention {
                max_age: self.storage.retention_max_age_s.map(Duration::from_secs),
                max_bytes: self.storage.retention_max_bytes,
            },
            max_batch_bytes: (self.limits.max_frame_bytes as usize)
                .min(Options::default().max_batch_bytes),
            replicated: self.cluster.is_some(),
            free_space_floor: self.storage.free_space_floor,
            keys: lode_engine::KeyWindow {
                count: self.replication.batch_keys.max(1),
                max_age: Duration::from_secs(self.replication.batch_key_age_s),
            },
            ..Options::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_sets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lode.toml");
        std::fs::write(
            &path,
            "data = \"/tmp/x\"\n[limits]\nmax_in_flight = 3\n[storage]\ndurability = \"buffered\"\nphrase_positions = true\nfield_bitmaps = false\nindex_commit_ms = 2000\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.data, PathBuf::from("/tmp/x"));
        assert_eq!(config.limits.max_in_flight, 3);
        assert_eq!(config.limits.max_connections, 1024);
        assert_eq!(config.listen, addr(DEFAULT_LISTEN));
        assert!(matches!(
            config.engine_options().unwrap().durability,
            Durability::Buffered { .. }
        ));
        assert!(config.storage.phrase_positions);
        assert!(!Config::default().storage.phrase_positions);
        assert!(!config.storage.field_bitmaps);
        assert!(Config::default().storage.field_bitmaps);
        assert_eq!(
            config.index_commit_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            Config::default().index_commit_interval().unwrap(),
            lode_index::IndexOptions::default().commit_interval
        );
        let never = Config {
            storage: Storage {
                index_commit_ms: 0,
                ..Storage::default()
            },
            ..Config::default()
        };
        let err = never.index_commit_interval().unwrap_err().to_string();
        assert!(err.contains("index_commit_ms"), "{err}");
        std::fs::write(&path, "[limits]\nmax_inflight = 3\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_inflight"), "{err}");
    }

    #[test]
    fn cluster_peers_are_parsed_and_mistakes_named() {
        let cluster = |peers: &[&str]| Cluster {
            join: false,
            node_id: 2,
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            tls_dir: PathBuf::from("tls"),
            heartbeat_ms: 50,
            election_timeout_ms: [200, 400],
        };
        let peers = cluster(&["1=a:1", " 2 = b:2", "3=c:3"]).peer_map().unwrap();
        assert_eq!(peers.get(&2).map(String::as_str), Some("b:2"));
        for (bad, named) in [
            (&["1=a:1", "3=c:3"][..], "does not list this node"),
            (&["2=b:2", "2=x:1"][..], "listed twice"),
            (&["2:b:2"][..], "'2:b:2'"),
            (&["x=b:2"][..], "'x=b:2'"),
        ] {
            let err = cluster(bad).peer_map().unwrap_err().to_string();
            assert!(err.contains(named), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lode.toml");
        std::fs::write(
            &path,
            "[cluster]\nnode_id = 2\npeers = [\"2=127.0.0.1:7410\"]\ntls_dir = \"t\"\n",
        )
        .unwrap();
        let mut config = Config::load(&path).unwrap();
        assert!(config.engine_options().unwrap().replicated);
        config.storage.durability = "buffered".into();
        let err = config.engine_options().unwrap_err().to_string();
        assert!(
            err.contains("buffered") && err.contains("cluster node"),
            "{err}"
        );
        assert_eq!(
            config.cluster.unwrap().election_timeout_ms,
            ELECTION_TIMEOUT_MS
        );
    }

    #[test]
    fn networks_hold_their_addresses() {
        let net = Network::parse("10.0.0.0/8").unwrap();
        assert!(net.holds("10.200.3.4".parse().unwrap()));
        assert!(net.holds("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!net.holds("11.0.0.1".parse().unwrap()));
        let one = Network::parse("192.168.1.7").unwrap();
        assert!(one.holds("192.168.1.7".parse().unwrap()));
        assert!(!one.holds("192.168.1.8".parse().unwrap()));
        let odd = Network::parse("172.16.0.0/12").unwrap();
        assert!(odd.holds("172.31.255.255".parse().unwrap()));
        assert!(!odd.holds("172.32.0.0".parse().unwrap()));
        assert!(
            Network::parse("fd00::/8")
                .unwrap()
                .holds("fd12::1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", ""] {
            assert!(Network::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn auth_is_required_once_a_listener_leaves_loopback() {
        let mut config = Config::default();
        assert_eq!(config.auth_mode().unwrap(), crate::auth::Mode::Off);
        config.http = addr("0.0.0.0:7401");
        assert_eq!(config.auth_mode().unwrap(), crate::auth::Mode::Required);
        assert_eq!(
            config.exposed_listeners(),
            vec![("http", addr("0.0.0.0:7401").unwrap())]
        );
        config.auth.mode = "off".into();
        assert_eq!(config.auth_mode().unwrap(), crate::auth::Mode::Off);
        config.auth.mode = "sometimes".into();
        assert!(
            config
                .auth_mode()
                .unwrap_err()
                .to_string()
                .contains("auth.mode")
        );
    }

    #[test]
    fn record_limits_refuse_or_cut() {
        let limits = Limits {
            max_line_bytes: 5,
            max_attrs: 1,
            ..Limits::default()
        };
        let record = |message: &str, attrs: usize| LogRecord {
            message: message.to_owned(),
            attrs: (0..attrs).map(|i| (i.to_string(), String::new())).collect(),
            ..LogRecord::default()
        };
        assert!(limits.admit(&mut [record("short", 1)]).is_ok());
        let long = limits.admit(&mut [record("ok", 0), record("too long", 0)]);
        let message = long.unwrap_err().message;
        assert!(
            message.contains("record 1") && message.contains("max_line_bytes = 5"),
            "{message}"
        );
        let many = limits.admit(&mut [record("a", 2)]).unwrap_err().message;
        assert!(many.contains("max_attrs = 1"), "{many}");
        let cutting = Limits {
            truncate_lines: true,
            ..limits
        };
        let mut records = [record("héllo wörld", 0)];
        cutting.admit(&mut records).unwrap();
        assert_eq!(records[0].message, "héll", "cut at a character boundary");
    }

    #[test]
    fn background_priority_is_parsed_and_bad_values_are_named() {
        let mut config = Config::default();
        assert_eq!(config.background().unwrap(), Background::Idle);
        config.storage.background = "nice:7".into();
        assert_eq!(
            config.engine_options().unwrap().background,
            Background::Nice(7)
        );
        config.storage.background = "normal".into();
        assert_eq!(config.background().unwrap(), Background::Normal);
        for bad in ["nice:0", "nice:20", "nice:x", "low"] {
            config.storage.background = bad.into();
            let err = config.engine_options().unwrap_err().to_string();
            assert!(
                err.contains("storage.background") && err.contains(bad),
                "{err}"
            );
        }
    }
}
