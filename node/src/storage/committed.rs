//! Which content (stacks, symbols) a group has committed, shared between the
//! group's writer thread and the code that proposes writes to the group.
//!
//! Why: a prepared write carries every stack and symbol of its pprofs, and a fleet
//! sends the same stacks every ten seconds. Shipping them again through the raft log
//! (synced on every replica, sent to every follower, decoded and looked up by every
//! apply) dominated the cluster's ingest cost. A node that hosts a replica of the
//! group strips what that replica has already committed before it proposes.
//!
//! Correctness contract (the reason stripping is safe):
//! - Only content that is in the group's committed state is ever recorded here: the
//!   writer records a commit's stacks and symbols after RocksDB accepted the batch.
//! - That state is a prefix of the group's committed raft log (a replica applies
//!   committed entries only, in order; a snapshot it installs is a later prefix).
//! - A proposed entry is appended after every committed entry, so every replica
//!   applies it after that prefix and holds the stripped content by then.
//! - Stacks and symbols are never deleted (retention removes samples, series and
//!   idempotency keys only; content ids are stable), so "held once" means "held at
//!   every later apply".
//!
//! The sets are bounded: when one is full it is emptied, which only means that the
//! next proposals carry content again.

use std::collections::HashSet;

use parking_lot::RwLock;

use super::symbols::ContentIdHash;

/// The stack hashes and symbol ids one group has committed (a bounded subset of
/// them: absence proves nothing, presence proves the content is stored).
#[derive(Debug)]
pub struct CommittedContent {
    stacks: RwLock<HashSet<u64, ContentIdHash>>,
    symbols: RwLock<HashSet<(u8, u64), ContentIdHash>>,
    capacity: usize,
}

impl CommittedContent {
    /// An empty record that holds at most `capacity` stacks and as many symbols.
    pub fn new(capacity: usize) -> CommittedContent {
        CommittedContent {
            stacks: RwLock::new(HashSet::default()),
            symbols: RwLock::new(HashSet::default()),
            capacity: capacity.max(1),
        }
    }

    /// Records content the group's state now holds durably. Callers must only pass
    /// content of a batch RocksDB accepted (see the module contract).
    pub fn record(&self, stacks: &[u64], symbols: &[(u8, u64)]) {
        if !stacks.is_empty() {
            let mut known = self.stacks.write();
            if known.len() + stacks.len() > self.capacity {
                known.clear();
            }
            known.extend(stacks.iter().copied());
        }
        if !symbols.is_empty() {
            let mut known = self.symbols.write();
            if known.len() + symbols.len() > self.capacity {
                known.clear();
            }
            known.extend(symbols.iter().copied());
        }
    }

    /// Forgets everything (the group's data was replaced or dropped).
    pub fn clear(&self) {
        self.stacks.write().clear();
        self.symbols.write().clear();
    }

    /// True when the stack with this content hash is stored in the group (tests; the
    /// proposer checks a whole write under one lock with [`Self::with_sets`]).
    #[cfg(test)]
    fn has_stack(&self, hash: u64) -> bool {
        self.stacks.read().contains(&hash)
    }

    /// Calls `visit` under one read lock of the stacks and one of the symbols, so a
    /// whole write is checked without taking a lock per item.
    pub fn with_sets<R>(
        &self,
        visit: impl FnOnce(&HashSet<u64, ContentIdHash>, &HashSet<(u8, u64), ContentIdHash>) -> R,
    ) -> R {
        let stacks = self.stacks.read();
        let symbols = self.symbols.read();
        visit(&stacks, &symbols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_content_is_known_until_cleared() {
        let content = CommittedContent::new(16);
        content.record(&[1, 2], &[(3, 4)]);
        assert!(content.has_stack(1));
        assert!(!content.has_stack(3));
        content.with_sets(|_, symbols| assert!(symbols.contains(&(3, 4))));
        content.clear();
        assert!(!content.has_stack(1));
    }

    #[test]
    fn a_full_set_is_emptied_not_grown() {
        let content = CommittedContent::new(4);
        content.record(&[1, 2, 3], &[]);
        content.record(&[4, 5], &[]);
        assert!(!content.has_stack(1), "the full set was emptied first");
        assert!(content.has_stack(4) && content.has_stack(5));
        content.with_sets(|stacks, _| assert!(stacks.len() <= 4));
    }
}
