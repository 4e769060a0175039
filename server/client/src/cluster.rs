//! A client of a cluster: several servers, appends retried until one of
//! them commits the batch, and never written twice.
//!
//! Every batch gets a key (this client's random producer id and the
//! batch's number) and is sent as a keyed append. When an answer is lost
//! (the connection dropped, the node had no leader, the leader moved),
//! the same batch with the same key goes to the next server; the cluster's
//! leader recognises a key it already holds and answers with the seqs of
//! the first try instead of appending again. Any node takes writes (a
//! follower forwards them), so the client moves on to the next address
//! rather than hunting for the leader.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lode_codec::{BatchKey, EncodedBatch, LogRecord};
use tokio::sync::Mutex;

use crate::{Appended, Client, ClientError, ClientOptions, ErrorCode, Result};

/// How a [`ClusterClient`] retries.
#[derive(Debug, Clone)]
pub struct RetryOptions {
    /// An append is retried for at most this long in all.
    pub give_up_after: Duration,
    /// One try waits this long for its answer before the next server is
    /// tried (a node that hangs, paused or cut off, answers nothing).
    pub attempt_timeout: Duration,
    /// Wait before the first retry; doubled after each, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            give_up_after: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// A connection to one of several servers of a cluster, moved to the
/// next address when it fails. Shared by reference between tasks.
#[derive(Debug)]
pub struct ClusterClient {
    addrs: Vec<String>,
    options: ClientOptions,
    retry: RetryOptions,
    current: Mutex<Option<(usize, Client)>>,
    /// The address to try first when connecting.
    first: AtomicUsize,
    producer: u64,
    next_sequence: AtomicU64,
    /// Retries made in all (each a resend of a batch).
    retries: AtomicU64,
}

/// A producer id unlikely to be any other client's: std's per-process
/// random hash keys, the clock and the process id, mixed.
fn random_producer() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Whether a failed append may have another try: the connection or the
/// node failed, or the cluster had no leader to take it.
pub(crate) fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Closed(_) => true,
        ClientError::Server { code, .. } => *code == Some(ErrorCode::Unavailable),
        _ => false,
    }
}

impl ClusterClient {
    /// A client of the servers at `addrs` (binary protocol over TCP), with
    /// default options. Connects on first use.
    pub fn new(addrs: &[String]) -> Result<ClusterClient> {
        ClusterClient::with_options(addrs, ClientOptions::default(), RetryOptions::default())
    }

    pub fn with_options(
        addrs: &[String],
        options: ClientOptions,
        retry: RetryOptions,
    ) -> Result<ClusterClient> {
        if addrs.is_empty() {
            return Err(ClientError::Io(
                "a cluster client needs at least one address".into(),
            ));
        }
        Ok(ClusterClient {
            addrs: addrs.to_vec(),
            options,
            retry,
            current: Mutex::new(None),
            first: AtomicUsize::new(0),
            producer: random_producer(),
            next_sequence: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    /// This client's producer id (the first half of its batches' keys).
    pub fn producer(&self) -> u64 {
        self.producer
    }

    /// Resends made so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The key the next batch gets.
    pub fn next_key(&self) -> BatchKey {
        BatchKey {
            producer: self.producer,
            sequence: self.next_sequence.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The current connection, made to the next address that answers
    /// when there is none.
    pub async fn client(&self) -> Result<Client> {
        Ok(self.connection().await?.1)
    }

    async fn connection(&self) -> Result<(usize, Client)> {
        let mut current = self.current.lock().await;
        if let Some(connected) = current.as_ref() {
            return Ok(connected.clone());
        }
        let start = self.first.load(Ordering::Relaxed);
        let mut last = None;
        let n = self.addrs.len();
        let order = self
            .addrs
            .iter()
            .enumerate()
            .cycle()
            .skip(start % n)
            .take(n);
        for (at, addr) in order {
            match Client::connect_tcp_with(addr, self.options.clone()).await {
                Ok(client) => {
                    *current = Some((at, client.clone()));
                    return Ok((at, client));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Io("no address".into())))
    }

    /// Drops the connection to `at` (if still current): the next try
    /// connects to the address after it.
    async fn move_on(&self, at: usize) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(i, _)| *i == at) {
            *current = None;
            self.first
                .store((at + 1) % self.addrs.len(), Ordering::Relaxed);
        }
    }

    /// Appends records as one keyed batch; returns once the cluster
    /// committed it, retrying on other servers meanwhile.
    pub async fn append(&self, records: &[LogRecord]) -> Result<Appended> {
        let batch =
            EncodedBatch::encode(records).map_err(|e| ClientError::Encode(e.to_string()))?;
        self.append_encoded(batch).await
    }

    /// Appends a batch under a new key of this client.
    pub async fn append_encoded(&self, batch: EncodedBatch) -> Result<Appended> {
        let batch = batch
            .with_key(self.next_key())
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        self.append_keyed(batch).await
    }

    /// Appends a batch that already has its key (a resend of one whose
    /// answer was lost keeps it), retrying until committed or
    /// `give_up_after` has passed.
    pub async fn append_keyed(&self, batch: EncodedBatch) -> Result<Appended> {
        let deadline = Instant::now() + self.retry.give_up_after;
        let mut backoff = self.retry.backoff;
        loop {
            let (at, e) = match self.connection().await {
                Ok((at, client)) => {
                    let attempt = client.append_encoded(batch.clone());
                    match tokio::time::timeout(self.retry.attempt_timeout, attempt).await {
                        Ok(Ok(appended)) => return Ok(appended),
                        Ok(Err(e)) => (Some(at), e),
                        Err(_) => (
                            Some(at),
                            ClientError::Io(format!(
                                "{}: no answer within {:?}",
                                self.addrs.get(at).map_or("?", String::as_str),
                                self.retry.attempt_timeout
                            )),
                        ),
                    }
                }
                Err(e) => (None, e),
            };
            if !retryable(&e) || Instant::now() + backoff > deadline {
                return Err(e);
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            if let Some(at) = at {
                self.move_on(at).await;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }
}
