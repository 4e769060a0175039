//! Where the keyed batches of an embedded log landed: a keyed append
//! whose key is here is answered with the seqs it got the first time,
//! not written again. (A replicated log's leader decides that before it
//! proposes; its writer appends what the log holds.)

use std::collections::{HashMap, VecDeque};

use lode_codec::{BatchKey, KeyedEntry, SeqRange};

/// The newest keyed batches, at most `window` of them.
#[derive(Debug)]
pub(crate) struct KeyTable {
    seqs: HashMap<BatchKey, SeqRange>,
    order: VecDeque<BatchKey>,
    window: usize,
}

impl KeyTable {
    /// A table of `entries` (oldest first), the newest `window` kept.
    pub(crate) fn new(window: usize, entries: impl IntoIterator<Item = KeyedEntry>) -> KeyTable {
        let mut table = KeyTable {
            seqs: HashMap::new(),
            order: VecDeque::new(),
            window: window.max(1),
        };
        for entry in entries {
            table.insert(entry.key, entry.seqs);
        }
        table.trim();
        table
    }

    pub(crate) fn get(&self, key: BatchKey) -> Option<SeqRange> {
        self.seqs.get(&key).copied()
    }

    /// Forgets `key`, the newest inserted (a batch that was not written
    /// after all; several are taken back newest first).
    pub(crate) fn remove_newest(&mut self, key: BatchKey) {
        if self.order.back() == Some(&key) {
            self.order.pop_back();
            self.seqs.remove(&key);
        }
    }

    /// Adds `key`; the table may hold more than its window until
    /// [`KeyTable::trim`] (so that a batch not written after all is
    /// taken back without losing older keys).
    pub(crate) fn insert(&mut self, key: BatchKey, seqs: SeqRange) {
        if self.seqs.insert(key, seqs).is_none() {
            self.order.push_back(key);
        }
    }

    /// Forgets the oldest keys past the window.
    pub(crate) fn trim(&mut self) {
        while self.order.len() > self.window {
            if let Some(oldest) = self.order.pop_front() {
                self.seqs.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_keys_are_kept() {
        let key = |sequence| BatchKey {
            producer: 1,
            sequence,
        };
        let seqs = |start| SeqRange {
            start,
            end: start + 1,
        };
        let mut table = KeyTable::new(
            2,
            [1, 2, 3].map(|i| KeyedEntry {
                index: i,
                key: key(i),
                seqs: seqs(i),
            }),
        );
        assert_eq!(table.get(key(1)), None);
        assert_eq!(table.get(key(3)), Some(seqs(3)));
        table.insert(key(4), seqs(4));
        table.insert(key(5), seqs(5));
        table.remove_newest(key(5));
        assert_eq!(table.get(key(2)), Some(seqs(2)), "kept until trimmed");
        table.trim();
        assert_eq!(table.get(key(5)), None);
        assert_eq!(table.get(key(2)), None);
        assert_eq!(table.get(key(4)), Some(seqs(4)));
    }
}
