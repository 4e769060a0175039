//! Starting and stopping a server: open the service, bind every listener
//! the config names, run their accept loops, and close it all in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::service::Service;
use crate::{Error, Result, auth, binary, http, listen, syslog, tls};

/// Where a started server listens (ports resolved when 0 was asked for).
#[derive(Debug, Clone, Default)]
pub struct Addresses {
    pub tcp: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub syslog: Option<SocketAddr>,
    /// Syslog over TLS (RFC 5425).
    pub syslog_tls: Option<SocketAddr>,
    /// Whether the binary protocol over TCP and HTTP serve TLS.
    pub tcp_tls: bool,
    pub http_tls: bool,
    /// The certificate the QUIC and TLS listeners present: what clients
    /// pin (`--cert`, `--tls-ca`) unless a CA signed it.
    pub cert: Option<PathBuf>,
}

/// A running server. Dropping it stops the listeners; [`Server::shutdown`]
/// also closes the index and engine cleanly.
#[derive(Debug)]
pub struct Server {
    service: Arc<Service>,
    addresses: Addresses,
    tasks: Vec<JoinHandle<()>>,
    quic: Option<quinn::Endpoint>,
}

fn bind_error(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Bind { what, addr, source }
}

impl Server {
    /// Opens the data directory and starts every listener of `config`.
    pub async fn start(config: Config) -> Result<Server> {
        let opened = config.clone();
        let mut service = tokio::task::spawn_blocking(move || Service::open(&opened))
            .await
            .map_err(|e| Error::Runtime(e.to_string()))??;
        if let Some(cluster) = &config.cluster {
            let peers = cluster.peer_map()?;
            let tls =
                lode_replication::tls::NodeTlsFiles::in_dir(&cluster.tls_dir, cluster.node_id);
            let mut node = lode_replication::ClusterConfig::new(cluster.node_id, peers, tls);
            node.heartbeat_ms = cluster.heartbeat_ms;
            node.join = cluster.join;
            let replication = &config.replication;
            if !(4096..=(16 << 20)).contains(&replication.snapshot_chunk_bytes) {
                return Err(Error::BadConfig(format!(
                    "replication.snapshot_chunk_bytes = {}: must be 4096 to 16777216",
                    replication.snapshot_chunk_bytes
                )));
            }
            node.keep_log_bytes = replication.keep_log_bytes;
            node.snapshot_bytes_per_sec =
                Some(replication.snapshot_bytes_per_sec).filter(|&b| b > 0);
            node.snapshot_chunk_bytes = replication.snapshot_chunk_bytes;
            node.election_timeout_ms = (
                cluster.election_timeout_ms[0],
                cluster.election_timeout_ms[1],
            );
            service.join_cluster(&node).await?;
        }
        let service = Arc::new(service);
        let bootstrap = announce_auth(&config, &service);
        let mut server = Server {
            service: Arc::clone(&service),
            addresses: Addresses::default(),
            tasks: Vec::new(),
            quic: None,
        };
        let connections = Arc::new(Semaphore::new(config.limits.max_connections));
        let files = tls_files(&config)?;
        server.addresses.cert = files.as_ref().map(|f| f.cert.clone());
        let client_ca = config.tls.client_ca.as_deref();
        // TLS over TCP for a listener on `addr` when the config says so.
        let tcp_tls =
            |addr: SocketAddr, alpn: &[&[u8]]| -> Result<Option<Arc<rustls::ServerConfig>>> {
                match &files {
                    Some(files) if config.tls_on(addr)? => {
                        Ok(Some(tls::tcp_server(files, client_ca, alpn)?))
                    }
                    _ => Ok(None),
                }
            };
        if let Some(addr) = config.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(bind_error("the binary protocol (tcp)", addr))?;
            server.addresses.tcp = Some(local(&listener, addr));
            let tls = tcp_tls(addr, &[])?;
            server.addresses.tcp_tls = tls.is_some();
            let task = accept_tcp(
                Arc::clone(&service),
                listener,
                Arc::clone(&connections),
                tls,
            );
            server.tasks.push(tokio::spawn(task));
        }
        if let (Some(addr), Some(files)) = (config.quic, &files) {
            let endpoint = lode_client::quic_endpoint(addr, Some(tls::quic_server(files)?))
                .map_err(bind_error("the binary protocol (quic)", addr))?;
            server.addresses.quic = Some(endpoint.local_addr().unwrap_or(addr));
            let task = accept_quic(Arc::clone(&service), endpoint.clone(), connections);
            server.tasks.push(tokio::spawn(task));
            server.quic = Some(endpoint);
        }
        if let Some(addr) = config.http {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(bind_error("http", addr))?;
            server.addresses.http = Some(local(&listener, addr));
            let app = http::router(Arc::clone(&service));
            let deadlines = listen::Deadlines {
                header: config.limits.header_timeout(),
                body: config.limits.body_timeout(),
            };
            let tls = tcp_tls(addr, &[b"http/1.1"])?;
            server.addresses.http_tls = tls.is_some();
            server.tasks.push(tokio::spawn(listen::serve_http(
                listener, app, tls, deadlines,
            )));
        }
        match bootstrap {
            // A single node makes its first admin token before it answers
            // anyone: the file is there when the startup lines say so.
            Some(data) if service.cluster().is_none() => {
                first_admin_token(&service, &data)
                    .await
                    .map_err(|e| Error::Runtime(format!("auth: the first admin token: {e}")))?;
            }
            Some(data) => {
                server
                    .tasks
                    .push(tokio::spawn(bootstrap_admin(Arc::clone(&service), data)));
            }
            None => {}
        }
        if let Some(addr) = config.syslog {
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(bind_error("syslog (tcp)", addr))?;
            let bound = local(&tcp, addr);
            let udp = UdpSocket::bind(bound)
                .await
                .map_err(bind_error("syslog (udp)", bound))?;
            server.addresses.syslog = Some(bound);
            server
                .tasks
                .push(tokio::spawn(syslog::accept_tcp(Arc::clone(&service), tcp)));
            server
                .tasks
                .push(tokio::spawn(syslog::serve_udp(Arc::clone(&service), udp)));
        }
        if let (Some(addr), Some(files)) = (config.tls.syslog, &files) {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(bind_error("syslog (tls)", addr))?;
            server.addresses.syslog_tls = Some(local(&listener, addr));
            let tls = tls::tcp_server(files, client_ca, &[])?;
            server.tasks.push(tokio::spawn(syslog::accept_tls(
                Arc::clone(&service),
                listener,
                tokio_rustls::TlsAcceptor::from(tls),
                config.limits.header_timeout(),
            )));
        }
        Ok(server)
    }

    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops accepting, ends open connections, then closes the index and
    /// the engine (everything acknowledged is already durable).
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop_listeners();
        if let Some(endpoint) = self.quic.take() {
            endpoint.wait_idle().await;
        }
        if let Some(cluster) = self.service.cluster()
            && let Err(e) = cluster.shutdown().await
        {
            tracing::warn!(error = %e, "stopping the cluster node");
        }
        // Connections still being served hold the service; give them a
        // moment to see their sockets close.
        let mut service = Arc::clone(&self.service);
        drop(self);
        for _ in 0..50 {
            match Arc::try_unwrap(service) {
                Ok(owned) => {
                    return tokio::task::spawn_blocking(move || owned.close())
                        .await
                        .map_err(|e| Error::Runtime(e.to_string()))?;
                }
                Err(shared) => service = shared,
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::warn!("connections still open at shutdown; the engine closes when they end");
        Ok(())
    }

    fn stop_listeners(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(endpoint) = &self.quic {
            endpoint.close(0u32.into(), b"server shutting down");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_listeners();
    }
}

/// Says at start whether credentials are asked for (and warns when none
/// are though a listener leaves loopback); the data directory when the
/// first admin token may have to be made.
fn announce_auth(config: &Config, service: &Service) -> Option<PathBuf> {
    let exposed: Vec<String> = config
        .exposed_listeners()
        .iter()
        .map(|(name, addr)| format!("{name} {addr}"))
        .collect();
    match service.auth {
        auth::Mode::Off if !exposed.is_empty() => {
            tracing::warn!(
                "auth is off, yet {} listen beyond loopback: anyone who reaches them can read, write and delete every record and change the cluster; set auth.mode = \"required\"",
                exposed.join(", ")
            );
            None
        }
        auth::Mode::Off => None,
        auth::Mode::Required => {
            tracing::info!(
                "auth: required (a token on every request; /health and /ready are open)"
            );
            Some(config.data.clone())
        }
    }
}

/// Where auth is required and no token exists yet, makes the first admin
/// token and writes it to `DATA/auth/admin.token` (mode 0600), as
/// Elasticsearch prints its first password. In a cluster the leader does
/// it, once every committed entry is applied (so a token made by an
/// earlier leader is seen), and only its node has the file.
async fn bootstrap_admin(service: Arc<Service>, data: PathBuf) {
    loop {
        if !service.tokens().is_empty() {
            return;
        }
        let ready = match service.cluster() {
            None => true,
            Some(cluster) => {
                cluster.status().role == "leader" && cluster.read_barrier().await.is_ok()
            }
        };
        if ready {
            match first_admin_token(&service, &data).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "auth: could not make the first admin token; trying again")
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Makes the first admin token into `DATA/auth/admin.token`, unless a
/// token exists.
async fn first_admin_token(
    service: &Service,
    data: &std::path::Path,
) -> std::result::Result<(), String> {
    if !service.tokens().is_empty() {
        return Ok(());
    }
    let path = auth::admin_token_path(data);
    make_admin_token(service, &path).await?;
    tracing::info!(
        "auth: the first admin token is in {} (readable by this user only); make others with `lode token create --token \"$(cat {})\" ...`",
        path.display(),
        path.display()
    );
    Ok(())
}

async fn make_admin_token(
    service: &Service,
    path: &std::path::Path,
) -> std::result::Result<(), String> {
    let scopes = auth::Scopes::parse("admin")?;
    let made = auth::new_token(None, scopes, lode_engine::now_ns(), None)?;
    // The secret is on disk before the token exists: a crash between the
    // two leaves a file of no use, never a token no one holds.
    auth::write_secret(path, &made.secret).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = serde_json::to_vec(&made.info).map_err(|e| e.to_string())?;
    service
        .store_token(&made.info.id, value)
        .await
        .map_err(|f| f.to_string())
}

fn local(listener: &TcpListener, asked: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(asked)
}

/// A connection over the limit is still greeted, then told `busy`.
fn admit(connections: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    Arc::clone(connections).try_acquire_owned().ok()
}

/// The certificate the listeners present, when one of them needs it
/// (QUIC always; TLS over TCP by `tls.mode`).
fn tls_files(config: &Config) -> Result<Option<crate::config::TlsFiles>> {
    let tcp_tls = [config.listen, config.http]
        .into_iter()
        .flatten()
        .map(|addr| config.tls_on(addr))
        .collect::<Result<Vec<bool>>>()?
        .contains(&true);
    if config.quic.is_none() && !tcp_tls && config.tls.syslog.is_none() {
        return Ok(None);
    }
    // A made certificate is also valid for the addresses the listeners
    // bind to, when they name one.
    let extra: Vec<String> = [config.listen, config.http, config.quic, config.tls.syslog]
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .map(|ip| ip.to_string())
        .collect();
    tls::files(&config.data, &config.tls, &extra).map(Some)
}

async fn accept_tcp(
    service: Arc<Service>,
    listener: TcpListener,
    connections: Arc<Semaphore>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let permit = admit(&connections);
        let service = Arc::clone(&service);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            tracing::debug!(%peer, "binary connection");
            let Some(acceptor) = acceptor else {
                let (reader, writer) = stream.into_split();
                return binary::serve(service, reader, writer, permit.is_some()).await;
            };
            let handshake = service.limits.header_timeout();
            match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let (reader, writer) = tokio::io::split(tls);
                    binary::serve(service, reader, writer, permit.is_some()).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

async fn accept_quic(
    service: Arc<Service>,
    endpoint: quinn::Endpoint,
    connections: Arc<Semaphore>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let permit = admit(&connections);
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::debug!(error = %e, "quic handshake failed");
                    return;
                }
            };
            // Each bidirectional stream is one protocol session, so a
            // client may open several to spread its requests.
            while let Ok((send, recv)) = connection.accept_bi().await {
                let service = Arc::clone(&service);
                let admitted = permit.is_some();
                tokio::spawn(binary::serve(service, recv, send, admitted));
            }
            drop(permit);
        });
    }
}
