//! Where a CLI command's requests go: a running server (binary protocol,
//! TCP or QUIC), or a data directory opened in this process when `--data`
//! is given. Both answer the same calls with the same types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use lode_client::{Batcher, Client, ClientOptions, ClusterClient, Filter};
use lode_engine::{LogRecord, Record};
use lode_server::{Caller, Config, Service};

use crate::CliError;

/// Where to send requests, from the command line.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Server to talk to: HOST:PORT over TCP, tls://HOST:PORT (TCP with
    /// TLS, trusting --cert), or quic://HOST:PORT. Nodes
    /// of a cluster: HOST:PORT,HOST:PORT,... (over TCP; writes are keyed
    /// and retried on the next node, never stored twice).
    #[arg(long, short = 's', default_value = lode_server::DEFAULT_LISTEN, env = "LODE_SERVER")]
    pub(crate) server: String,
    /// Open this data directory in this process instead of talking to a
    /// server (it must not be held by a running server).
    #[arg(long, short = 'd')]
    pub(crate) data: Option<PathBuf>,
    /// Certificate to trust for quic:// and tls:// (the server's
    /// DATA/tls/cert.pem, or the CA of `lode cert server`).
    #[arg(long, default_value = "./lode-data/tls/cert.pem")]
    pub(crate) cert: PathBuf,
    /// The token to act with (`lode token create`), where the server
    /// asks for one.
    #[arg(long, env = "LODE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The tenant to act on: the token's own when not given (or
    /// `default`). An admin token may name several to read: a,b.
    #[arg(long, env = "LODE_TENANT")]
    pub(crate) tenant: Option<String>,
    /// `linearizable`: the answer reflects every write acknowledged before
    /// the command, on any node of a cluster (the leader confirms with a
    /// quorum, the node asked catches up first). `local`: what the node
    /// asked has applied and indexed.
    #[arg(long, value_enum, default_value_t = Consistency::Local)]
    pub(crate) consistency: Consistency,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Consistency {
    Local,
    Linearizable,
}

/// One page of results.
pub(crate) struct Page {
    pub(crate) records: Vec<Record>,
    pub(crate) next_cursor: Option<String>,
}

pub(crate) enum Backend {
    /// A server; with the cluster client when several nodes were given.
    Remote(Client, Option<Arc<ClusterClient>>),
    /// A data directory in this process, read and written as `Caller`
    /// (every scope: whoever can open the directory can read its files).
    Local(Box<Service>, Caller),
}

impl Target {
    /// The client options these flags give.
    pub(crate) fn client_options(&self) -> ClientOptions {
        ClientOptions {
            token: self.token.clone(),
            tenant: self.tenant.clone(),
            ..ClientOptions::default()
        }
    }

    /// The caller a local data directory is opened as: every scope, on
    /// the tenants `--tenant` names (the default one without it).
    fn local_caller(&self) -> Result<Caller, CliError> {
        let mut caller = Caller::everything();
        if let Some(text) = &self.tenant {
            caller.tenants = lode_protocol::auth::tenants(text).map_err(CliError::new)?;
        }
        Ok(caller)
    }
}

impl Backend {
    pub(crate) async fn connect(target: &Target) -> Result<Backend, CliError> {
        let backend = Backend::connect_to(target).await?;
        if target.consistency == Consistency::Linearizable {
            match &backend {
                Backend::Remote(client, _) => client.read_barrier().await?,
                Backend::Local(service, _) => service.linearize().await?,
            }
        }
        Ok(backend)
    }

    async fn connect_to(target: &Target) -> Result<Backend, CliError> {
        if let Some(data) = &target.data {
            return open_local(data, target.local_caller()?).await;
        }
        if target.server.contains(',') {
            let nodes: Vec<String> = target
                .server
                .split(',')
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            let cluster = Arc::new(ClusterClient::with_options(
                &nodes,
                target.client_options(),
                lode_client::RetryOptions::default(),
            )?);
            let client = cluster.client().await.map_err(|e| {
                CliError::new(format!("no node of {} answered ({e})", target.server))
            })?;
            return Ok(Backend::Remote(client, Some(cluster)));
        }
        if let Some(addr) = target.server.strip_prefix("tls://") {
            let host = addr
                .rsplit_once(':')
                .map_or(addr, |(h, _)| h)
                .trim_matches(['[', ']']);
            return Client::connect_tls_with(addr, &target.cert, host, target.client_options())
                .await
                .map(|c| Backend::Remote(c, None))
                .map_err(|e| CliError::new(format!("{}: {e}", target.server)));
        }
        let client = match target.server.strip_prefix("quic://") {
            Some(addr) => {
                let addr = tokio::net::lookup_host(addr)
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| CliError::new(format!("cannot resolve '{addr}'")))?;
                Client::connect_quic_with(addr, &target.cert, "localhost", target.client_options())
                    .await
            }
            None => Client::connect_tcp_with(&target.server, target.client_options()).await,
        };
        client.map(|c| Backend::Remote(c, None)).map_err(|e| match e {
            lode_client::ClientError::Server { message, .. } => {
                CliError::new(format!("{}: {message}", target.server))
            }
            other => CliError::new(format!(
                "no lode server at {} ({other})\n  start one with `lode serve`, or open a data directory directly with --data DIR",
                target.server
            )),
        })
    }

    /// A batcher of `batch` records to the server, keyed and retried over
    /// a cluster's nodes when several were given; `None` for a data
    /// directory.
    pub(crate) async fn batcher(&self, batch: usize) -> Result<Option<Batcher>, CliError> {
        Ok(match self {
            Backend::Remote(_, Some(cluster)) => {
                Some(Batcher::for_cluster(Arc::clone(cluster), batch, 8).await?)
            }
            Backend::Remote(client, None) => Some(Batcher::new(client.clone(), batch, 8)),
            Backend::Local(..) => None,
        })
    }

    pub(crate) async fn append(&self, records: Vec<LogRecord>) -> Result<u64, CliError> {
        let n = records.len() as u64;
        match self {
            Backend::Remote(client, _) => {
                client.append(&records).await?;
            }
            Backend::Local(service, caller) => {
                service.append_records(caller, records, None).await?;
            }
        }
        Ok(n)
    }

    pub(crate) async fn query(
        &self,
        filter: Filter,
        limit: u32,
        cursor: Option<String>,
    ) -> Result<Page, CliError> {
        match self {
            Backend::Remote(client, _) => {
                let page = client.query(filter, limit, cursor).await?;
                Ok(Page {
                    records: page
                        .records
                        .into_iter()
                        .map(|r| Record {
                            seq: r.seq,
                            log: r.into_log(),
                        })
                        .collect(),
                    next_cursor: page.next_cursor,
                })
            }
            Backend::Local(service, caller) => {
                let page = service
                    .query(caller, filter, limit as usize, cursor)
                    .await?;
                Ok(Page {
                    records: page.records,
                    next_cursor: page.next_cursor,
                })
            }
        }
    }

    pub(crate) async fn count(&self, filter: Filter) -> Result<u64, CliError> {
        Ok(match self {
            Backend::Remote(client, _) => client.count(filter).await?,
            Backend::Local(service, caller) => service.count(caller, filter).await?,
        })
    }

    pub(crate) async fn top(
        &self,
        filter: Filter,
        field: &str,
        k: u32,
    ) -> Result<Vec<(String, u64)>, CliError> {
        Ok(match self {
            Backend::Remote(client, _) => client.top(filter, field, k).await?,
            Backend::Local(service, caller) => {
                service.top(caller, filter, field, k as usize).await?
            }
        })
    }

    pub(crate) async fn histogram(
        &self,
        filter: Filter,
        width: Option<i64>,
    ) -> Result<lode_client::Histogram, CliError> {
        Ok(match self {
            Backend::Remote(client, _) => client.histogram(filter, width).await?,
            Backend::Local(service, caller) => {
                let h = service.histogram(caller, filter, width).await?;
                lode_client::Histogram {
                    start: h.start,
                    width: h.width,
                    buckets: h.buckets,
                }
            }
        })
    }

    pub(crate) async fn stats(&self) -> Result<Vec<(String, u64)>, CliError> {
        Ok(match self {
            Backend::Remote(client, _) => client.stats().await?,
            Backend::Local(service, _) => service.figures(),
        })
    }

    /// Calls `each` with every record matching `query` from now on.
    pub(crate) async fn tail(
        &self,
        query: &str,
        mut each: impl FnMut(&Record) -> std::io::Result<()>,
    ) -> Result<(), CliError> {
        match self {
            Backend::Remote(client, _) => {
                let mut tail = client.tail(query, None).await?;
                while let Some(records) = tail.next().await? {
                    for r in records {
                        each(&Record {
                            seq: r.seq,
                            log: r.into_log(),
                        })?;
                    }
                }
                Ok(())
            }
            Backend::Local(service, caller) => {
                let mut tail = service.tail(caller, query, None)?;
                loop {
                    let next = tokio::task::block_in_place(|| {
                        tail.next_timeout(Duration::from_millis(200))
                    });
                    if let Some(record) = next.map_err(|e| CliError::new(e.to_string()))? {
                        each(&record)?;
                    }
                }
            }
        }
    }

    pub(crate) fn close(self) -> Result<(), CliError> {
        if let Backend::Local(service, _) = self {
            (*service).close()?;
        }
        Ok(())
    }
}

async fn open_local(data: &Path, caller: Caller) -> Result<Backend, CliError> {
    let config = Config {
        data: data.to_owned(),
        ..Config::default()
    };
    let service = tokio::task::spawn_blocking(move || Service::open(&config))
        .await
        .map_err(|e| CliError::new(e.to_string()))?
        .map_err(|e| match e {
            lode_server::Error::Engine(locked @ lode_engine::Error::Locked { .. }) => CliError::new(format!(
                "{locked}\n  if that is a lode server, talk to it with --server instead of --data"
            )),
            other => other.into(),
        })?;
    // A directory opened cold may have records its index has not caught
    // up with yet; queries should see them.
    let caught_up = tokio::task::block_in_place(|| service.wait_indexed(Duration::from_secs(120)));
    if !caught_up {
        eprintln!("lode: the index is still catching up; results may miss the newest records");
    }
    Ok(Backend::Local(Box::new(service), caller))
}
