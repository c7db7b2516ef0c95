//! Stacks of location ids in one flat, canonical list: what a group's merge partial
//! carries and what the coordinator merges.
//!
//! Why flat: a merge moves tens of thousands of stacks, each a few dozen ids. As one
//! `Vec` per stack they cost an allocation each to build, to decode from a peer and to
//! free, and the tree build walks them scattered over the heap. One buffer of ids with
//! the stacks' ends costs three allocations whatever the count, and is read in order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::storage::symbols::ContentIdHash;

/// Stacks (location ids, leaf first) with their values, in canonical form: sorted by
/// their ids, each stack once, no zero value. Two sets holding the same stacks and
/// values are equal, whatever order they were built from.
///
/// A set decoded from a peer is only canonical once [`StackSet::check`] passed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSet {
    /// Every stack's location ids, one stack after another.
    locations: Vec<u64>,
    /// Where each stack ends in `locations` (exclusive): ascending, the last one is
    /// `locations.len()`.
    ends: Vec<usize>,
    /// Each stack's value, by stack.
    values: Vec<i64>,
}

impl StackSet {
    /// The canonical set of `pairs` (any order; equal stacks are summed with wrapping
    /// adds, and stacks whose sum is zero are left out).
    pub fn from_pairs<S: AsRef<[u64]>>(pairs: impl IntoIterator<Item = (S, i64)>) -> StackSet {
        let mut pairs: Vec<(S, i64)> = pairs.into_iter().collect();
        pairs.sort_unstable_by(|left, right| left.0.as_ref().cmp(right.0.as_ref()));
        let mut sums = AscendingSums::new(StackSet::with_capacity(pairs.len(), 0));
        for (stack, value) in pairs {
            sums.add(stack, value);
        }
        sums.finish()
    }

    /// The canonical union of `sets` (each canonical): equal stacks summed with
    /// wrapping adds, zero sums left out. Merges the sorted sets instead of sorting
    /// their concatenation, so combining many groups' partials costs little more than
    /// reading them.
    pub fn merge(mut sets: Vec<StackSet>) -> StackSet {
        if sets.len() == 1 {
            return sets.pop().unwrap_or_default();
        }
        let (stacks, ids) = sets.iter().fold((0, 0), |(stacks, ids), set| {
            (stacks + set.len(), ids + set.locations.len())
        });
        let mut sums = AscendingSums::new(StackSet::with_capacity(stacks, ids));
        merge_ascending_runs(
            sets.iter().map(StackSet::iter).collect(),
            |(stack, _)| *stack,
            |(stack, value)| sums.add(stack, value),
        );
        sums.finish()
    }

    fn with_capacity(stacks: usize, ids: usize) -> StackSet {
        StackSet {
            locations: Vec::with_capacity(ids),
            ends: Vec::with_capacity(stacks),
            values: Vec::with_capacity(stacks),
        }
    }

    /// Appends a stack that sorts after every stack already in the set.
    fn push_nonzero(&mut self, stack: &[u64], value: i64) {
        if value == 0 {
            return;
        }
        debug_assert!(self.iter().last().is_none_or(|(last, _)| last < stack));
        self.locations.extend_from_slice(stack);
        self.ends.push(self.locations.len());
        self.values.push(value);
    }

    /// Number of stacks.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the set holds no stack.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The stacks with their values, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&[u64], i64)> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .zip(&self.values)
            .map(|((start, end), value)| (&self.locations[start..*end], *value))
    }

    /// Every location id the stacks name, ascending, each once.
    pub fn distinct_location_ids(&self) -> Vec<u64> {
        // Stacks name the same locations many times over; dedup before the sort, with the
        // hasher for content ids, so that only the distinct ids are sorted.
        let distinct: std::collections::HashSet<u64, ContentIdHash> =
            self.locations.iter().copied().collect();
        let mut ids: Vec<u64> = distinct.into_iter().collect();
        ids.sort_unstable();
        ids
    }

    /// Checks that the set is canonical and its ends lie within its ids, as a set from
    /// a peer must be before it is used: a wrong one would make [`Self::iter`] panic
    /// or a merge miscount.
    pub fn check(&self) -> Result<(), String> {
        if self.ends.len() != self.values.len() {
            return Err(format!(
                "{} stack ends for {} values",
                self.ends.len(),
                self.values.len()
            ));
        }
        let mut start = 0;
        for end in &self.ends {
            if *end < start || *end > self.locations.len() {
                return Err(format!(
                    "stack end {end} out of order or past {}",
                    self.locations.len()
                ));
            }
            start = *end;
        }
        if start != self.locations.len() {
            return Err(format!(
                "{} location ids after the last stack",
                self.locations.len() - start
            ));
        }
        if self.values.contains(&0) {
            return Err("a stack with a zero value".into());
        }
        let mut previous: Option<&[u64]> = None;
        for (stack, _) in self.iter() {
            if previous.is_some_and(|previous| previous >= stack) {
                return Err("stacks not in ascending order, or repeated".into());
            }
            previous = Some(stack);
        }
        Ok(())
    }
}

/// Builds a canonical set from stacks that arrive in ascending order, equal ones next
/// to each other: sums equal stacks (wrapping adds) and leaves out zero sums.
struct AscendingSums<S> {
    set: StackSet,
    /// The latest stack and the sum of its values so far, not yet in `set`.
    pending: Option<(S, i64)>,
}

impl<S: AsRef<[u64]>> AscendingSums<S> {
    fn new(set: StackSet) -> Self {
        AscendingSums { set, pending: None }
    }

    fn add(&mut self, stack: S, value: i64) {
        match &mut self.pending {
            Some((kept, sum)) if kept.as_ref() == stack.as_ref() => *sum = sum.wrapping_add(value),
            _ => {
                if let Some((kept, sum)) = self.pending.replace((stack, value)) {
                    self.set.push_nonzero(kept.as_ref(), sum);
                }
            }
        }
    }

    fn finish(mut self) -> StackSet {
        if let Some((kept, sum)) = self.pending.take() {
            self.set.push_nonzero(kept.as_ref(), sum);
        }
        self.set
    }
}

/// The head item of one run in [`merge_ascending_runs`]'s heap.
struct Head<K, T> {
    key: K,
    run: usize,
    item: T,
}

impl<K: Ord, T> PartialEq for Head<K, T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<K: Ord, T> Eq for Head<K, T> {}

impl<K: Ord, T> PartialOrd for Head<K, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Ord, T> Ord for Head<K, T> {
    /// Reversed, so that `BinaryHeap` pops the smallest key (then the earliest run).
    fn cmp(&self, other: &Self) -> Ordering {
        (&other.key, other.run).cmp(&(&self.key, self.run))
    }
}

/// Visits the items of `runs`, each ascending by `key`, in ascending key order; items
/// with equal keys in run order. Costs `O(n log runs)` for `n` items.
pub fn merge_ascending_runs<I: Iterator, K: Ord>(
    mut runs: Vec<I>,
    key: impl Fn(&I::Item) -> K,
    mut visit: impl FnMut(I::Item),
) {
    // One run (a single group's load, the common case) needs no heap.
    if runs.len() == 1 {
        runs.pop().into_iter().flatten().for_each(visit);
        return;
    }
    let mut heap = BinaryHeap::with_capacity(runs.len());
    for (run, iterator) in runs.iter_mut().enumerate() {
        if let Some(item) = iterator.next() {
            heap.push(Head {
                key: key(&item),
                run,
                item,
            });
        }
    }
    while let Some(Head { run, item, .. }) = heap.pop() {
        visit(item);
        if let Some(next) = runs[run].next() {
            heap.push(Head {
                key: key(&next),
                run,
                item: next,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pairs_of(set: &StackSet) -> Vec<(Vec<u64>, i64)> {
        set.iter().map(|(stack, value)| (stack.to_vec(), value)).collect()
    }

    #[test]
    fn from_pairs_sorts_sums_and_drops_zero_sums() {
        let set = StackSet::from_pairs(vec![
            (vec![3, 1], 5),
            (vec![1, 2], 2),
            (vec![3, 1], -5),
            (vec![1], 7),
            (vec![1, 2], 1),
            (vec![], 4),
        ]);
        assert_eq!(pairs_of(&set), vec![(vec![], 4), (vec![1], 7), (vec![1, 2], 3)]);
        assert_eq!(set.check(), Ok(()));
    }

    #[test]
    fn merge_of_one_set_is_that_set() {
        let set = StackSet::from_pairs(vec![(vec![2, 1], 3), (vec![1], 1)]);
        assert_eq!(StackSet::merge(vec![set.clone()]), set);
        assert_eq!(StackSet::merge(Vec::new()), StackSet::default());
    }

    #[test]
    fn check_rejects_sets_that_are_not_canonical() {
        let raw = |locations: &[u64], ends: &[usize], values: &[i64]| StackSet {
            locations: locations.to_vec(),
            ends: ends.to_vec(),
            values: values.to_vec(),
        };
        let unsorted = raw(&[2, 1], &[1, 2], &[1, 1]);
        let end_past_ids = raw(&[1], &[2], &[1]);
        let ids_after_last = raw(&[1, 2], &[1], &[1]);
        let zero = raw(&[1], &[1], &[0]);
        let missing_value = raw(&[1], &[1], &[]);
        for (name, set) in [
            ("unsorted", unsorted),
            ("end past the ids", end_past_ids),
            ("ids after the last end", ids_after_last),
            ("zero value", zero),
            ("missing value", missing_value),
        ] {
            assert!(set.check().is_err(), "{name} passed the check");
        }
    }

    fn stacks() -> impl Strategy<Value = Vec<(Vec<u64>, i64)>> {
        prop::collection::vec((prop::collection::vec(0u64..4, 0..4), -3i64..4), 0..40)
    }

    proptest! {
        /// Merging the sets of any split equals the set of everything at once.
        #[test]
        fn merge_equals_from_pairs_of_the_concatenation(parts in prop::collection::vec(stacks(), 0..6)) {
            let whole = StackSet::from_pairs(parts.iter().flatten().cloned());
            let merged = StackSet::merge(parts.iter().map(|part| StackSet::from_pairs(part.clone())).collect());
            prop_assert_eq!(merged.check(), Ok(()));
            prop_assert_eq!(merged, whole);
        }

        #[test]
        fn merge_ascending_runs_visits_in_key_order(runs in prop::collection::vec(prop::collection::vec(0u32..50, 0..20), 0..6)) {
            let sorted_runs: Vec<Vec<u32>> = runs.iter().map(|run| { let mut run = run.clone(); run.sort(); run }).collect();
            let mut visited = Vec::new();
            merge_ascending_runs(sorted_runs.iter().map(|run| run.iter().copied()).collect(), |item| *item, |item| visited.push(item));
            let mut expected: Vec<u32> = runs.into_iter().flatten().collect();
            expected.sort();
            prop_assert_eq!(visited, expected);
        }
    }
}
