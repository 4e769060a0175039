//! The batch keys a node's log holds: what makes a retried batch land
//! once.
//!
//! A producer gives every batch a [`BatchKey`] and sends the same key on
//! every retry. The key is in the batch's frame (a keyed batch), so every
//! node's log holds it where the batch is. [`Keys`] remembers, for the
//! newest keyed entries, where each key is: proposed on this node and not
//! yet in its log, in the log at an index, or applied with its seqs. The
//! leader looks a batch up before proposing it: a key already there is not
//! appended again, and is answered with its first seqs once applied.
//!
//! Every node keeps the table from its own log (appends add, cuts remove,
//! applies fill in seqs) so that a new leader knows the keys of the
//! entries it inherited, committed or not; an entry that a leader holds is
//! committed while it leads, or the leader is deposed (and the waiting
//! retry fails, to be retried again). At open the table is rebuilt from
//! the keys the engine keeps with its sealed segments (carried by
//! snapshots too) and the frames of the log's entries after them.
//!
//! Owns no consensus: which entry is committed is openraft's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use lode_engine::{BatchKey, SeqRange};
use tokio::sync::Notify;

/// Keyed entries remembered at most unless told (the engine's
/// [`lode_engine::KeyWindow`]): a retry is recognised while its first try
/// is among this many newest keyed batches.
#[cfg(test)]
const WINDOW: usize = 1 << 18;

/// Where a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Handed to Raft on this node, not yet in its log.
    Proposed,
    /// In the log at this index, not yet applied.
    Logged(u64),
    /// Applied at this index with these seqs.
    Applied(u64, SeqRange),
}

/// What a leader does with a batch it was asked to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The key is new here: propose the batch (the key is now `Proposed`).
    Propose,
    /// The batch is already proposed or in the log: wait for it.
    Wait,
    /// The batch was applied with these seqs.
    Done(SeqRange),
}

#[derive(Debug, Default)]
struct Table {
    slots: HashMap<BatchKey, Slot>,
    /// Keys in the log by index, to cut and to forget the oldest.
    by_index: BTreeMap<u64, BatchKey>,
}

/// The key table of one node; see the module documentation.
#[derive(Debug)]
pub(crate) struct Keys {
    table: Mutex<Table>,
    /// Woken on every change a waiting retry may be waiting for.
    changed: Notify,
    /// Keys in the log remembered at most.
    window: usize,
}

impl Keys {
    pub(crate) fn new(window: usize) -> Keys {
        Keys {
            table: Mutex::default(),
            changed: Notify::new(),
            window: window.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `key` up for a write, claiming it when it is new.
    pub(crate) fn claim(&self, key: BatchKey) -> Claim {
        let mut table = self.lock();
        match table.slots.get(&key) {
            None => {
                table.slots.insert(key, Slot::Proposed);
                Claim::Propose
            }
            Some(Slot::Applied(_, seqs)) => Claim::Done(*seqs),
            Some(Slot::Proposed | Slot::Logged(_)) => Claim::Wait,
        }
    }

    /// A proposal of `key` that did not reach the log (refused, or the
    /// node stopped leading first): it may be proposed again.
    pub(crate) fn release(&self, key: BatchKey) {
        let mut table = self.lock();
        if table.slots.get(&key) == Some(&Slot::Proposed) {
            table.slots.remove(&key);
        }
        drop(table);
        self.changed.notify_waiters();
    }

    /// `key`'s slot, if any.
    pub(crate) fn slot(&self, key: BatchKey) -> Option<Slot> {
        self.lock().slots.get(&key).copied()
    }

    /// A future that completes at the next change (create it before
    /// looking at the slot, so that no change is missed).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Entries appended to the log (a cut before them already removed
    /// whatever they replace).
    pub(crate) fn logged(&self, entries: impl IntoIterator<Item = (u64, BatchKey)>) {
        let mut table = self.lock();
        for (index, key) in entries {
            table.slots.insert(key, Slot::Logged(index));
            table.by_index.insert(index, key);
        }
        forget_oldest(&mut table, self.window);
        drop(table);
        self.changed.notify_waiters();
    }

    /// Keyed entries applied, with their seqs; also how the table is
    /// filled at open from the applied part of the log.
    pub(crate) fn applied(&self, entries: impl IntoIterator<Item = (u64, BatchKey, SeqRange)>) {
        let mut table = self.lock();
        for (index, key, seqs) in entries {
            table.slots.insert(key, Slot::Applied(index, seqs));
            table.by_index.insert(index, key);
        }
        forget_oldest(&mut table, self.window);
        drop(table);
        self.changed.notify_waiters();
    }

    /// The log was cut after `after` (all of it for `None`): keys of the
    /// entries cut are no longer in the log.
    pub(crate) fn cut_after(&self, after: Option<u64>) {
        let mut table = self.lock();
        let from = after.map_or(0, |a| a + 1);
        let cut = table.by_index.split_off(&from);
        for (index, key) in cut {
            table.forget(index, key);
        }
        drop(table);
        self.changed.notify_waiters();
    }

    /// A snapshot through index `through` was installed: what the table
    /// knew at or below it is replaced by the snapshot's keyed batches.
    pub(crate) fn installed(
        &self,
        through: u64,
        entries: impl IntoIterator<Item = (u64, BatchKey, SeqRange)>,
    ) {
        let mut table = self.lock();
        let after = table.by_index.split_off(&through.saturating_add(1));
        let replaced = std::mem::replace(&mut table.by_index, after);
        for (index, key) in replaced {
            table.forget(index, key);
        }
        drop(table);
        self.applied(entries);
    }
}

impl Table {
    /// Forgets `key` if its slot is the entry at `index` (a key logged
    /// again elsewhere stays).
    fn forget(&mut self, index: u64, key: BatchKey) {
        let here = self.slots.get(&key).copied();
        if matches!(here, Some(Slot::Logged(i) | Slot::Applied(i, _)) if i == index) {
            self.slots.remove(&key);
        }
    }
}

/// Keeps the newest `window` keys in the log.
fn forget_oldest(table: &mut Table, window: usize) {
    while table.by_index.len() > window {
        let Some((index, key)) = table.by_index.pop_first() else {
            break;
        };
        table.forget(index, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sequence: u64) -> BatchKey {
        BatchKey {
            producer: 9,
            sequence,
        }
    }

    fn seqs(start: u64, end: u64) -> SeqRange {
        SeqRange { start, end }
    }

    #[test]
    fn a_key_is_proposed_once_then_answered_from_the_log() {
        let keys = Keys::new(WINDOW);
        assert_eq!(keys.claim(key(1)), Claim::Propose);
        assert_eq!(keys.claim(key(1)), Claim::Wait, "a retry while in flight");
        keys.logged([(5, key(1))]);
        assert_eq!(keys.claim(key(1)), Claim::Wait);
        keys.applied([(5, key(1), seqs(10, 20))]);
        assert_eq!(keys.claim(key(1)), Claim::Done(seqs(10, 20)));
        assert_eq!(keys.claim(key(2)), Claim::Propose, "another key is new");
    }

    #[test]
    fn a_released_or_cut_key_may_be_proposed_again() {
        let keys = Keys::new(WINDOW);
        assert_eq!(keys.claim(key(1)), Claim::Propose);
        keys.release(key(1));
        assert_eq!(keys.claim(key(1)), Claim::Propose);
        keys.logged([(5, key(1)), (6, key(2))]);
        keys.release(key(1));
        assert_eq!(keys.slot(key(1)), Some(Slot::Logged(5)), "in the log: kept");
        keys.cut_after(Some(5));
        assert_eq!(keys.slot(key(2)), None, "cut");
        assert_eq!(keys.slot(key(1)), Some(Slot::Logged(5)), "before the cut");
        keys.cut_after(None);
        assert_eq!(keys.claim(key(1)), Claim::Propose);
    }

    #[test]
    fn a_key_logged_again_at_another_index_survives_the_cut_of_the_first() {
        // A follower's conflicting suffix held the key at 7; the leader's
        // log has it at 9 (a retry that reached the new leader first).
        let keys = Keys::new(WINDOW);
        keys.logged([(7, key(1))]);
        keys.logged([(9, key(1))]);
        keys.cut_after(Some(8));
        assert_eq!(keys.slot(key(1)), None, "the cut removed index 9's entry");
        keys.logged([(7, key(1))]);
        keys.logged([(9, key(1))]);
        keys.cut_after(Some(7));
        assert_eq!(keys.slot(key(1)), None);
    }

    #[test]
    fn an_installed_snapshot_replaces_the_keys_through_it() {
        let keys = Keys::new(WINDOW);
        keys.applied([(3, key(1), seqs(1, 2)), (5, key(2), seqs(2, 3))]);
        keys.logged([(9, key(3))]);
        keys.installed(6, [(4, key(7), seqs(40, 42))]);
        assert_eq!(keys.slot(key(1)), None, "replaced");
        assert_eq!(keys.slot(key(2)), None, "replaced");
        assert_eq!(keys.claim(key(7)), Claim::Done(seqs(40, 42)));
        assert_eq!(keys.slot(key(3)), Some(Slot::Logged(9)), "past it: kept");
    }

    #[test]
    fn only_the_newest_keys_are_remembered() {
        let keys = Keys::new(WINDOW);
        let n = WINDOW as u64 + 10;
        keys.applied((0..n).map(|i| (i, key(i), seqs(i, i + 1))));
        assert_eq!(keys.slot(key(9)), None);
        assert_eq!(keys.slot(key(10)), Some(Slot::Applied(10, seqs(10, 11))));
        assert_eq!(keys.lock().slots.len(), WINDOW);
    }
}
