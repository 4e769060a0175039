//! An async client of lode's binary protocol, over TCP or QUIC.
//!
//! One connection carries many requests at once (each has an id); a
//! [`Client`] is cheap to clone and share between tasks. At most
//! `max_in_flight` requests are outstanding per connection: further calls
//! wait, which is the back-pressure a fast producer needs. [`Batcher`]
//! groups single records into batches and keeps several appends in flight.
//! [`ClusterClient`] talks to several servers of a cluster and retries an
//! append on the next one without ever writing it twice.
//!
//! ```no_run
//! use lode_client::{Client, Filter};
//! use lode_codec::{Level, LogRecord};
//!
//! # async fn run() -> Result<(), lode_client::ClientError> {
//! let client = Client::connect_tcp("127.0.0.1:7400").await?;
//! let seqs = client
//!     .append(&[LogRecord { level: Level::Error, message: "disk full".into(), ..LogRecord::default() }])
//!     .await?; // durable now
//! let page = client.query(Filter { query: "disk".into(), ..Filter::default() }, 10, None).await?;
//! println!("{} of {:?}: {:?}", page.records.len(), seqs, page.next_cursor);
//! # Ok(()) }
//! ```

mod batcher;
mod cluster;
mod connection;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use batcher::Batcher;
pub use cluster::{ClusterClient, RetryOptions};
pub use lode_protocol::wire::{Filter, WireRecord};
pub use lode_protocol::{ErrorCode, WireError};

use connection::{Connection, Stream as ResponseStream};
use lode_codec::{EncodedBatch, LogRecord};
use lode_protocol::wire::{Request, Response};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// What a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("{0}")]
    Io(String),
    #[error("protocol: {0}")]
    Protocol(#[from] WireError),
    /// The server refused or failed the request.
    #[error("server error {}: {message}", code.map_or("unknown", ErrorCode::name))]
    Server {
        code: Option<ErrorCode>,
        message: String,
    },
    #[error("the server answered with an unexpected message: {0}")]
    Unexpected(String),
    #[error("the connection is closed{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("tls: {0}")]
    Tls(String),
    #[error("encoding: {0}")]
    Encode(String),
}

impl ClientError {
    pub(crate) fn io(what: &str, e: impl std::fmt::Display) -> ClientError {
        ClientError::Io(format!("{what}: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Seqs given to an append: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub start: u64,
    pub end: u64,
}

/// One page of a query, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<WireRecord>,
    pub next_cursor: Option<String>,
}

/// Counts per bucket: `buckets[i]` counts `start + i*width <= ts < ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub start: i64,
    pub width: i64,
    pub buckets: Vec<u64>,
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Requests outstanding on the connection at most.
    pub max_in_flight: usize,
    /// Largest response frame accepted.
    pub max_frame_bytes: u32,
    /// Connecting (and the hello) must finish within this.
    pub connect_timeout: Duration,
    /// The token the session acts with (`lode token create`); none where
    /// the server asks for no credential.
    pub token: Option<String>,
    /// The tenants the session acts on (`a` or `a|b`); none: the token's
    /// own, or the default tenant. Appends go to the first.
    pub tenant: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_in_flight: 64,
            max_frame_bytes: lode_protocol::wire::DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(10),
            token: None,
            tenant: None,
        }
    }
}

/// A connection to a lode server. Clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    connection: Arc<Connection>,
}

fn server_error(response: Response) -> ClientError {
    match response {
        Response::Error { code, message } => ClientError::Server {
            code: ErrorCode::from_u16(code),
            message,
        },
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

impl Client {
    /// Connects over TCP with default options.
    pub async fn connect_tcp(addr: &str) -> Result<Client> {
        Client::connect_tcp_with(addr, ClientOptions::default()).await
    }

    pub async fn connect_tcp_with(addr: &str, options: ClientOptions) -> Result<Client> {
        let stream = tokio::time::timeout(
            options.connect_timeout,
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| ClientError::io(&format!("connect to {addr}"), "timed out"))?
        .map_err(|e| ClientError::io(&format!("connect to {addr}"), e))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let connection = Connection::start(reader, writer, &options).await?;
        Ok(Client {
            connection: Arc::new(connection),
        })
    }

    /// Connects over TCP with TLS, trusting only the certificate(s) in the
    /// PEM file `ca` (the server's self-signed `DATA/tls/cert.pem`, or the
    /// CA of `lode cert server`); `server_name` is the name (or address)
    /// its certificate is valid for.
    pub async fn connect_tls_with(
        addr: &str,
        ca: &Path,
        server_name: &str,
        options: ClientOptions,
    ) -> Result<Client> {
        let config = Arc::new(tls_client_config(ca)?);
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Tls(format!("{server_name}: {e}")))?;
        let connect = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| ClientError::io(&format!("connect to {addr}"), e))?;
            let _ = stream.set_nodelay(true);
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| ClientError::Tls(format!("{addr}: {e}")))
        };
        let stream = tokio::time::timeout(options.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::io(&format!("connect to {addr}"), "timed out"))??;
        let (reader, writer) = tokio::io::split(stream);
        let connection = Connection::start(reader, writer, &options).await?;
        Ok(Client {
            connection: Arc::new(connection),
        })
    }

    /// Connects over QUIC, trusting only the certificate(s) in the PEM file
    /// `cert` (the server's self-signed `DATA/tls/cert.pem`, or its CA).
    pub async fn connect_quic(addr: SocketAddr, cert: &Path, server_name: &str) -> Result<Client> {
        Client::connect_quic_with(addr, cert, server_name, ClientOptions::default()).await
    }

    pub async fn connect_quic_with(
        addr: SocketAddr,
        cert: &Path,
        server_name: &str,
        options: ClientOptions,
    ) -> Result<Client> {
        let config = quic_config(cert)?;
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|e| ClientError::io("local address", e))?;
        let mut endpoint =
            quic_endpoint(local, None).map_err(|e| ClientError::io("quic endpoint", e))?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint
            .connect(addr, server_name)
            .map_err(|e| ClientError::io(&format!("connect to {addr}"), e))?;
        let quic = tokio::time::timeout(options.connect_timeout, connecting)
            .await
            .map_err(|_| ClientError::io(&format!("connect to {addr}"), "timed out"))?
            .map_err(|e| ClientError::io(&format!("connect to {addr}"), e))?;
        let (send, recv) = quic
            .open_bi()
            .await
            .map_err(|e| ClientError::io("open a quic stream", e))?;
        let mut connection = Connection::start(recv, send, &options).await?;
        // The endpoint and connection must outlive the streams.
        connection.keep((endpoint, quic));
        Ok(Client {
            connection: Arc::new(connection),
        })
    }

    /// The tenant the server says this session writes to.
    pub fn tenant(&self) -> &str {
        self.connection.tenant()
    }

    /// Round trip with the server; returns its name and version.
    pub async fn ping(&self) -> Result<String> {
        match self.single(&Request::Ping).await? {
            Response::Pong { server } => Ok(server),
            other => Err(server_error(other)),
        }
    }

    /// Appends records; returns once they are durable on the server.
    pub async fn append(&self, records: &[LogRecord]) -> Result<Appended> {
        let batch =
            EncodedBatch::encode(records).map_err(|e| ClientError::Encode(e.to_string()))?;
        self.append_encoded(batch).await
    }

    /// Appends a batch already encoded (on another thread, say).
    pub async fn append_encoded(&self, batch: EncodedBatch) -> Result<Appended> {
        self.submit_encoded(batch).await?.wait().await
    }

    /// Requests this connection keeps outstanding at most (its
    /// [`ClientOptions::max_in_flight`]).
    pub fn max_in_flight(&self) -> usize {
        self.connection.max_in_flight()
    }

    /// Sends an append and returns without waiting for its
    /// acknowledgement. Appends submitted one after the other on a client
    /// get seqs in that order.
    ///
    /// The returned [`PendingAppend`] holds one of the connection's
    /// `max_in_flight` slots until it is waited for or dropped: a task that
    /// keeps more than that many unwaited waits here forever ([`Batcher`]
    /// bounds its window for this reason).
    pub async fn submit_encoded(&self, batch: EncodedBatch) -> Result<PendingAppend> {
        let stream = self.connection.send_append(batch).await?;
        Ok(PendingAppend { stream })
    }

    /// One page of the newest records matching `filter`.
    pub async fn query(&self, filter: Filter, limit: u32, cursor: Option<String>) -> Result<Page> {
        let request = Request::Query {
            filter,
            limit,
            cursor,
        };
        let mut stream = self.connection.send_request(&request).await?;
        let mut records = Vec::new();
        loop {
            match stream.next().await? {
                (Response::Records { records: more }, true) => records.extend(more),
                (
                    Response::PageEnd {
                        records: last,
                        next_cursor,
                    },
                    _,
                ) => {
                    records.extend(last);
                    return Ok(Page {
                        records,
                        next_cursor,
                    });
                }
                (other, _) => return Err(server_error(other)),
            }
        }
    }

    pub async fn count(&self, filter: Filter) -> Result<u64> {
        match self.single(&Request::Count { filter }).await? {
            Response::Count { count } => Ok(count),
            other => Err(server_error(other)),
        }
    }

    pub async fn histogram(&self, filter: Filter, width: Option<i64>) -> Result<Histogram> {
        match self.single(&Request::Histogram { filter, width }).await? {
            Response::Histogram {
                start,
                width,
                buckets,
            } => Ok(Histogram {
                start,
                width,
                buckets,
            }),
            other => Err(server_error(other)),
        }
    }

    /// The `k` most frequent values of `field` (`level`, `service`, `host`).
    pub async fn top(&self, filter: Filter, field: &str, k: u32) -> Result<Vec<(String, u64)>> {
        let request = Request::Top {
            filter,
            field: field.to_owned(),
            k,
        };
        match self.single(&request).await? {
            Response::Top { values } => Ok(values),
            other => Err(server_error(other)),
        }
    }

    /// Returns once a read on this client sees every write acknowledged
    /// before the call, by any node of a cluster: the query that follows
    /// is linearizable.
    pub async fn read_barrier(&self) -> Result<()> {
        match self.single(&Request::ReadBarrier).await? {
            Response::Done => Ok(()),
            other => Err(server_error(other)),
        }
    }

    /// The server's figures, by name.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>> {
        match self.single(&Request::Stats).await? {
            Response::Stats { figures } => Ok(figures),
            other => Err(server_error(other)),
        }
    }

    /// A live tail of records matching `query`, from `from_seq` (the next
    /// record when `None`). Dropping the [`Tail`] cancels it.
    pub async fn tail(&self, query: &str, from_seq: Option<u64>) -> Result<Tail> {
        let request = Request::Tail {
            query: query.to_owned(),
            from_seq,
        };
        let stream = self.connection.send_request(&request).await?;
        Ok(Tail {
            stream,
            client: self.clone(),
            done: false,
        })
    }

    async fn single(&self, request: &Request) -> Result<Response> {
        let mut stream = self.connection.send_request(request).await?;
        Ok(stream.next().await?.0)
    }
}

/// An append sent and not yet acknowledged; see [`Client::submit_encoded`].
/// It holds one of its connection's in-flight slots until waited for or
/// dropped.
#[derive(Debug)]
pub struct PendingAppend {
    stream: ResponseStream,
}

impl PendingAppend {
    /// Waits until the server has made the batch durable.
    pub async fn wait(mut self) -> Result<Appended> {
        match self.stream.next().await? {
            (Response::Appended { start, end }, _) => Ok(Appended { start, end }),
            (other, _) => Err(server_error(other)),
        }
    }
}

/// A live tail; see [`Client::tail`].
#[derive(Debug)]
pub struct Tail {
    stream: ResponseStream,
    client: Client,
    done: bool,
}

impl Tail {
    /// The next records pushed by the server; `None` once the tail ended.
    pub async fn next(&mut self) -> Result<Option<Vec<WireRecord>>> {
        if self.done {
            return Ok(None);
        }
        match self.stream.next().await? {
            (Response::Records { records }, _) => Ok(Some(records)),
            (Response::Done, _) => {
                self.done = true;
                Ok(None)
            }
            (other, _) => {
                self.done = true;
                Err(server_error(other))
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if !self.done {
            self.client.connection.cancel(self.stream.id());
        }
    }
}

/// QUIC transport settings both ends of lode's binary protocol use.
/// quinn's defaults size a stream's window for 100 Mbit/s at 100 ms
/// (1.25 MB), which caps a loopback or LAN ingest with several 200 KB
/// batches in flight; MTU discovery may probe up to `MAX_UDP_PAYLOAD`.
pub fn quic_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(32 << 20))
        .send_window(128 << 20);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
    transport
}

/// The largest UDP payload lode's QUIC endpoints accept and probe for.
/// Each endpoint announces what it accepts, and quinn's default (1472, an
/// Ethernet MTU) capped discovery there. 4096 is reached on loopback with
/// no loss; with 8192, 9000 or 16384 the first large probes were lost and
/// connections stayed at 1200 bytes (measured with `lode bench` and
/// quinn's path stats). On a 1500-byte path discovery stops at what fits.
const MAX_UDP_PAYLOAD: u16 = 4096;

/// Socket buffers asked for (the kernel caps them at `net.core.rmem_max`
/// and `wmem_max`). With the default 208 KiB, a burst of batches
/// overflowed the receiver's buffer on loopback: 2-3% of packets were
/// dropped, and each loss halved the congestion window.
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A QUIC endpoint on `addr` (a server when `server` is given): large UDP
/// payloads accepted, socket buffers enlarged (best effort).
pub fn quic_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: a smaller buffer than asked for still works.
    let _ = state.set_recv_buffer_size((&socket).into(), UDP_BUFFER_BYTES);
    let _ = state.set_send_buffer_size((&socket).into(), UDP_BUFFER_BYTES);
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    quinn::Endpoint::new(config, server, socket, runtime)
}

/// A TLS client configuration that trusts only the certificate(s) in the
/// PEM file `cert` (a server's self-signed certificate, or the CA that
/// signed it): what `--cert` and `--tls-ca` name.
pub fn tls_client_config(cert: &Path) -> Result<rustls::ClientConfig> {
    let tls = |e: &dyn std::fmt::Display| ClientError::Tls(format!("{}: {e}", cert.display()));
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).map_err(|e| tls(&e))? {
        roots.add(der.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    if roots.is_empty() {
        return Err(tls(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn quic_config(cert: &Path) -> Result<quinn::ClientConfig> {
    let tls = |e: &dyn std::fmt::Display| ClientError::Tls(format!("{}: {e}", cert.display()));
    let mut crypto = tls_client_config(cert)?;
    crypto.alpn_protocols = vec![b"lode/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| tls(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(quic_transport()));
    Ok(config)
}
