//! `Batch`: rows waiting for one INSERT plus, per partition, the highest offset they cover
//! (dead-lettered records included), and the rows/bytes/age limits that make it ready.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::BatchConfig;
use crate::row::FlowRow;

/// (topic, partition).
pub type PartitionKey = (String, i32);

/// Rows of one future INSERT and the offsets to commit once ClickHouse acknowledged it.
#[derive(Debug)]
pub struct Batch {
    limits: BatchConfig,
    rows: Vec<FlowRow>,
    /// Partition of each row, parallel to `rows` (needed to drop rows of revoked partitions).
    row_partitions: Vec<u32>,
    partitions: Vec<PartitionKey>,
    /// Highest handled offset per partition index in `partitions`.
    offsets: BTreeMap<usize, i64>,
    bytes: usize,
    started: Option<Instant>,
}

impl Batch {
    pub fn new(limits: BatchConfig) -> Self {
        Self {
            rows: Vec::with_capacity(limits.max_rows.min(65_536)),
            limits,
            row_partitions: Vec::new(),
            partitions: Vec::new(),
            offsets: BTreeMap::new(),
            bytes: 0,
            started: None,
        }
    }

    fn partition_index(&mut self, topic: &str, partition: i32) -> usize {
        match self
            .partitions
            .iter()
            .position(|(t, p)| *p == partition && t == topic)
        {
            Some(i) => i,
            None => {
                self.partitions.push((topic.to_owned(), partition));
                self.partitions.len() - 1
            }
        }
    }

    fn mark(&mut self, index: usize, offset: i64, now: Instant) {
        let entry = self.offsets.entry(index).or_insert(offset);
        *entry = (*entry).max(offset);
        self.started.get_or_insert(now);
    }

    /// Adds a row read at `offset`.
    pub fn push(&mut self, topic: &str, partition: i32, offset: i64, row: FlowRow, now: Instant) {
        let index = self.partition_index(topic, partition);
        self.bytes += row.encoded_len();
        self.rows.push(row);
        self.row_partitions.push(index as u32);
        self.mark(index, offset, now);
    }

    /// Records an offset that was handled without a row (e.g. sent to the dead-letter topic).
    pub fn skip(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) {
        let index = self.partition_index(topic, partition);
        self.mark(index, offset, now);
    }

    pub fn rows(&self) -> &[FlowRow] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Nothing to insert and nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// When the age limit makes this batch ready (`None` while empty).
    pub fn deadline(&self) -> Option<Instant> {
        self.started.map(|s| s + self.limits.max_age())
    }

    /// A limit is reached: rows, bytes or age at `now`.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.rows.len() >= self.limits.max_rows
            || self.bytes >= self.limits.max_bytes
            || self.deadline().is_some_and(|d| now >= d)
    }

    /// What to commit after the insert: (topic, partition, next offset to read).
    pub fn commit_offsets(&self) -> Vec<(String, i32, i64)> {
        self.offsets
            .iter()
            .map(|(&i, &o)| (self.partitions[i].0.clone(), self.partitions[i].1, o + 1))
            .collect()
    }

    /// Drops the rows and offsets of partitions this consumer no longer owns: their records will
    /// be read again by the new owner from the last committed offset. Returns the rows dropped.
    pub fn drop_partitions(&mut self, revoked: &[PartitionKey]) -> usize {
        let gone: Vec<u32> = self
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, k)| revoked.contains(k))
            .map(|(i, _)| i as u32)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        for i in &gone {
            self.offsets.remove(&(*i as usize));
        }
        let before = self.rows.len();
        let mut keep = self.row_partitions.iter().map(|p| !gone.contains(p));
        self.rows.retain(|_| keep.next().unwrap_or(true));
        self.row_partitions.retain(|p| !gone.contains(p));
        self.bytes = self.rows.iter().map(FlowRow::encoded_len).sum();
        if self.offsets.is_empty() {
            self.clear();
        }
        before - self.rows.len()
    }

    /// Empties the batch after its offsets were committed.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.row_partitions.clear();
        self.partitions.clear();
        self.offsets.clear();
        self.bytes = 0;
        self.started = None;
    }

    /// Time since the first record of the batch.
    pub fn age(&self, now: Instant) -> Duration {
        self.started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::sample_flow;

    fn row(i: u32) -> FlowRow {
        FlowRow::try_from(sample_flow(i)).unwrap()
    }

    fn limits(max_rows: usize, max_bytes: usize, max_age_ms: u64) -> BatchConfig {
        BatchConfig {
            max_rows,
            max_bytes,
            max_age_ms,
        }
    }

    #[test]
    fn ready_by_rows() {
        let t0 = Instant::now();
        let mut b = Batch::new(limits(3, 1 << 30, 60_000));
        assert!(b.is_empty() && !b.is_ready(t0) && b.deadline().is_none());
        b.push("t", 0, 10, row(1), t0);
        b.push("t", 0, 11, row(2), t0);
        assert!(!b.is_ready(t0));
        b.push("t", 1, 5, row(3), t0);
        assert!(b.is_ready(t0));
        assert_eq!(
            b.commit_offsets(),
            vec![("t".into(), 0, 12), ("t".into(), 1, 6)]
        );
    }

    #[test]
    fn ready_by_bytes() {
        let t0 = Instant::now();
        let one = row(1).encoded_len();
        let mut b = Batch::new(limits(1000, one * 2 + 1, 60_000));
        b.push("t", 0, 0, row(1), t0);
        b.push("t", 0, 1, row(1), t0);
        assert_eq!(b.bytes(), one * 2);
        assert!(!b.is_ready(t0));
        b.push("t", 0, 2, row(1), t0);
        assert!(b.is_ready(t0));
    }

    #[test]
    fn ready_by_age_of_first_record_even_without_rows() {
        let t0 = Instant::now();
        let mut b = Batch::new(limits(1000, 1 << 30, 100));
        b.skip("t", 2, 41, t0);
        assert!(!b.is_empty() && b.rows().is_empty());
        b.push("t", 2, 42, row(1), t0 + Duration::from_millis(90));
        assert!(!b.is_ready(t0 + Duration::from_millis(99)));
        assert!(b.is_ready(t0 + Duration::from_millis(100)));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(b.commit_offsets(), vec![("t".into(), 2, 43)]);
        b.clear();
        assert!(b.is_empty() && b.deadline().is_none() && b.bytes() == 0);
    }

    #[test]
    fn offsets_are_the_highest_seen() {
        let t0 = Instant::now();
        let mut b = Batch::new(limits(1000, 1 << 30, 100));
        b.skip("t", 0, 7, t0);
        b.skip("t", 0, 3, t0);
        b.skip("u", 0, 1, t0);
        assert_eq!(
            b.commit_offsets(),
            vec![("t".into(), 0, 8), ("u".into(), 0, 2)]
        );
    }

    #[test]
    fn revoked_partitions_are_dropped() {
        let t0 = Instant::now();
        let mut b = Batch::new(limits(1000, 1 << 30, 100));
        b.push("t", 0, 1, row(1), t0);
        b.push("t", 1, 1, row(2), t0);
        b.push("t", 0, 2, row(3), t0);
        b.push("t", 1, 2, row(4), t0);
        let bytes_p1 = row(2).encoded_len() + row(4).encoded_len();
        assert_eq!(b.drop_partitions(&[("t".into(), 0)]), 2);
        assert_eq!(b.len(), 2);
        assert_eq!(b.bytes(), bytes_p1);
        assert_eq!(b.rows()[0].src_pod, "web-2");
        assert_eq!(b.rows()[1].src_pod, "web-4");
        assert_eq!(b.commit_offsets(), vec![("t".into(), 1, 3)]);
        assert_eq!(b.drop_partitions(&[("t".into(), 1)]), 2);
        assert!(b.is_empty() && b.deadline().is_none());
    }
}
