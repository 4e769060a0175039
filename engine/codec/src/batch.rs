//! The payload of a batch frame: one standalone rkyv archive per record,
//! then a trailer that indexes them.
//!
//! ```text
//! records  n standalone rkyv archives of LogRecord, back to back
//! ends     n × u32 LE: end offset of record i within the payload
//! tenant   the records' tenant, UTF-8 (empty: the default tenant)
//! len      u8        bytes of tenant
//! min_ts   i64 LE    smallest record ts
//! max_ts   i64 LE    largest record ts
//! count    u32 LE    n, in the low 24 bits; the format (2) in the top 8
//! ```
//!
//! Format 1 (count's top byte 0) had no tenant and no `len`: its records
//! are the default tenant's. All records of a batch have one tenant.
//!
//! Each record is encoded once, on its own, so it is read in place by its
//! position, and recovery learns counts and time ranges from the trailer
//! without touching the records. Readers check each record with rkyv's
//! checked access. (Sealing reads them in place into columns: `chunk`.)

use rkyv::rancor;

use crate::record::{LogRecord, MAX_TENANT_BYTES, RecordRef, access_record};
use crate::{CodecError, Result};

const FIXED_TRAILER: usize = 8 + 8 + 4;
/// The trailer format this build writes, in the top byte of `count`.
const FORMAT: u32 = 2;
/// Most records one batch holds (the count's low 24 bits).
pub const MAX_BATCH_RECORDS: usize = (1 << 24) - 1;

/// Appends the payload of `records`, all of `tenant` (stored form; the
/// records' own `tenant` fields are not read), to `out` (which may
/// already hold a frame header; offsets in the trailer are relative to
/// `payload_start`): as many records as fit `max_len` bytes of `out` in
/// all (`usize::MAX`: every one, up to [`MAX_BATCH_RECORDS`]). Returns
/// the bytes, the records' (min, max) ts and how many records it holds; a
/// first record that does not fit alone is [`CodecError::RecordTooLarge`].
pub(crate) fn encode_batch_into(
    records: &[LogRecord],
    tenant: &str,
    mut out: Vec<u8>,
    payload_start: usize,
    max_len: usize,
) -> Result<(Vec<u8>, (i64, i64), usize)> {
    if tenant.len() > MAX_TENANT_BYTES {
        return Err(CodecError::Encode(format!(
            "a tenant of {} bytes (at most {MAX_TENANT_BYTES})",
            tenant.len()
        )));
    }
    let mut ends = Vec::with_capacity(records.len());
    for record in records.iter().take(MAX_BATCH_RECORDS) {
        let before = out.len();
        out = rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, out)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        let trailer = (ends.len() + 1) * 4 + tenant.len() + 1 + FIXED_TRAILER;
        if out.len().saturating_add(trailer) > max_len {
            if ends.is_empty() {
                return Err(CodecError::RecordTooLarge {
                    bytes: out.len() - before + trailer,
                    limit: max_len.saturating_sub(payload_start),
                });
            }
            out.truncate(before);
            break;
        }
        let end = u32::try_from(out.len() - payload_start)
            .map_err(|_| CodecError::Encode("batch payload exceeds 4 GiB".into()))?;
        ends.push(end);
    }
    let taken = records.get(..ends.len()).unwrap_or_default();
    out.reserve(ends.len() * 4 + tenant.len() + 1 + FIXED_TRAILER);
    for end in ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    let min_ts = taken.iter().map(|r| r.ts).min().unwrap_or(0);
    let max_ts = taken.iter().map(|r| r.ts).max().unwrap_or(0);
    write_trailer(&mut out, tenant, (min_ts, max_ts), taken.len());
    Ok((out, (min_ts, max_ts), taken.len()))
}

/// Appends the trailer after the end offsets: tenant, its length, the
/// time range, the count with the format.
pub(crate) fn write_trailer(
    out: &mut Vec<u8>,
    tenant: &str,
    (min_ts, max_ts): (i64, i64),
    count: usize,
) {
    out.extend_from_slice(tenant.as_bytes());
    // Callers checked the tenant's and the count's bounds.
    out.push(tenant.len() as u8);
    out.extend_from_slice(&min_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    out.extend_from_slice(&((count as u32) | (FORMAT << 24)).to_le_bytes());
}

/// A trailer's tenant (stored form), where the end offsets end, the
/// count and the time range, read from the trailer alone (the end
/// offsets are not checked: [`BatchView::parse`] does).
pub(crate) fn trailer_parts(payload: &[u8]) -> Result<(&str, usize, usize, (i64, i64))> {
    let fixed_at = payload
        .len()
        .checked_sub(FIXED_TRAILER)
        .ok_or_else(|| invalid("batch payload has no trailer"))?;
    let field =
        u32::from_le_bytes(le(payload, fixed_at + 16).ok_or_else(|| invalid("batch count"))?);
    let count = (field & 0x00FF_FFFF) as usize;
    let min_ts = i64::from_le_bytes(le(payload, fixed_at).ok_or_else(|| invalid("batch min_ts"))?);
    let max_ts =
        i64::from_le_bytes(le(payload, fixed_at + 8).ok_or_else(|| invalid("batch max_ts"))?);
    let tenant = trailer_tenant(payload).ok_or_else(|| invalid("batch trailer"))?;
    let ends_end = match field >> 24 {
        0 => fixed_at,
        _ => fixed_at - 1 - tenant.len(),
    };
    Ok((tenant, ends_end, count, (min_ts, max_ts)))
}

/// Whether a payload's trailer is of format 1 (no tenant).
pub(crate) fn is_format_1(payload: &[u8]) -> bool {
    payload
        .len()
        .checked_sub(1)
        .and_then(|last| payload.get(last))
        .is_some_and(|top| *top == 0)
}

/// The tenant a batch payload's trailer names (stored form), read from
/// the trailer alone; `None` if the trailer does not say one.
pub(crate) fn trailer_tenant(payload: &[u8]) -> Option<&str> {
    let fixed_at = payload.len().checked_sub(FIXED_TRAILER)?;
    let field = u32::from_le_bytes(le(payload, fixed_at + 16)?);
    match field >> 24 {
        0 => Some(""),
        FORMAT => {
            let len_at = fixed_at.checked_sub(1)?;
            let len = usize::from(*payload.get(len_at)?);
            let bytes = payload.get(len_at.checked_sub(len)?..len_at)?;
            std::str::from_utf8(bytes).ok()
        }
        _ => None,
    }
}

/// A checked view of a batch payload: the trailer is validated, records
/// are checked one by one as they are read.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    records: &'a [u8],
    ends: &'a [u8],
    tenant: &'a str,
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

    /// The records' tenant, as stored (empty: the default tenant).
    pub fn tenant(&self) -> &'a str {
        self.tenant
    }

    /// Validates the trailer of `payload`: sizes, the tenant, and record
    /// end offsets that rise and end exactly where the trailer starts.
    pub fn parse(payload: &'a [u8]) -> Result<BatchView<'a>> {
        let fixed_at = payload.len().checked_sub(FIXED_TRAILER).ok_or_else(|| {
            invalid(format!(
                "batch payload of {} bytes has no trailer",
                payload.len()
            ))
        })?;
        let field =
            u32::from_le_bytes(le(payload, fixed_at + 16).ok_or_else(|| invalid("batch count"))?);
        let count = field & 0x00FF_FFFF;
        let min_ts =
            i64::from_le_bytes(le(payload, fixed_at).ok_or_else(|| invalid("batch min_ts"))?);
        let max_ts =
            i64::from_le_bytes(le(payload, fixed_at + 8).ok_or_else(|| invalid("batch max_ts"))?);
        let (tenant, ends_at) = match field >> 24 {
            0 => ("", fixed_at),
            FORMAT => {
                let len_at = fixed_at
                    .checked_sub(1)
                    .ok_or_else(|| invalid("batch tenant length"))?;
                let len = usize::from(*payload.get(len_at).unwrap_or(&0));
                let start = len_at
                    .checked_sub(len)
                    .ok_or_else(|| invalid(format!("batch tenant of {len} bytes")))?;
                let bytes = payload.get(start..len_at).unwrap_or_default();
                let tenant = std::str::from_utf8(bytes)
                    .map_err(|e| invalid(format!("batch tenant: {e}")))?;
                (tenant, start)
            }
            other => return Err(invalid(format!("batch trailer of unknown format {other}"))),
        };
        let ends_len = (count as usize)
            .checked_mul(4)
            .filter(|&len| len <= ends_at)
            .ok_or_else(|| {
                invalid(format!(
                    "batch count {count} does not fit its {} bytes",
                    payload.len()
                ))
            })?;
        let records_len = ends_at - ends_len;
        let records = payload
            .get(..records_len)
            .ok_or_else(|| invalid("batch records"))?;
        let ends = payload
            .get(records_len..ends_at)
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
            tenant,
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

    /// Checks and reads record `i` in place, with the batch's tenant.
    pub fn record(&self, i: usize) -> Result<RecordRef<'a>> {
        let bytes = self
            .record_bytes(i)
            .ok_or_else(|| invalid(format!("no record {i} in a batch of {}", self.count)))?;
        Ok(RecordRef {
            tenant: self.tenant,
            record: access_record(bytes)?,
        })
    }

    /// Every record, checked, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<RecordRef<'a>>> + '_ {
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
        let (bytes, _, _) =
            encode_batch_into(&records, "", vec![0xAB; 25], 25, usize::MAX).unwrap();
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
    fn a_limit_takes_the_records_that_fit() {
        let records: Vec<LogRecord> = (0..50).map(sample).collect();
        let (whole, _, _) = encode_batch_into(&records, "", Vec::new(), 0, usize::MAX).unwrap();
        let limit = whole.len() / 2;
        let (bytes, ts, taken) = encode_batch_into(&records, "", Vec::new(), 0, limit).unwrap();
        assert!(bytes.len() <= limit && taken > 0 && taken < 50, "{taken}");
        let view = BatchView::parse(&bytes).unwrap();
        assert_eq!(view.len(), taken);
        assert_eq!(view.ts_range(), ts);
        let (more, _, _) = encode_batch_into(&records[taken..], "", Vec::new(), 0, limit).unwrap();
        assert!(BatchView::parse(&more).is_ok());
        match encode_batch_into(&records, "", Vec::new(), 0, 40) {
            Err(CodecError::RecordTooLarge { bytes, limit: 40 }) => assert!(bytes > 40),
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_holds_one_tenant_and_format_1_reads_as_the_default() {
        let records: Vec<LogRecord> = (0..6).map(sample).collect();
        let (bytes, _, taken) =
            encode_batch_into(&records[..4], "team-a", Vec::new(), 0, usize::MAX).unwrap();
        assert_eq!(taken, 4);
        let view = BatchView::parse(&bytes).unwrap();
        assert_eq!((view.tenant(), view.len()), ("team-a", 4));
        let first = view.record(0).unwrap().to_owned_record().unwrap();
        assert_eq!(
            first,
            LogRecord {
                tenant: "team-a".into(),
                ..records[0].clone()
            }
        );
        // Format 1: no tenant in the trailer, count's top byte 0.
        let mut old = Vec::new();
        let mut ends = Vec::new();
        for r in &records[4..] {
            old.extend_from_slice(&crate::encode_record(r).unwrap());
            ends.extend_from_slice(&(old.len() as u32).to_le_bytes());
        }
        old.extend_from_slice(&ends);
        let (lo, hi) = (records[5].ts, records[4].ts);
        old.extend_from_slice(&lo.to_le_bytes());
        old.extend_from_slice(&hi.to_le_bytes());
        old.extend_from_slice(&2u32.to_le_bytes());
        let view = BatchView::parse(&old).unwrap();
        assert_eq!((view.tenant(), view.len()), ("", 2));
        assert_eq!(
            view.record(1).unwrap().to_owned_record().unwrap(),
            records[5]
        );
        // An unknown format is refused.
        let mut strange = old.clone();
        let n = strange.len();
        strange[n - 1] = 7;
        assert!(BatchView::parse(&strange).is_err());
    }

    #[test]
    fn a_tenant_is_stamped_on_the_trailer_only() {
        use crate::{EncodedBatch, FrameKind, HEADER_LEN};
        let records: Vec<LogRecord> = (0..3).map(sample).collect();
        let unnamed = EncodedBatch::encode(&records).unwrap();
        let (bytes, named) =
            EncodedBatch::stamp_tenant(FrameKind::Batch, unnamed.clone().into_reserved(), "team-a")
                .unwrap();
        assert_eq!(named, "");
        let stamped = EncodedBatch::from_reserved_kind(FrameKind::Batch, bytes).unwrap();
        assert_eq!(stamped.tenant(), Some("team-a"));
        let view = BatchView::parse(stamped.payload()).unwrap();
        assert_eq!(
            view.record_bytes(2),
            BatchView::parse(unnamed.payload()).unwrap().record_bytes(2)
        );
        // A keyed batch keeps its key after the trailer.
        let key = crate::BatchKey {
            producer: 7,
            sequence: 9,
        };
        let keyed = unnamed.clone().with_key(key).unwrap();
        let (bytes, _) =
            EncodedBatch::stamp_tenant(FrameKind::KeyedBatch, keyed.into_reserved(), "team-b")
                .unwrap();
        let keyed = EncodedBatch::from_reserved_kind(FrameKind::KeyedBatch, bytes).unwrap();
        assert_eq!((keyed.tenant(), keyed.key()), (Some("team-b"), Some(key)));
        // A batch that names its tenant is left as it is, and says which.
        let mut named_records = records.clone();
        for r in &mut named_records {
            r.tenant = "team-c".into();
        }
        let named = EncodedBatch::encode(&named_records)
            .unwrap()
            .into_reserved();
        let (same, says) =
            EncodedBatch::stamp_tenant(FrameKind::Batch, named.clone(), "team-a").unwrap();
        assert_eq!((same, says.as_str()), (named, "team-c"));
        assert!(
            EncodedBatch::stamp_tenant(FrameKind::Batch, vec![0; HEADER_LEN + 3], "x").is_err()
        );
    }

    #[test]
    fn empty_batch_is_valid() {
        let (bytes, _, _) = encode_batch_into(&[], "", Vec::new(), 0, usize::MAX).unwrap();
        let view = BatchView::parse(&bytes).unwrap();
        assert!(view.is_empty());
    }

    #[test]
    fn damaged_trailers_are_errors() {
        let records: Vec<LogRecord> = (0..3).map(sample).collect();
        let (bytes, _, _) = encode_batch_into(&records, "", Vec::new(), 0, usize::MAX).unwrap();
        for cut in 0..bytes.len() {
            let _ = BatchView::parse(&bytes[..cut]);
        }
        let n = bytes.len();
        let mut huge_count = bytes.clone();
        huge_count[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BatchView::parse(&huge_count).is_err());
        let mut bad_end = bytes.clone();
        // The trailer: 3 ends, an empty tenant and its length, 20 bytes.
        let ends_at = n - 20 - 1 - 12;
        bad_end[ends_at..ends_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BatchView::parse(&bad_end).is_err());
        assert!(BatchView::parse(&[]).is_err());
    }
}
