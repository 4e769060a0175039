//! Sealed segments as the engine's manifest records them (and as a
//! cluster's snapshot lists them).

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

/// Manifest format version, the first byte of every entry. Version 1
/// had no records checksum; version 2 entries are of segments whose
/// values are records alone (sealed before tenants existed), version 3
/// of segments whose values start with their record's tenant, version 4
/// of segments whose values are chunks of records in columns.
const VERSION: u8 = 4;

/// What a sealed segment's SST values are, said by its manifest entry's
/// version byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// One value per record, its archive alone (the default tenant):
    /// sealed before tenants existed.
    Archives,
    /// One value per record: its tenant, then its archive
    /// (`lode_codec::encode_sealed_value`).
    TenantArchives,
    /// Runs of consecutive records in columns ([`crate::Chunk`]), each
    /// under the seq of its first record.
    #[default]
    Chunks,
}

impl Layout {
    fn version(self) -> u8 {
        match self {
            Layout::Archives => 2,
            Layout::TenantArchives => 3,
            Layout::Chunks => VERSION,
        }
    }
}

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
    /// crc32c of the segment's records in seq order, each as its length
    /// (u32 LE) then its bytes: the same on every node that holds the same
    /// records, whatever its SST file looks like (a cluster compares
    /// segments by it). `None` for a segment sealed by a version before it.
    pub records_crc32c: Option<u32>,
    /// What the SST's values are. Said by the entry's version byte, not
    /// archived.
    #[rkyv(with = rkyv::with::Skip)]
    pub layout: Layout,
}

/// A manifest entry of version 1.
#[derive(Archive, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SegmentMetaV1 {
    first_seq: u64,
    last_seq: u64,
    first_index: u64,
    last_index: u64,
    min_ts: i64,
    max_ts: i64,
    records: u64,
    wal_bytes: u64,
    sst_bytes: u64,
    sst_crc32c: u32,
    sealed_at: i64,
}

/// The running [`SegmentMeta::records_crc32c`] of records fed in seq order.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordsCrc(u32);

impl RecordsCrc {
    /// Adds one record's value: its length (u32 LE), then its bytes.
    pub fn add(&mut self, record: &[u8]) {
        self.add_parts(&[record]);
    }

    /// Adds a record as a value of one record per key holds it (its
    /// tenant's length and bytes, then its archive:
    /// [`crate::encode_sealed_value`]) without building that value, so a
    /// segment's checksum is the same whatever its layout.
    pub fn add_sealed(&mut self, tenant: &str, record: &[u8]) -> crate::Result<()> {
        let len = u8::try_from(tenant.len())
            .map_err(|_| crate::CodecError::Encode(format!("tenant of {} bytes", tenant.len())))?;
        self.add_parts(&[&[len], tenant.as_bytes(), record]);
        Ok(())
    }

    /// Adds the value made of `parts` one after another.
    fn add_parts(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.0 = crc32c::crc32c_append(self.0, &len.to_le_bytes());
        for part in parts {
            self.0 = crc32c::crc32c_append(self.0, part);
        }
    }

    pub fn value(self) -> u32 {
        self.0
    }
}

impl SegmentMeta {
    /// The manifest's (and the peer link's) encoding: a version byte,
    /// then the rkyv archive.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain integers into a Vec cannot fail.
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, vec![self.layout.version()])
            .unwrap_or_else(|e| unreachable!("encoding a SegmentMeta failed: {e}"))
    }

    /// Reads [`SegmentMeta::encode`]'s bytes, checked (outside bytes are
    /// never trusted); version 1 entries read with no records checksum.
    pub fn decode(bytes: &[u8]) -> Result<SegmentMeta, String> {
        let (&version, body) = bytes.split_first().ok_or("empty manifest entry")?;
        match version {
            2..=VERSION => {
                let mut meta = rkyv::from_bytes::<SegmentMeta, rancor::Error>(body)
                    .map_err(|e| e.to_string())?;
                meta.layout = match version {
                    2 => Layout::Archives,
                    3 => Layout::TenantArchives,
                    _ => Layout::Chunks,
                };
                Ok(meta)
            }
            1 => {
                let v1 = rkyv::from_bytes::<SegmentMetaV1, rancor::Error>(body)
                    .map_err(|e| e.to_string())?;
                Ok(SegmentMeta {
                    first_seq: v1.first_seq,
                    last_seq: v1.last_seq,
                    first_index: v1.first_index,
                    last_index: v1.last_index,
                    min_ts: v1.min_ts,
                    max_ts: v1.max_ts,
                    records: v1.records,
                    wal_bytes: v1.wal_bytes,
                    sst_bytes: v1.sst_bytes,
                    sst_crc32c: v1.sst_crc32c,
                    sealed_at: v1.sealed_at,
                    records_crc32c: None,
                    layout: Layout::Archives,
                })
            }
            other => Err(format!("unsupported manifest version {other}")),
        }
    }

    /// Whether any record of the segment may have a ts in `[since, until)`.
    pub fn overlaps_time(&self, since: i64, until: i64) -> bool {
        self.min_ts < until && self.max_ts >= since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record added by its tenant and archive counts as its one-value
    /// form does.
    #[test]
    fn a_sealed_record_is_checked_as_its_value() {
        for tenant in ["", "team-a"] {
            let mut value = Vec::new();
            crate::encode_sealed_value(tenant, b"archive bytes", &mut value).unwrap();
            let (mut whole, mut parts) = (RecordsCrc::default(), RecordsCrc::default());
            whole.add(&value);
            parts.add_sealed(tenant, b"archive bytes").unwrap();
            assert_eq!(whole.value(), parts.value());
        }
        assert!(
            RecordsCrc::default()
                .add_sealed(&"x".repeat(256), b"")
                .is_err()
        );
    }

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
            records_crc32c: Some(7),
            layout: Layout::Chunks,
        };
        assert_eq!(SegmentMeta::decode(&meta.encode()).unwrap(), meta);
        for (layout, version) in [(Layout::Archives, 2), (Layout::TenantArchives, 3)] {
            let older = SegmentMeta {
                layout,
                ..meta.clone()
            };
            assert_eq!(older.encode()[0], version, "{layout:?} keeps its version");
            assert_eq!(SegmentMeta::decode(&older.encode()).unwrap(), older);
        }
        assert!(SegmentMeta::decode(&[]).is_err());
        assert!(SegmentMeta::decode(&[5, 0, 0]).is_err());
        assert!(SegmentMeta::decode(&[4, 0, 0]).is_err());
        assert!(SegmentMeta::decode(&[3, 0, 0]).is_err());
        assert!(SegmentMeta::decode(&[2, 0, 0]).is_err());
        assert!(SegmentMeta::decode(&[1, 0, 0]).is_err());
        // A version 1 entry reads with no records checksum.
        let v1 = SegmentMetaV1 {
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            first_index: meta.first_index,
            last_index: meta.last_index,
            min_ts: meta.min_ts,
            max_ts: meta.max_ts,
            records: meta.records,
            wal_bytes: meta.wal_bytes,
            sst_bytes: meta.sst_bytes,
            sst_crc32c: meta.sst_crc32c,
            sealed_at: meta.sealed_at,
        };
        let bytes = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&v1, vec![1]).unwrap();
        assert_eq!(
            SegmentMeta::decode(&bytes).unwrap(),
            SegmentMeta {
                records_crc32c: None,
                layout: Layout::Archives,
                ..meta
            }
        );
    }
}
