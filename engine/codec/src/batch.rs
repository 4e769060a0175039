//! The payload of a batch frame: one standalone rkyv archive per record,
//! then a trailer that indexes them.
//!
//! ```text
//! records  n standalone rkyv archives of LogRecord, back to back
//! ends     n × u32 LE: end offset of record i within the payload
//! min_ts   i64 LE    smallest record ts
//! max_ts   i64 LE    largest record ts
//! count    u32 LE    n
//! ```
//!
//! Each record is encoded once, on its own, so a sealed segment stores the
//! very same bytes as its value (no re-encoding at seal), and recovery
//! learns counts and time ranges from the trailer without touching the
//! records. Readers check each record with rkyv's checked access.

use rkyv::rancor;

use crate::record::{ArchivedLogRecord, LogRecord, access_record};
use crate::{CodecError, Result};

const FIXED_TRAILER: usize = 8 + 8 + 4;

/// Appends the payload of `records` to `out` (which may already hold a
/// frame header; offsets in the trailer are relative to `payload_start`).
/// Returns the bytes and the records' (min, max) ts.
pub(crate) fn encode_batch_into(
    records: &[LogRecord],
    mut out: Vec<u8>,
    payload_start: usize,
) -> Result<(Vec<u8>, (i64, i64))> {
    let mut ends = Vec::with_capacity(records.len());
    for record in records {
        out = rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, out)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        let end = u32::try_from(out.len() - payload_start)
            .map_err(|_| CodecError::Encode("batch payload exceeds 4 GiB".into()))?;
        ends.push(end);
    }
    let count = u32::try_from(records.len()).map_err(|_| CodecError::BatchTooLarge {
        count: records.len(),
    })?;
    out.reserve(ends.len() * 4 + FIXED_TRAILER);
    for end in ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    let min_ts = records.iter().map(|r| r.ts).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.ts).max().unwrap_or(0);
    out.extend_from_slice(&min_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    Ok((out, (min_ts, max_ts)))
}

/// A checked view of a batch payload: the trailer is validated, records
/// are checked one by one as they are read.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    records: &'a [u8],
    ends: &'a [u8],
    count: u32,
    min_ts: i64,
    max_ts: i64,
}

fn invalid(reason: impl Into<String>) -> CodecError {
    CodecError::Invalid(reason.into())
}

fn le<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at + N)?.try_into().ok()
}

impl<'a> BatchView<'a> {
    /// The records' bytes and the end offsets (u32 LE each), as stored.
    pub(crate) fn parts(&self) -> (&'a [u8], &'a [u8]) {
        (self.records, self.ends)
    }

    /// Validates the trailer of `payload`: sizes, and record end offsets
    /// that rise and end exactly where the trailer starts.
    pub fn parse(payload: &'a [u8]) -> Result<BatchView<'a>> {
        let fixed_at = payload.len().checked_sub(FIXED_TRAILER).ok_or_else(|| {
            invalid(format!(
                "batch payload of {} bytes has no trailer",
                payload.len()
            ))
        })?;
        let count =
            u32::from_le_bytes(le(payload, fixed_at + 16).ok_or_else(|| invalid("batch count"))?);
        let min_ts =
            i64::from_le_bytes(le(payload, fixed_at).ok_or_else(|| invalid("batch min_ts"))?);
        let max_ts =
            i64::from_le_bytes(le(payload, fixed_at + 8).ok_or_else(|| invalid("batch max_ts"))?);
        let ends_len = (count as usize)
            .checked_mul(4)
            .filter(|&len| len <= fixed_at)
            .ok_or_else(|| {
                invalid(format!(
                    "batch count {count} does not fit its {} bytes",
                    payload.len()
                ))
            })?;
        let records_len = fixed_at - ends_len;
        let records = payload
            .get(..records_len)
            .ok_or_else(|| invalid("batch records"))?;
        let ends = payload
            .get(records_len..fixed_at)
            .ok_or_else(|| invalid("batch ends"))?;
        let mut previous = 0u32;
        for chunk in ends.chunks_exact(4) {
            let end =
                u32::from_le_bytes(chunk.try_into().map_err(|_| invalid("batch end offset"))?);
            if end < previous || end as usize > records_len {
                return Err(invalid(format!(
                    "batch end offset {end} out of order or past {records_len}"
                )));
            }
            previous = end;
        }
        if previous as usize != records_len {
            return Err(invalid(format!(
                "batch records end at {previous}, trailer starts at {records_len}"
            )));
        }
        if count > 0 && min_ts > max_ts {
            return Err(invalid(format!("batch min_ts {min_ts} > max_ts {max_ts}")));
        }
        Ok(BatchView {
            records,
            ends,
            count,
            min_ts,
            max_ts,
        })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Smallest and largest record ts, as the trailer states them.
    pub fn ts_range(&self) -> (i64, i64) {
        (self.min_ts, self.max_ts)
    }

    fn end(&self, i: usize) -> Option<usize> {
        le::<4>(self.ends, i * 4).map(|b| u32::from_le_bytes(b) as usize)
    }

    /// The encoded bytes of record `i`: what a sealed segment stores.
    pub fn record_bytes(&self, i: usize) -> Option<&'a [u8]> {
        let start = if i == 0 { 0 } else { self.end(i - 1)? };
        self.records.get(start..self.end(i)?)
    }

    /// Checks and reads record `i` in place.
    pub fn record(&self, i: usize) -> Result<&'a ArchivedLogRecord> {
        let bytes = self
            .record_bytes(i)
            .ok_or_else(|| invalid(format!("no record {i} in a batch of {}", self.count)))?;
        access_record(bytes)
    }

    /// Every record, checked, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<&'a ArchivedLogRecord>> + '_ {
        (0..self.len()).map(|i| self.record(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn round_trips_behind_a_header() {
        let records: Vec<LogRecord> = (0..50).map(sample).collect();
        let (bytes, _) = encode_batch_into(&records, vec![0xAB; 25], 25).unwrap();
        let view = BatchView::parse(&bytes[25..]).unwrap();
        assert_eq!(view.len(), 50);
        assert_eq!(view.ts_range(), (records[49].ts, records[0].ts));
        for (archived, original) in view.iter().zip(&records) {
            assert_eq!(&archived.unwrap().to_owned_record().unwrap(), original);
        }
        // Each record's bytes are its standalone encoding.
        assert_eq!(
            view.record_bytes(3).unwrap(),
            crate::encode_record(&records[3]).unwrap()
        );
        assert!(view.record(50).is_err());
    }

    #[test]
    fn empty_batch_is_valid() {
        let (bytes, _) = encode_batch_into(&[], Vec::new(), 0).unwrap();
        let view = BatchView::parse(&bytes).unwrap();
        assert!(view.is_empty());
    }

    #[test]
    fn damaged_trailers_are_errors() {
        let records: Vec<LogRecord> = (0..3).map(sample).collect();
        let (bytes, _) = encode_batch_into(&records, Vec::new(), 0).unwrap();
        for cut in 0..bytes.len() {
            let _ = BatchView::parse(&bytes[..cut]);
        }
        let n = bytes.len();
        let mut huge_count = bytes.clone();
        huge_count[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BatchView::parse(&huge_count).is_err());
        let mut bad_end = bytes.clone();
        let ends_at = n - 20 - 12;
        bad_end[ends_at..ends_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BatchView::parse(&bad_end).is_err());
        assert!(BatchView::parse(&[]).is_err());
    }
}
