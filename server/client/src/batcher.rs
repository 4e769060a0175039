//! Batching with back-pressure: records are gathered into batches, each
//! batch is sent as soon as it is full (in order: seqs follow the order of
//! `push`), and at most `window` batches wait for their acknowledgement at
//! once.

use std::collections::VecDeque;

use lode_codec::{EncodedBatch, LogRecord};

use crate::{Client, ClientError, PendingAppend, Result};

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
    records: Vec<LogRecord>,
    batch_records: usize,
    window: usize,
    in_flight: VecDeque<PendingAppend>,
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
            records: Vec::with_capacity(batch_records),
            batch_records: batch_records.max(1),
            in_flight: VecDeque::new(),
            acknowledged: 0,
        }
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
        let pending = self.client.submit_encoded(batch).await?;
        self.in_flight.push_back(pending);
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<()> {
        if let Some(pending) = self.in_flight.pop_front() {
            let appended = pending.wait().await?;
            self.acknowledged += appended.end - appended.start;
        }
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
