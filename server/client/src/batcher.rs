//! Batching with back-pressure: records are gathered into batches, each
//! batch is sent as soon as it is full (in order: seqs follow the order of
//! `push`), and at most `window` batches wait for their acknowledgement at
//! once. Over a [`ClusterClient`], each batch is keyed, and when a
//! connection fails the batches still waiting are resent, keys unchanged,
//! through the next server.

use std::collections::VecDeque;
use std::sync::Arc;

use lode_codec::{EncodedBatch, LogRecord};

use crate::cluster::retryable;
use crate::{Client, ClientError, ClusterClient, PendingAppend, Result};

/// Gathers records into batches and appends them pipelined.
///
/// ```no_run
/// # async fn run(client: lode_client::Client) -> lode_client::Result<()> {
/// let mut batcher = lode_client::Batcher::new(client, 1000, 4);
/// for i in 0..10_000 {
///     batcher.push(lode_codec::LogRecord { message: format!("line {i}"), ..Default::default() }).await?;
/// }
/// let durable = batcher.finish().await?; // every record acknowledged
/// assert_eq!(durable, 10_000);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Batcher {
    client: Client,
    /// Set when batches are keyed and resent through the cluster's other
    /// servers.
    cluster: Option<Arc<ClusterClient>>,
    records: Vec<LogRecord>,
    batch_records: usize,
    window: usize,
    /// Each batch sent and not acknowledged, kept (keyed) when it may
    /// have to be resent.
    in_flight: VecDeque<(Option<EncodedBatch>, PendingAppend)>,
    acknowledged: u64,
}

impl Batcher {
    /// Batches of `batch_records`, at most `window` unacknowledged (and
    /// at most the client's `max_in_flight`: each unacknowledged batch
    /// holds one of its slots).
    pub fn new(client: Client, batch_records: usize, window: usize) -> Batcher {
        Batcher {
            window: window.clamp(1, client.max_in_flight()),
            client,
            cluster: None,
            records: Vec::with_capacity(batch_records),
            batch_records: batch_records.max(1),
            in_flight: VecDeque::new(),
            acknowledged: 0,
        }
    }

    /// As [`Batcher::new`], through `cluster`: every batch is keyed, and
    /// a failed connection has the unacknowledged batches resent, in
    /// order, to the next server, each written once.
    pub async fn for_cluster(
        cluster: Arc<ClusterClient>,
        batch_records: usize,
        window: usize,
    ) -> Result<Batcher> {
        let mut batcher = Batcher::new(cluster.client().await?, batch_records, window);
        batcher.cluster = Some(cluster);
        Ok(batcher)
    }

    /// Adds a record; sends a batch when one is full, waiting first when
    /// `window` batches are already unacknowledged.
    pub async fn push(&mut self, record: LogRecord) -> Result<()> {
        self.records.push(record);
        if self.records.len() >= self.batch_records {
            self.send().await?;
        }
        Ok(())
    }

    /// Adds many records, as [`Batcher::push`] does one by one.
    pub async fn extend(&mut self, records: Vec<LogRecord>) -> Result<()> {
        for record in records {
            self.push(record).await?;
        }
        Ok(())
    }

    /// Records acknowledged (durable) so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    async fn send(&mut self) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.window {
            self.settle_one().await?;
        }
        let batch =
            EncodedBatch::encode(&self.records).map_err(|e| ClientError::Encode(e.to_string()))?;
        self.records.clear();
        let Some(cluster) = &self.cluster else {
            let pending = self.client.submit_encoded(batch).await?;
            self.in_flight.push_back((None, pending));
            return Ok(());
        };
        let keyed = batch
            .with_key(cluster.next_key())
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        match self.client.submit_encoded(keyed.clone()).await {
            Ok(pending) => {
                self.in_flight.push_back((Some(keyed), pending));
                Ok(())
            }
            Err(e) if retryable(&e) => self.resend(keyed).await,
            Err(e) => Err(e),
        }
    }

    async fn settle_one(&mut self) -> Result<()> {
        if let Some((batch, pending)) = self.in_flight.pop_front() {
            match (pending.wait().await, batch) {
                (Ok(appended), _) => self.acknowledged += appended.end - appended.start,
                (Err(e), Some(batch)) if retryable(&e) => self.resend(batch).await?,
                (Err(e), _) => return Err(e),
            }
        }
        Ok(())
    }

    /// The connection failed with `failed` unacknowledged: it and every
    /// batch still in flight go again, in order and with their keys,
    /// through the cluster client (which moves to the next server), and
    /// the batcher goes on over its new connection.
    async fn resend(&mut self, failed: EncodedBatch) -> Result<()> {
        let Some(cluster) = self.cluster.clone() else {
            return Err(ClientError::Closed(None));
        };
        let mut again = vec![failed];
        again.extend(self.in_flight.drain(..).filter_map(|(batch, _)| batch));
        for batch in again {
            let appended = cluster.append_keyed(batch).await?;
            self.acknowledged += appended.end - appended.start;
        }
        self.client = cluster.client().await?;
        Ok(())
    }

    /// Sends what is gathered and waits for every acknowledgement; returns
    /// the records acknowledged in all. The batcher can go on after.
    pub async fn flush(&mut self) -> Result<u64> {
        self.send().await?;
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(self.acknowledged)
    }

    /// [`Batcher::flush`], when done.
    pub async fn finish(mut self) -> Result<u64> {
        self.flush().await
    }
}
