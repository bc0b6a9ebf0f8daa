//! Offset tracking for at-least-once delivery: a raw record's offset may be committed only once
//! it and every record before it in its partition has been acknowledged by the broker (enriched
//! record delivered, or copied to the dead-letter topic). Acknowledgements arrive in any order.
//!
//! Offsets are not assumed contiguous (compaction and transaction markers leave gaps): the
//! committable position of a partition is the lowest offset still pending, or, when none is,
//! one past the highest offset consumed. That is the *next offset to consume*, the value Kafka
//! commits; hand it to `Consumer::store_offsets` (which stores it as is), not to `store_offset`
//! (which adds one).

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
struct PartitionState {
    /// Consumed, not yet acknowledged.
    pending: BTreeSet<i64>,
    /// Highest offset consumed so far.
    highest: Option<i64>,
    /// Last position handed out by [`OffsetTracker::take_committable`].
    taken: Option<i64>,
}

impl PartitionState {
    fn committable(&self) -> Option<i64> {
        match self.pending.first() {
            Some(&lowest) => Some(lowest),
            None => self.highest.map(|h| h + 1),
        }
    }
}

/// Per-partition tracking of consumed and acknowledged offsets of one topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<i32, PartitionState>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was consumed and awaits its acknowledgement. Call in consumption order.
    pub fn consumed(&mut self, partition: i32, offset: i64) {
        let state = self.partitions.entry(partition).or_default();
        state.pending.insert(offset);
        state.highest = Some(state.highest.map_or(offset, |h| h.max(offset)));
    }

    /// Records the acknowledgement of `offset`; returns false if it was not pending.
    pub fn acknowledged(&mut self, partition: i32, offset: i64) -> bool {
        self.partitions
            .get_mut(&partition)
            .is_some_and(|s| s.pending.remove(&offset))
    }

    /// The highest offset consumed from `partition` since it was last forgotten.
    pub fn highest(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition)?.highest
    }

    /// Forgets everything of `partition` (revoked, or a new incarnation of its topic): later
    /// acknowledgements of its records must not reach this tracker (the pipeline drops those of
    /// an older epoch), and its position starts again with the next record consumed.
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Number of records consumed and not yet acknowledged, over all partitions.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }

    /// The next offset to commit for `partition` (every record below it is acknowledged).
    pub fn committable(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition)?.committable()
    }

    /// The committable position of `partition` if it moved since it was last taken.
    pub fn take_committable(&mut self, partition: i32) -> Option<i64> {
        let state = self.partitions.get_mut(&partition)?;
        let position = state.committable()?;
        if state.taken == Some(position) {
            return None;
        }
        state.taken = Some(position);
        Some(position)
    }

    /// Every partition's committable position, e.g. for the final commit.
    pub fn all_committable(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(&p, s)| Some((p, s.committable()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_committable_before_anything_is_consumed() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.committable(0), None);
        assert_eq!(t.take_committable(0), None);
        assert!(t.all_committable().is_empty());
        assert!(!t.acknowledged(0, 5));
    }

    #[test]
    fn out_of_order_acks_hold_back_the_position_until_the_gap_closes() {
        let mut t = OffsetTracker::new();
        for o in 0..5 {
            t.consumed(0, o);
        }
        // Position is the first unacknowledged offset: nothing done yet.
        assert_eq!(t.committable(0), Some(0));
        assert!(t.acknowledged(0, 3));
        assert!(t.acknowledged(0, 1));
        assert_eq!(t.committable(0), Some(0), "offset 0 still pending");
        assert!(t.acknowledged(0, 0));
        assert_eq!(t.committable(0), Some(2), "0 and 1 done, 2 pending");
        assert!(t.acknowledged(0, 4));
        assert_eq!(t.committable(0), Some(2));
        assert!(t.acknowledged(0, 2));
        assert_eq!(t.committable(0), Some(5), "all done: next to consume");
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn an_unacknowledged_record_is_never_committed_past() {
        let mut t = OffsetTracker::new();
        for o in 10..20 {
            t.consumed(0, o);
        }
        for o in (10..20).filter(|&o| o != 13) {
            assert!(t.acknowledged(0, o));
        }
        assert_eq!(t.committable(0), Some(13));
        assert_eq!(t.all_committable(), vec![(0, 13)]);
    }

    #[test]
    fn partitions_are_independent_and_gaps_in_offsets_are_fine() {
        let mut t = OffsetTracker::new();
        // Compacted topic: offsets 0, 4, 9 only.
        for o in [0, 4, 9] {
            t.consumed(0, o);
        }
        t.consumed(1, 100);
        assert!(t.acknowledged(0, 0));
        assert!(t.acknowledged(0, 4));
        assert_eq!(t.committable(0), Some(9));
        assert!(t.acknowledged(0, 9));
        assert_eq!(t.committable(0), Some(10));
        assert_eq!(t.committable(1), Some(100));
        assert_eq!(t.all_committable(), vec![(0, 10), (1, 100)]);
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn take_committable_reports_each_position_once() {
        let mut t = OffsetTracker::new();
        t.consumed(2, 0);
        t.consumed(2, 1);
        assert_eq!(t.take_committable(2), Some(0));
        assert_eq!(t.take_committable(2), None);
        t.acknowledged(2, 1);
        assert_eq!(t.take_committable(2), None, "0 still pending: unchanged");
        t.acknowledged(2, 0);
        assert_eq!(t.take_committable(2), Some(2));
        assert_eq!(t.take_committable(2), None);
    }

    #[test]
    fn a_forgotten_partition_starts_again() {
        let mut t = OffsetTracker::new();
        for o in 100..103 {
            t.consumed(1, o);
        }
        assert_eq!(t.highest(1), Some(102));
        t.forget(1);
        assert_eq!(
            (t.highest(1), t.committable(1), t.pending()),
            (None, None, 0)
        );
        // The new incarnation's offsets start low; an old record is no longer pending.
        t.consumed(1, 0);
        assert!(!t.acknowledged(1, 101));
        assert_eq!(t.committable(1), Some(0));
        assert!(t.acknowledged(1, 0));
        assert_eq!(t.committable(1), Some(1));
    }

    #[test]
    fn double_ack_is_reported() {
        let mut t = OffsetTracker::new();
        t.consumed(0, 0);
        assert!(t.acknowledged(0, 0));
        assert!(!t.acknowledged(0, 0));
    }
}
