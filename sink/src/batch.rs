//! Batches, one Kafka partition each. An *open* batch collects the rows of one partition (and
//! the offsets of its dead-lettered records) until a limit makes it ready; it is then *sealed*:
//! its offset range and deduplication token are fixed and it waits in a FIFO queue for its
//! INSERT. See `run.rs` for why batches are per partition.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::BatchConfig;

/// Rows already in RowBinary (see `decode::write_row`), with the Kafka offset and the byte
/// position of each.
#[derive(Debug, Default)]
pub struct EncodedRows {
    pub data: Vec<u8>,
    offsets: Vec<i64>,
    starts: Vec<usize>,
}

impl EncodedRows {
    /// Adds one encoded row read at `offset`.
    pub fn push(&mut self, offset: i64, row: &[u8]) {
        self.starts.push(self.data.len());
        self.offsets.push(offset);
        self.data.extend_from_slice(row);
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.offsets.first().copied()
    }

    pub fn last_offset(&self) -> Option<i64> {
        self.offsets.last().copied()
    }

    /// Drops the rows read at offsets `<= through` (a prefix: rows are in offset order).
    /// Returns how many.
    pub fn drop_through(&mut self, through: i64) -> usize {
        let n = self.offsets.partition_point(|o| *o <= through);
        if n == 0 {
            return 0;
        }
        let cut = self.starts.get(n).copied().unwrap_or(self.data.len());
        self.data.drain(..cut);
        self.offsets.drain(..n);
        self.starts.drain(..n);
        for s in &mut self.starts {
            *s -= cut;
        }
        n
    }
}

/// (topic, partition).
pub type PartitionKey = (String, i32);

/// Why a batch was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReason {
    Rows,
    Bytes,
    Age,
    Shutdown,
}

/// A batch whose content is final: inserted with `token`, then `next_offset` is committed.
#[derive(Debug)]
pub struct Sealed {
    pub topic: String,
    /// First offset handled in the batch (row or dead-lettered).
    pub first_offset: i64,
    pub partition: i32,
    pub rows: EncodedRows,
    /// `<topic>/<partition>/<first row offset>-<last row offset>`; `None` without rows.
    pub token: Option<String>,
    /// Offset to commit once the rows are stored (last handled offset + 1).
    pub next_offset: i64,
    pub reason: SealReason,
    /// Inserted and acknowledged; only the commit is left (a failed commit is retried).
    pub inserted: bool,
}

/// The deduplication token of a partition's rows `first..=last`.
pub fn token(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{topic}/{partition}/{first}-{last}")
}

#[derive(Debug)]
struct Open {
    rows: EncodedRows,
    first_offset: i64,
    last_offset: i64,
    started: Option<Instant>,
    /// Adaptive age limit: doubles while age-sealed batches stay small, back to `max_age`
    /// when a batch fills up.
    age_limit: Duration,
}

impl Open {
    fn new(age_limit: Duration) -> Self {
        Self {
            rows: EncodedRows::default(),
            first_offset: -1,
            last_offset: -1,
            started: None,
            age_limit,
        }
    }

    fn is_empty(&self) -> bool {
        self.started.is_none()
    }
}

/// Every partition's open batch plus the queue of sealed batches, in sealing order.
#[derive(Debug)]
pub struct Batches {
    limits: BatchConfig,
    open: BTreeMap<PartitionKey, Open>,
    sealed: VecDeque<Sealed>,
}

impl Batches {
    pub fn new(limits: BatchConfig) -> Self {
        Self {
            limits,
            open: BTreeMap::new(),
            sealed: VecDeque::new(),
        }
    }

    fn open_mut(&mut self, topic: &str, partition: i32) -> &mut Open {
        let key = (topic.to_owned(), partition);
        let age = self.limits.max_age();
        self.open.entry(key).or_insert_with(|| Open::new(age))
    }

    /// Whether the partition has nothing open (the next record starts a batch).
    pub fn starts_batch(&self, topic: &str, partition: i32) -> bool {
        self.open
            .get(&(topic.to_owned(), partition))
            .is_none_or(Open::is_empty)
    }

    /// Adds a row read at `offset`, already encoded (RowBinary); seals the batch if that made
    /// it ready.
    pub fn push(&mut self, topic: &str, partition: i32, offset: i64, row: &[u8], now: Instant) {
        let open = self.open_mut(topic, partition);
        open.rows.push(offset, row);
        if open.first_offset < 0 {
            open.first_offset = offset;
        }
        open.last_offset = open.last_offset.max(offset);
        open.started.get_or_insert(now);
        self.seal_if_ready(topic, partition, now);
    }

    /// Records an offset handled without a row (dead-lettered); seals if that made it ready.
    pub fn skip(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) {
        let open = self.open_mut(topic, partition);
        if open.first_offset < 0 {
            open.first_offset = offset;
        }
        open.last_offset = open.last_offset.max(offset);
        open.started.get_or_insert(now);
        self.seal_if_ready(topic, partition, now);
    }

    fn ready(&self, open: &Open, now: Instant) -> Option<SealReason> {
        if open.is_empty() {
            return None;
        }
        if open.rows.len() >= self.limits.max_rows {
            return Some(SealReason::Rows);
        }
        if open.rows.bytes() >= self.limits.max_bytes {
            return Some(SealReason::Bytes);
        }
        if open.started.is_some_and(|s| now >= s + open.age_limit) {
            return Some(SealReason::Age);
        }
        None
    }

    fn seal_if_ready(&mut self, topic: &str, partition: i32, now: Instant) {
        let key = (topic.to_owned(), partition);
        let reason = self.open.get(&key).and_then(|o| self.ready(o, now));
        if let Some(reason) = reason {
            self.seal(&key, reason);
        }
    }

    fn seal(&mut self, key: &PartitionKey, reason: SealReason) {
        let Some(open) = self.open.get_mut(key) else {
            return;
        };
        if open.is_empty() {
            return;
        }
        let max_idle = self.limits.max_idle_age().max(self.limits.max_age());
        let next_age = match reason {
            SealReason::Age if open.rows.len() < self.limits.small_batch_rows => {
                (open.age_limit * 2).min(max_idle)
            }
            SealReason::Rows | SealReason::Bytes => self.limits.max_age(),
            _ => open.age_limit,
        };
        let done = std::mem::replace(open, Open::new(next_age));
        let token = match (done.rows.first_offset(), done.rows.last_offset()) {
            (Some(a), Some(b)) => Some(token(&key.0, key.1, a, b)),
            _ => None,
        };
        self.sealed.push_back(Sealed {
            topic: key.0.clone(),
            first_offset: done.first_offset,
            partition: key.1,
            rows: done.rows,
            token,
            next_offset: done.last_offset + 1,
            reason,
            inserted: false,
        });
    }

    /// Seals every open batch whose age limit passed at `now`.
    pub fn seal_expired(&mut self, now: Instant) {
        let keys: Vec<PartitionKey> = self
            .open
            .iter()
            .filter(|(_, o)| self.ready(o, now).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let reason = self.ready(&self.open[&k], now).unwrap_or(SealReason::Age);
            self.seal(&k, reason);
        }
    }

    /// Seals every non-empty open batch (shutdown).
    pub fn seal_all(&mut self) {
        let keys: Vec<PartitionKey> = self.open.keys().cloned().collect();
        for k in keys {
            self.seal(&k, SealReason::Shutdown);
        }
    }

    /// The earliest moment an open batch becomes ready by age.
    pub fn deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .filter_map(|o| o.started.map(|s| s + o.age_limit))
            .min()
    }

    pub fn front(&mut self) -> Option<&mut Sealed> {
        self.sealed.front_mut()
    }

    pub fn pop_front(&mut self) -> Option<Sealed> {
        self.sealed.pop_front()
    }

    pub fn sealed_len(&self) -> usize {
        self.sealed.len()
    }

    /// Rows held in memory, open and sealed.
    pub fn rows_held(&self) -> usize {
        self.open.values().map(|o| o.rows.len()).sum::<usize>()
            + self.sealed.iter().map(|s| s.rows.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.values().all(Open::is_empty)
    }

    /// Forgets everything of partitions this consumer no longer owns (their new owner reads
    /// them again from the committed offset). Returns the rows dropped.
    pub fn drop_partitions(&mut self, revoked: &[PartitionKey]) -> usize {
        let mut dropped = 0;
        for k in revoked {
            if let Some(o) = self.open.remove(k) {
                dropped += o.rows.len();
            }
        }
        self.sealed.retain(|s| {
            let gone = revoked
                .iter()
                .any(|(t, p)| *p == s.partition && *t == s.topic);
            if gone {
                dropped += s.rows.len();
            }
            !gone
        });
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{sample_flow, FlowRow};

    fn row(i: u32) -> Vec<u8> {
        let mut out = Vec::new();
        FlowRow::try_from(sample_flow(i))
            .unwrap()
            .write_row_binary(&mut out);
        out
    }

    fn limits(max_rows: usize, max_bytes: usize, max_age_ms: u64) -> BatchConfig {
        BatchConfig {
            max_rows,
            max_bytes,
            max_age_ms,
            max_idle_age_ms: max_age_ms * 4,
            small_batch_rows: 2,
        }
    }

    #[test]
    fn sealed_by_rows_per_partition_with_token() {
        let t0 = Instant::now();
        let mut b = Batches::new(limits(2, 1 << 30, 60_000));
        assert!(b.is_empty() && b.deadline().is_none());
        b.push("t", 0, 10, &row(1), t0);
        b.push("t", 1, 5, &row(3), t0);
        assert_eq!(b.sealed_len(), 0);
        b.skip("t", 0, 11, t0);
        b.push("t", 0, 12, &row(2), t0);
        assert_eq!(b.sealed_len(), 1);
        let s = b.pop_front().unwrap();
        assert_eq!((s.partition, s.rows.len(), s.next_offset), (0, 2, 13));
        assert_eq!(s.first_offset, 10);
        assert_eq!(s.token.as_deref(), Some("t/0/10-12"));
        assert_eq!(s.reason, SealReason::Rows);
        assert!(!b.is_empty());
        assert!(b.starts_batch("t", 0) && !b.starts_batch("t", 1));
    }

    #[test]
    fn sealed_by_bytes() {
        let t0 = Instant::now();
        let one = row(1).len();
        let mut b = Batches::new(limits(1000, one * 2 + 1, 60_000));
        b.push("t", 0, 0, &row(1), t0);
        b.push("t", 0, 1, &row(1), t0);
        assert_eq!(b.sealed_len(), 0);
        b.push("t", 0, 2, &row(1), t0);
        assert_eq!(b.pop_front().unwrap().reason, SealReason::Bytes);
    }

    #[test]
    fn age_limit_adapts_to_trickles() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batches::new(limits(1000, 1 << 30, 100));
        b.skip("t", 2, 41, t0);
        assert_eq!(b.deadline(), Some(t0 + ms(100)));
        b.seal_expired(t0 + ms(99));
        assert_eq!(b.sealed_len(), 0);
        b.seal_expired(t0 + ms(100));
        let s = b.pop_front().unwrap();
        assert!(s.token.is_none() && s.rows.is_empty());
        assert_eq!(s.next_offset, 42);
        // Small batches double the age limit up to max_idle_age (400 ms).
        let mut t = t0 + ms(200);
        for want in [200, 400, 400] {
            b.push("t", 2, 50, &row(1), t);
            assert_eq!(b.deadline(), Some(t + ms(want)));
            t += ms(want);
            b.seal_expired(t);
            assert_eq!(b.pop_front().unwrap().reason, SealReason::Age);
        }
    }

    #[test]
    fn stored_prefix_is_dropped() {
        let mut r = EncodedRows::default();
        for (o, i) in [(5, 1), (6, 22), (9, 333)] {
            r.push(o, &row(i));
        }
        let third = row(333);
        assert_eq!(r.drop_through(4), 0);
        assert_eq!(r.drop_through(6), 2);
        assert_eq!(
            (r.len(), r.first_offset(), r.data.clone()),
            (1, Some(9), third)
        );
        assert_eq!(r.drop_through(100), 1);
        assert!(r.is_empty() && r.data.is_empty());
    }

    #[test]
    fn revoked_partitions_are_dropped() {
        let t0 = Instant::now();
        let mut b = Batches::new(limits(2, 1 << 30, 100));
        b.push("t", 0, 1, &row(1), t0);
        b.push("t", 0, 2, &row(3), t0);
        b.push("t", 1, 1, &row(2), t0);
        b.push("t", 0, 3, &row(4), t0);
        assert_eq!(b.rows_held(), 4);
        assert_eq!(b.drop_partitions(&[("t".into(), 0)]), 3);
        assert_eq!(b.rows_held(), 1);
        assert_eq!(b.sealed_len(), 0);
        b.seal_all();
        assert_eq!(b.pop_front().unwrap().partition, 1);
        assert!(b.is_empty());
    }
}
