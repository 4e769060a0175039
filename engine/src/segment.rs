//! Sealed segments as the manifest records them.

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

/// Manifest format version, the first byte of every entry.
const VERSION: u8 = 1;

/// A sealed, immutable segment: one SST file of consecutive records.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// First and last seq held (inclusive).
    pub first_seq: u64,
    pub last_seq: u64,
    /// WAL indexes of the frames the segment was sealed from (inclusive).
    pub first_index: u64,
    pub last_index: u64,
    /// Smallest and largest record timestamp (ns).
    pub min_ts: i64,
    pub max_ts: i64,
    pub records: u64,
    /// Bytes of the WAL frames the segment came from.
    pub wal_bytes: u64,
    /// Size and crc32c of the SST file as written.
    pub sst_bytes: u64,
    pub sst_crc32c: u32,
    /// Wall-clock time of sealing (ns since the epoch).
    pub sealed_at: i64,
}

impl SegmentMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serialising plain integers into a Vec cannot fail.
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, vec![VERSION])
            .unwrap_or_else(|e| unreachable!("encoding a SegmentMeta failed: {e}"))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentMeta, String> {
        let (&version, body) = bytes.split_first().ok_or("empty manifest entry")?;
        if version != VERSION {
            return Err(format!("unsupported manifest version {version}"));
        }
        rkyv::from_bytes::<SegmentMeta, rancor::Error>(body).map_err(|e| e.to_string())
    }

    /// Whether any record of the segment may have a ts in `[since, until)`.
    pub fn overlaps_time(&self, since: i64, until: i64) -> bool {
        self.min_ts < until && self.max_ts >= since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let meta = SegmentMeta {
            first_seq: 1,
            last_seq: 100,
            first_index: 1,
            last_index: 5,
            min_ts: -3,
            max_ts: 9,
            records: 100,
            wal_bytes: 1234,
            sst_bytes: 999,
            sst_crc32c: 0xdead_beef,
            sealed_at: 42,
        };
        assert_eq!(SegmentMeta::decode(&meta.encode()).unwrap(), meta);
        assert!(SegmentMeta::decode(&[]).is_err());
        assert!(SegmentMeta::decode(&[2, 0, 0]).is_err());
        assert!(SegmentMeta::decode(&[1, 0, 0]).is_err());
    }
}
