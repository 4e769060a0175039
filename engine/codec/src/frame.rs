//! WAL frames: the unit the log writes, recovers and (later) replicates.
//!
//! ```text
//! offset  size  field
//!      0     4  len      payload length in bytes, u32 LE
//!      4     4  crc      crc32c of bytes 8 .. 25+len (kind, term, index, payload), u32 LE
//!      8     1  kind     1 = batch of records (see `batch.rs`), 2 = blank (a
//!                        Raft leader's first entry), 3 = membership (a Raft
//!                        configuration, opaque to the engine), 4 = keyed
//!                        batch (a batch, then its 16-byte [`BatchKey`]),
//!                        5 = retention decision, 6 = setting;
//!                        only batches hold records
//!      9     8  term     Raft term, u64 LE (0 in embedded mode)
//!     17     8  index    log index, u64 LE, dense from 1
//!     25   len  payload
//! ```
//!
//! Owns encoding and decoding of one frame over a byte slice. Never does
//! I/O and never trusts its input: every failure is a [`FrameError`].

use crate::batch::{BatchView, encode_batch_into};
use crate::record::LogRecord;
use crate::{CodecError, Result};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 25;
/// Largest payload a frame may carry (a sanity bound: the engine's own
/// batch limit is lower and configurable).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameKind {
    /// A batch of log records: standalone rkyv archives plus a trailer.
    Batch = 1,
    /// A Raft leader's blank entry: no payload, no records.
    Blank = 2,
    /// A Raft membership change: a payload the replication layer encodes,
    /// no records.
    Membership = 3,
    /// A batch whose payload is followed by the [`BatchKey`] its producer
    /// gave it, so that a retried batch is recognised.
    KeyedBatch = 4,
    /// A replicated retention decision: every node drops the records
    /// below a seq (payload: that seq, u64 LE); no records.
    Retain = 5,
    /// A replicated setting: every node sets (or removes) one of the
    /// engine's settings as it applies the entry (payload: the
    /// consensus layer's encoding of a name and a value); no records.
    Setting = 6,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Batch),
            2 => Some(FrameKind::Blank),
            3 => Some(FrameKind::Membership),
            4 => Some(FrameKind::KeyedBatch),
            5 => Some(FrameKind::Retain),
            6 => Some(FrameKind::Setting),
            _ => None,
        }
    }

    /// Whether frames of this kind carry records (a batch payload).
    pub fn holds_records(self) -> bool {
        matches!(self, FrameKind::Batch | FrameKind::KeyedBatch)
    }
}

/// Bytes of a [`BatchKey`] at the end of a keyed batch's payload.
pub const KEY_LEN: usize = 16;

/// What a producer calls one of its batches, the same on every retry:
/// its own random id and the batch's number among its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    pub producer: u64,
    pub sequence: u64,
}

impl BatchKey {
    pub fn to_bytes(self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        out[..8].copy_from_slice(&self.producer.to_le_bytes());
        out[8..].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }

    /// The key at the end of a keyed batch's payload, and the batch
    /// payload before it.
    pub fn split(payload: &[u8]) -> Option<(&[u8], BatchKey)> {
        let at = payload.len().checked_sub(KEY_LEN)?;
        let (batch, key) = payload.split_at(at);
        Some((
            batch,
            BatchKey {
                producer: read_u64(key, 0)?,
                sequence: read_u64(key, 8)?,
            },
        ))
    }
}

/// Why bytes are not a whole, valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame truncated: {available} bytes available, {needed} needed")]
    Truncated { needed: usize, available: usize },
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch: stored {expected:#010x}, computed {got:#010x}")]
    ChecksumMismatch { expected: u32, got: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// A decoded frame borrowing its payload from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    pub term: u64,
    pub index: u64,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Bytes this frame occupies, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// The batch this frame carries, its trailer checked.
    pub fn batch(&self) -> Result<BatchView<'a>> {
        BatchView::parse(batch_part(self.kind, self.payload)?)
    }

    /// The tenant of a batch's records as stored (empty: the default
    /// tenant); `None` for a frame that holds no records.
    pub fn tenant(&self) -> Option<&str> {
        if !self.kind.holds_records() {
            return None;
        }
        crate::batch::trailer_tenant(batch_part(self.kind, self.payload).ok()?)
    }

    /// A keyed batch's key.
    pub fn key(&self) -> Option<BatchKey> {
        key_of(self.kind, self.payload)
    }
}

/// The key at the end of a keyed batch's payload; `None` for other kinds.
fn key_of(kind: FrameKind, payload: &[u8]) -> Option<BatchKey> {
    match kind {
        FrameKind::KeyedBatch => BatchKey::split(payload).map(|(_, key)| key),
        _ => None,
    }
}

/// The batch payload of a frame of `kind`: all of a batch's, a keyed
/// batch's without its key.
fn batch_part(kind: FrameKind, payload: &[u8]) -> Result<&[u8]> {
    match kind {
        FrameKind::KeyedBatch => {
            BatchKey::split(payload)
                .map(|(batch, _)| batch)
                .ok_or_else(|| {
                    CodecError::Invalid(format!(
                        "a keyed batch of {} bytes has no room for its key",
                        payload.len()
                    ))
                })
        }
        _ => Ok(payload),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// Decodes the frame at the start of `bytes`, checking its checksum.
pub fn decode_frame(bytes: &[u8]) -> std::result::Result<Frame<'_>, FrameError> {
    let truncated = |needed| FrameError::Truncated {
        needed,
        available: bytes.len(),
    };
    let len = read_u32(bytes, 0).ok_or(truncated(HEADER_LEN))? as usize;
    if len <= MAX_PAYLOAD {
        let end = HEADER_LEN + len;
        let checked = bytes.get(8..end).ok_or(truncated(end))?;
        let expected = read_u32(bytes, 4).ok_or(truncated(HEADER_LEN))?;
        let got = crc32c::crc32c(checked);
        if got != expected {
            return Err(FrameError::ChecksumMismatch { expected, got });
        }
    }
    decode_frame_unchecksummed(bytes)
}

/// Decodes the frame at the start of `bytes` without its checksum: for a
/// frame whose checksum was checked when it was written or recovered and
/// whose bytes are read again in place. Bounds and kind are still checked,
/// and records are still checked when accessed.
pub fn decode_frame_unchecksummed(bytes: &[u8]) -> std::result::Result<Frame<'_>, FrameError> {
    let truncated = |needed| FrameError::Truncated {
        needed,
        available: bytes.len(),
    };
    let len = read_u32(bytes, 0).ok_or(truncated(HEADER_LEN))? as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_PAYLOAD,
        });
    }
    let end = HEADER_LEN + len;
    if bytes.len() < end {
        return Err(truncated(end));
    }
    let kind_byte = *bytes.get(8).ok_or(truncated(HEADER_LEN))?;
    let kind = FrameKind::from_byte(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
    let term = read_u64(bytes, 9).ok_or(truncated(HEADER_LEN))?;
    let index = read_u64(bytes, 17).ok_or(truncated(HEADER_LEN))?;
    let payload = bytes.get(HEADER_LEN..end).ok_or(truncated(end))?;
    Ok(Frame {
        kind,
        term,
        index,
        payload,
    })
}

/// A batch frame encoded once, before its term and index are known.
///
/// The payload's checksum is computed by the encoding thread; the log's
/// writer fills in term and index and combines the checksums, so the
/// single writer thread never touches the payload bytes.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    kind: FrameKind,
    bytes: Vec<u8>,
    payload_crc: u32,
    count: u32,
    min_ts: i64,
    max_ts: i64,
}

fn check_payload_len(len: usize) -> Result<()> {
    if len > MAX_PAYLOAD {
        return Err(CodecError::Frame(FrameError::TooLarge {
            len,
            max: MAX_PAYLOAD,
        }));
    }
    Ok(())
}

impl EncodedBatch {
    /// Encodes `records` as the payload of a batch frame.
    pub fn encode(records: &[LogRecord]) -> Result<EncodedBatch> {
        let tenant = records.first().map_or("", |r| r.tenant.as_str());
        if let Some(at) = records.iter().position(|r| r.tenant != tenant) {
            return Err(CodecError::Invalid(format!(
                "record {at} is of another tenant than the batch's first: a batch holds one tenant's records"
            )));
        }
        EncodedBatch::encode_as(records, tenant)
    }

    /// Encodes `records` as a batch of `tenant` (stored form: empty for
    /// the default tenant), whatever their own `tenant` fields say: a
    /// client encodes its records for the tenant its session writes to.
    pub fn encode_as(records: &[LogRecord], tenant: &str) -> Result<EncodedBatch> {
        let (batch, taken) = EncodedBatch::encode_prefix_as(records, tenant, usize::MAX)?;
        if taken < records.len() {
            return Err(CodecError::BatchTooLarge {
                count: records.len(),
            });
        }
        Ok(batch)
    }

    /// Encodes the longest prefix of `records` whose whole frame (header
    /// included) fits `max_frame_bytes`, as a batch of `tenant` (stored
    /// form), and says how many records it holds: a front end cuts a
    /// large request into batches the log takes. A first record too
    /// large alone is [`CodecError::RecordTooLarge`].
    pub fn encode_prefix_as(
        records: &[LogRecord],
        tenant: &str,
        max_frame_bytes: usize,
    ) -> Result<(EncodedBatch, usize)> {
        let (bytes, ts_range, taken) = encode_batch_into(
            records,
            tenant,
            vec![0u8; HEADER_LEN],
            HEADER_LEN,
            max_frame_bytes,
        )?;
        // `taken` is at most `MAX_BATCH_RECORDS`, which fits a u32.
        let batch = EncodedBatch::batch_made_here(bytes, taken as u32, ts_range)?;
        Ok((batch, taken))
    }

    /// A batch frame whose payload this process just wrote after the
    /// header's room, with its count and time range known: its length is
    /// checked and its checksum computed.
    fn batch_made_here(
        bytes: Vec<u8>,
        count: u32,
        (min_ts, max_ts): (i64, i64),
    ) -> Result<EncodedBatch> {
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        check_payload_len(payload.len())?;
        let payload_crc = crc32c::crc32c(payload);
        Ok(EncodedBatch {
            kind: FrameKind::Batch,
            bytes,
            payload_crc,
            count,
            min_ts,
            max_ts,
        })
    }

    /// A frame of a kind that holds no records (a Raft blank or membership
    /// entry) with `payload` as it is. Its time range is empty
    /// (`i64::MAX, i64::MIN`), so it never widens a segment's.
    pub fn without_records(kind: FrameKind, payload: &[u8]) -> Result<EncodedBatch> {
        if kind.holds_records() {
            return EncodedBatch::from_kind(kind, payload);
        }
        check_payload_len(payload.len())?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.resize(HEADER_LEN, 0);
        bytes.extend_from_slice(payload);
        Ok(EncodedBatch {
            kind,
            bytes,
            payload_crc: crc32c::crc32c(payload),
            count: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        })
    }

    /// A retention decision: drop the records below seq `floor`.
    pub fn retain(floor: u64) -> Result<EncodedBatch> {
        EncodedBatch::without_records(FrameKind::Retain, &floor.to_le_bytes())
    }

    /// The seq a retention decision keeps from; `None` for any other frame
    /// (or a retention payload that is not 8 bytes).
    pub fn retain_floor(&self) -> Option<u64> {
        let bytes: [u8; 8] = self.payload().try_into().ok()?;
        (self.kind == FrameKind::Retain).then(|| u64::from_le_bytes(bytes))
    }

    /// A frame already in the log (checked when it was written or
    /// recovered), copied out with its header's room so that it can be
    /// appended or shipped again: the trailer is read for count and time
    /// range, the records are not checked again.
    pub fn from_frame(frame: &Frame<'_>) -> Result<EncodedBatch> {
        EncodedBatch::from_log(frame.kind, frame.payload)
    }

    /// A frame of `kind` that another node's log holds (checked there
    /// when its client sent it, and by the peer link's authenticated
    /// encryption on the way): the trailer is read for count and time
    /// range, the records are checked when read, as for a frame the log
    /// recovers.
    pub fn from_log(kind: FrameKind, payload: &[u8]) -> Result<EncodedBatch> {
        let mut batch = EncodedBatch::without_records(FrameKind::Blank, payload)?;
        batch.kind = kind;
        if kind.holds_records() {
            let view = BatchView::parse(batch_part(kind, payload)?)?;
            batch.count = view.len() as u32;
            (batch.min_ts, batch.max_ts) = view.ts_range();
        }
        Ok(batch)
    }

    /// One batch of the records of `batches`, in order (their bytes
    /// copied once, not re-encoded): what a leader writes as one log entry
    /// for many small batches that arrived together. Only unkeyed batches
    /// merge.
    pub fn concat(batches: &[&EncodedBatch]) -> Result<EncodedBatch> {
        let mut views = Vec::with_capacity(batches.len());
        for batch in batches {
            if batch.kind != FrameKind::Batch {
                return Err(CodecError::Invalid(format!(
                    "only plain batches merge, not {:?}",
                    batch.kind
                )));
            }
            views.push(BatchView::parse(batch.payload())?);
        }
        let tenant = views.first().map_or("", BatchView::tenant);
        if views.iter().any(|v| v.tenant() != tenant) {
            return Err(CodecError::Invalid(
                "only batches of one tenant merge".to_owned(),
            ));
        }
        let records: usize = views.iter().map(|v| v.parts().0.len()).sum();
        // Record end offsets are u32: the records must fit them.
        check_payload_len(records)?;
        let count: usize = views.iter().map(BatchView::len).sum();
        if count > crate::batch::MAX_BATCH_RECORDS {
            return Err(CodecError::BatchTooLarge { count });
        }
        let count = count as u32;
        let mut bytes =
            Vec::with_capacity(HEADER_LEN + records + 4 * count as usize + tenant.len() + 21);
        bytes.resize(HEADER_LEN, 0);
        for view in &views {
            bytes.extend_from_slice(view.parts().0);
        }
        let mut offset = 0u32;
        for view in &views {
            let (data, ends) = view.parts();
            for end in ends
                .chunks_exact(4)
                .filter_map(|e| <[u8; 4]>::try_from(e).ok())
            {
                let end = u32::from_le_bytes(end) + offset;
                bytes.extend_from_slice(&end.to_le_bytes());
            }
            offset += data.len() as u32;
        }
        let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
        for view in views.iter().filter(|v| !v.is_empty()) {
            let (lo, hi) = view.ts_range();
            (min_ts, max_ts) = (min_ts.min(lo), max_ts.max(hi));
        }
        if count == 0 {
            (min_ts, max_ts) = (0, 0);
        }
        crate::batch::write_trailer(&mut bytes, tenant, (min_ts, max_ts), count as usize);
        EncodedBatch::batch_made_here(bytes, count, (min_ts, max_ts))
    }

    /// What the frame carries.
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The same batch with `key` (replacing a key it had): a keyed batch.
    pub fn with_key(mut self, key: BatchKey) -> Result<EncodedBatch> {
        if !self.kind.holds_records() {
            return Err(CodecError::Invalid(format!(
                "a {:?} frame takes no key",
                self.kind
            )));
        }
        let key = key.to_bytes();
        check_payload_len(self.bytes.len() - HEADER_LEN + KEY_LEN)?;
        if self.kind == FrameKind::KeyedBatch {
            self.bytes.truncate(self.bytes.len() - KEY_LEN);
            self.bytes.extend_from_slice(&key);
            self.payload_crc = crc32c::crc32c(self.payload());
        } else {
            // The payload is not read again: its checksum is extended.
            self.bytes.extend_from_slice(&key);
            self.payload_crc = crc32c::crc32c_append(self.payload_crc, &key);
        }
        self.kind = FrameKind::KeyedBatch;
        Ok(self)
    }

    /// The tenant of a batch's records as stored (empty: the default
    /// tenant); `None` for a frame that holds no records.
    pub fn tenant(&self) -> Option<&str> {
        if !self.kind.holds_records() {
            return None;
        }
        crate::batch::trailer_tenant(batch_part(self.kind, self.payload()).ok()?)
    }

    /// A keyed batch's key.
    pub fn key(&self) -> Option<BatchKey> {
        key_of(self.kind, self.payload())
    }

    /// Takes a batch payload made elsewhere (a client, a follower) after
    /// checking it whole: the trailer, every record's archive, and that the
    /// trailer's time range is the records' own. Nothing unchecked reaches
    /// the log.
    pub fn from_payload(payload: &[u8]) -> Result<EncodedBatch> {
        EncodedBatch::from_kind(FrameKind::Batch, payload)
    }

    /// As [`EncodedBatch::from_payload`] for a batch frame of `kind`
    /// (a keyed batch's payload ends with its key).
    pub fn from_kind(kind: FrameKind, payload: &[u8]) -> Result<EncodedBatch> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.resize(HEADER_LEN, 0);
        bytes.extend_from_slice(payload);
        EncodedBatch::from_reserved_kind(kind, bytes)
    }

    /// As [`EncodedBatch::from_payload`] for a payload read into a buffer
    /// after `HEADER_LEN` bytes of room for the frame header, so that it
    /// is not copied again.
    pub fn from_reserved(bytes: Vec<u8>) -> Result<EncodedBatch> {
        EncodedBatch::from_reserved_kind(FrameKind::Batch, bytes)
    }

    /// As [`EncodedBatch::from_reserved`] for a batch frame of `kind`.
    pub fn from_reserved_kind(kind: FrameKind, bytes: Vec<u8>) -> Result<EncodedBatch> {
        if !kind.holds_records() {
            return Err(CodecError::Invalid(format!(
                "a {kind:?} frame holds no records"
            )));
        }
        let payload = bytes.get(HEADER_LEN..).ok_or_else(|| {
            CodecError::Invalid(format!(
                "a reserved buffer needs {HEADER_LEN} bytes of room"
            ))
        })?;
        check_payload_len(payload.len())?;
        let view = BatchView::parse(batch_part(kind, payload)?)?;
        let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
        for record in view.iter() {
            let ts = record?.timestamp();
            (min_ts, max_ts) = (min_ts.min(ts), max_ts.max(ts));
        }
        if view.is_empty() {
            (min_ts, max_ts) = (0, 0);
        }
        if view.ts_range() != (min_ts, max_ts) {
            return Err(CodecError::Invalid(format!(
                "batch trailer says ts {:?}, its records span ({min_ts}, {max_ts})",
                view.ts_range()
            )));
        }
        let count = view.len() as u32;
        let payload_crc = crc32c::crc32c(payload);
        Ok(EncodedBatch {
            kind,
            bytes,
            payload_crc,
            count,
            min_ts,
            max_ts,
        })
    }

    /// Names `tenant` (stored form) in the trailer of a batch payload a
    /// client sent (in `bytes`, after `HEADER_LEN` bytes of room; a keyed
    /// batch's key stays after it), where the client named none: only the
    /// trailer's bytes change, never a record's. Returns the bytes and the
    /// tenant the client named (empty for none, or a format 1 batch),
    /// which the caller checks. Call before
    /// [`EncodedBatch::from_reserved_kind`], which checks the whole.
    pub fn stamp_tenant(
        kind: FrameKind,
        mut bytes: Vec<u8>,
        tenant: &str,
    ) -> Result<(Vec<u8>, String)> {
        let key_len = match kind {
            FrameKind::KeyedBatch => KEY_LEN,
            _ => 0,
        };
        let payload_len = bytes
            .len()
            .checked_sub(HEADER_LEN + key_len)
            .ok_or_else(|| {
                CodecError::Invalid("a batch too short for its header and key".to_owned())
            })?;
        let batch = bytes
            .get(HEADER_LEN..HEADER_LEN + payload_len)
            .unwrap_or_default();
        let (named, ends_end, count, ts) = crate::batch::trailer_parts(batch)?;
        let named = named.to_owned();
        if !named.is_empty() || (tenant.is_empty() && !crate::batch::is_format_1(batch)) {
            return Ok((bytes, named));
        }
        if tenant.len() > crate::record::MAX_TENANT_BYTES {
            return Err(CodecError::Encode(format!(
                "a tenant of {} bytes",
                tenant.len()
            )));
        }
        let key = bytes.split_off(HEADER_LEN + payload_len);
        bytes.truncate(HEADER_LEN + ends_end);
        crate::batch::write_trailer(&mut bytes, tenant, ts, count);
        bytes.extend_from_slice(&key);
        Ok((bytes, named))
    }

    /// The whole buffer: `HEADER_LEN` bytes of room for the frame header,
    /// then the payload. A client writes its own, shorter wire header at
    /// the end of that room and sends the payload without copying it.
    pub fn into_reserved(self) -> Vec<u8> {
        self.bytes
    }

    /// The payload bytes (what a client sends over the wire).
    pub fn payload(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }

    /// Number of records in the batch.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Smallest and largest record timestamp.
    pub fn ts_range(&self) -> (i64, i64) {
        (self.min_ts, self.max_ts)
    }

    /// Bytes of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        self.bytes.len()
    }

    /// The frame header for `term` and `index`: length, checksum (the
    /// header fields' combined with the payload's, so the payload is not
    /// read again), kind, term, index.
    pub fn header(&self, term: u64, index: u64) -> [u8; HEADER_LEN] {
        let payload_len = self.bytes.len() - HEADER_LEN;
        let mut fields = [0u8; HEADER_LEN - 8];
        fields[0] = self.kind as u8;
        fields[1..9].copy_from_slice(&term.to_le_bytes());
        fields[9..17].copy_from_slice(&index.to_le_bytes());
        let crc = crate::crc::combine(crc32c::crc32c(&fields), self.payload_crc, payload_len);
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        header[8..].copy_from_slice(&fields);
        header
    }

    /// Fills in the header for `term` and `index` and returns the finished
    /// frame bytes.
    pub fn seal(&mut self, term: u64, index: u64) -> &[u8] {
        let header = self.header(term, index);
        // `bytes` was created with the header's room reserved.
        if let Some(room) = self.bytes.get_mut(..HEADER_LEN) {
            room.copy_from_slice(&header);
        }
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Level;

    fn records(n: usize) -> Vec<LogRecord> {
        (0..n)
            .map(|i| LogRecord {
                ts: i as i64 * 1000,
                level: Level::Info,
                service: "svc".into(),
                host: "h".into(),
                attrs: vec![],
                message: format!("message number {i}"),
                tenant: String::new(),
            })
            .collect()
    }

    #[test]
    fn encode_then_decode() {
        let mut batch = EncodedBatch::encode(&records(10)).unwrap();
        assert_eq!(batch.count(), 10);
        assert_eq!(batch.ts_range(), (0, 9000));
        let bytes = batch.seal(3, 42).to_vec();
        let frame = decode_frame(&bytes).unwrap();
        assert_eq!(
            (frame.kind, frame.term, frame.index),
            (FrameKind::Batch, 3, 42)
        );
        assert_eq!(frame.encoded_len(), bytes.len());
        let decoded = frame.batch().unwrap();
        assert_eq!(decoded.len(), 10);
        assert_eq!(
            decoded.record(9).unwrap().message.as_str(),
            "message number 9"
        );
    }

    #[test]
    fn a_payload_from_outside_is_checked_then_sealed_like_a_local_one() {
        let mut local = EncodedBatch::encode(&records(5)).unwrap();
        let mut remote = EncodedBatch::from_payload(local.payload()).unwrap();
        assert_eq!((remote.count(), remote.ts_range()), (5, (0, 4000)));
        assert_eq!(remote.seal(1, 7), local.seal(1, 7));

        let mut lying = local.payload().to_vec();
        let at = lying.len() - 12; // max_ts in the trailer
        lying[at..at + 8].copy_from_slice(&99_999i64.to_le_bytes());
        let err = EncodedBatch::from_payload(&lying).unwrap_err();
        assert!(err.to_string().contains("span"), "{err}");

        let mut damaged = local.payload().to_vec();
        damaged[3] ^= 0xff;
        damaged[20] ^= 0xff;
        assert!(EncodedBatch::from_payload(&damaged).is_err());
    }

    #[test]
    fn batches_concatenate_into_one_with_their_records_in_order() {
        let all = records(7);
        let a = EncodedBatch::encode(&all[..3]).unwrap();
        let b = EncodedBatch::encode(&all[3..3]).unwrap();
        let c = EncodedBatch::encode(&all[3..]).unwrap();
        let merged = EncodedBatch::concat(&[&a, &b, &c]).unwrap();
        let whole = EncodedBatch::encode(&all).unwrap();
        assert_eq!(merged.payload(), whole.payload(), "as if encoded together");
        assert_eq!((merged.count(), merged.ts_range()), (7, (0, 6000)));
        let mut merged = merged;
        let mut whole = whole;
        assert_eq!(merged.seal(1, 2), whole.seal(1, 2));
        let keyed = a
            .clone()
            .with_key(BatchKey {
                producer: 1,
                sequence: 1,
            })
            .unwrap();
        assert!(EncodedBatch::concat(&[&a, &keyed]).is_err());
    }

    #[test]
    fn a_keyed_batch_carries_its_key_after_the_records() {
        let key = BatchKey {
            producer: 0xfeed,
            sequence: 7,
        };
        let mut keyed = EncodedBatch::encode(&records(3))
            .unwrap()
            .with_key(key)
            .unwrap();
        assert_eq!(
            (keyed.kind(), keyed.key(), keyed.count()),
            (FrameKind::KeyedBatch, Some(key), 3)
        );
        let bytes = keyed.seal(2, 5).to_vec();
        let frame = decode_frame(&bytes).unwrap();
        assert_eq!(
            (frame.kind, frame.key()),
            (FrameKind::KeyedBatch, Some(key))
        );
        assert_eq!(
            frame.batch().unwrap().record(2).unwrap().message.as_str(),
            "message number 2"
        );

        // From the wire, and as the log copies it out: the same frame.
        let mut remote = EncodedBatch::from_kind(FrameKind::KeyedBatch, keyed.payload()).unwrap();
        assert_eq!(remote.seal(2, 5), &bytes[..]);
        let mut copied = EncodedBatch::from_frame(&frame).unwrap();
        assert_eq!((copied.key(), copied.count()), (Some(key), 3));
        assert_eq!(copied.seal(2, 5), &bytes[..]);

        // A new key replaces the old one.
        let other = BatchKey {
            producer: 1,
            sequence: 2,
        };
        let mut rekeyed = keyed.clone().with_key(other).unwrap();
        assert_eq!(rekeyed.key(), Some(other));
        let rebytes = rekeyed.seal(2, 5).to_vec();
        assert_eq!(decode_frame(&rebytes).unwrap().key(), Some(other));

        // Too short for a key, or a batch without its key, is refused.
        assert!(EncodedBatch::from_kind(FrameKind::KeyedBatch, &[0; 5]).is_err());
        let plain = EncodedBatch::encode(&records(2)).unwrap();
        assert!(EncodedBatch::from_kind(FrameKind::KeyedBatch, plain.payload()).is_err());
        assert!(EncodedBatch::from_kind(FrameKind::Blank, plain.payload()).is_err());
    }

    #[test]
    fn frames_without_records_round_trip_with_their_kind() {
        for (kind, payload) in [
            (FrameKind::Blank, &b""[..]),
            (FrameKind::Membership, &b"voters 1 2 3"[..]),
        ] {
            let mut frame = EncodedBatch::without_records(kind, payload).unwrap();
            assert_eq!((frame.count(), frame.kind()), (0, kind));
            assert_eq!(frame.ts_range(), (i64::MAX, i64::MIN));
            let bytes = frame.seal(4, 9).to_vec();
            let decoded = decode_frame(&bytes).unwrap();
            assert_eq!(
                (decoded.kind, decoded.term, decoded.index, decoded.payload),
                (kind, 4, 9, payload)
            );
        }
        let mut bytes = EncodedBatch::without_records(FrameKind::Blank, b"")
            .unwrap()
            .seal(1, 1)
            .to_vec();
        bytes[8] = 9;
        assert!(decode_frame_unchecksummed(&bytes).is_err());
    }

    #[test]
    fn every_truncation_is_reported() {
        let bytes = EncodedBatch::encode(&records(3))
            .unwrap()
            .seal(0, 1)
            .to_vec();
        for cut in 0..bytes.len() {
            for decoded in [
                decode_frame(&bytes[..cut]),
                decode_frame_unchecksummed(&bytes[..cut]),
            ] {
                assert!(
                    matches!(decoded, Err(FrameError::Truncated { .. })),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn only_the_checked_decoder_reads_the_checksum() {
        let bytes = EncodedBatch::encode(&records(2))
            .unwrap()
            .seal(1, 7)
            .to_vec();
        let mut wrong_crc = bytes.clone();
        wrong_crc[4] ^= 1;
        assert!(matches!(
            decode_frame(&wrong_crc),
            Err(FrameError::ChecksumMismatch { .. })
        ));
        let frame = decode_frame_unchecksummed(&wrong_crc).unwrap();
        assert_eq!(frame.payload, decode_frame(&bytes).unwrap().payload);
        assert_eq!((frame.term, frame.index), (1, 7));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = EncodedBatch::encode(&records(2))
            .unwrap()
            .seal(1, 7)
            .to_vec();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame(&flipped).is_err(),
                "bit {bit} flip went unnoticed"
            );
        }
    }
}
