//! Where a keyed batch landed: the types a log, its store and the
//! replication wire share.

use crate::frame::BatchKey;

/// Seqs given to one append: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqRange {
    pub start: u64,
    pub end: u64,
}

impl SeqRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// A keyed batch in the log: its index, key and seqs (the seqs its
/// records have once applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedEntry {
    pub index: u64,
    pub key: BatchKey,
    pub seqs: SeqRange,
}

impl KeyedEntry {
    /// Bytes of [`KeyedEntry::encode`].
    pub const LEN: usize = 40;

    /// Index, producer, sequence, first seq and seq after, each u64 LE.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let fields = [
            self.index,
            self.key.producer,
            self.key.sequence,
            self.seqs.start,
            self.seqs.end,
        ];
        for (slot, value) in out.chunks_exact_mut(8).zip(fields) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// What [`KeyedEntry::encode`] wrote; `None` for other bytes (a
    /// length not [`KeyedEntry::LEN`], or seqs that end before they
    /// start).
    pub fn decode(bytes: &[u8]) -> Option<KeyedEntry> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let field = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let entry = KeyedEntry {
            index: field(0)?,
            key: BatchKey {
                producer: field(1)?,
                sequence: field(2)?,
            },
            seqs: SeqRange {
                start: field(3)?,
                end: field(4)?,
            },
        };
        (entry.seqs.start <= entry.seqs.end).then_some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_and_bad_bytes_do_not() {
        let entry = KeyedEntry {
            index: 7,
            key: BatchKey {
                producer: u64::MAX,
                sequence: 3,
            },
            seqs: SeqRange { start: 10, end: 12 },
        };
        assert_eq!(KeyedEntry::decode(&entry.encode()), Some(entry));
        assert_eq!(KeyedEntry::decode(&entry.encode()[..39]), None);
        let mut backwards = entry;
        backwards.seqs = SeqRange { start: 12, end: 10 };
        assert_eq!(KeyedEntry::decode(&backwards.encode()), None);
    }
}
