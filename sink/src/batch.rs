//! Batches, one Kafka partition each. An *open* batch collects the rows of one partition (and
//! the offsets of its dead-lettered records) until a limit makes it ready; it is then *sealed*:
//! its offset range is fixed and it waits in a FIFO queue for its INSERT. A batch holds rows of
//! one incarnation of the topic and of one day of `time_flow_end` (one partition of `flows`,
//! PARTITION BY toDate(time_flow_end)), so that its INSERT is one part: stored whole or not at
//! all, which the recovery rules need (ARCHITECTURE.md, Delivery).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use flowlens_runtime::incarnation::StreamId;

use crate::config::BatchConfig;
use crate::decode::OriginKey;

/// Rows already in RowBinary (see `decode::write_row`), with the Kafka offset, the identity
/// and the byte position of each.
#[derive(Debug, Default)]
pub struct EncodedRows {
    pub data: Vec<u8>,
    offsets: Vec<i64>,
    origins: Vec<OriginKey>,
    starts: Vec<usize>,
}

/// Nanoseconds per day: `time_flow_end` / this is the row's `flows` partition (UTC day).
const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// The UTC day of a RowBinary row's `time_flow_end` (its second column, bytes 8..16).
fn day_of(row: &[u8]) -> Option<i64> {
    let end = i64::from_le_bytes(row.get(8..16)?.try_into().ok()?);
    Some(end.div_euclid(DAY_NS))
}

/// `insert_deduplication_token` of a batch: xxh3-128 of its RowBinary bytes, which hold every
/// row's stream ids and offsets. A retry of the same rows carries the same token; no batch of
/// another incarnation or with other rows can carry it.
pub fn content_token(data: &[u8]) -> String {
    let mut h = twox_hash::xxhash3_128::Hasher::new();
    h.write(data);
    format!("{:032x}", h.finish_128())
}

impl EncodedRows {
    /// Adds one encoded row read at `offset` with identity `origin`.
    pub fn push(&mut self, offset: i64, origin: OriginKey, row: &[u8]) {
        self.starts.push(self.data.len());
        self.offsets.push(offset);
        self.origins.push(origin);
        self.data.extend_from_slice(row);
    }

    /// Keeps the rows for which `keep(offset, origin)` is true, called in row order. Returns how
    /// many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(i64, OriginKey) -> bool) -> usize {
        let kept: Vec<bool> = (0..self.len())
            .map(|i| keep(self.offsets[i], self.origins[i]))
            .collect();
        let dropped = kept.iter().filter(|k| !**k).count();
        if dropped == 0 {
            // The usual case: nothing to copy.
            return 0;
        }
        let mut data = Vec::with_capacity(self.data.len());
        let (mut offsets, mut origins, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        for (i, _) in kept.iter().enumerate().filter(|(_, k)| **k) {
            let end = self.starts.get(i + 1).copied().unwrap_or(self.data.len());
            starts.push(data.len());
            offsets.push(self.offsets[i]);
            origins.push(self.origins[i]);
            data.extend_from_slice(&self.data[self.starts[i]..end]);
        }
        (self.data, self.offsets, self.origins, self.starts) = (data, offsets, origins, starts);
        dropped
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
    /// The next row is of another `flows` partition (day) or another incarnation.
    Boundary,
}

/// A batch whose offset range is final: its rows are judged (already stored or not), inserted
/// with `token`, then `next_offset` is committed.
#[derive(Debug)]
pub struct Sealed {
    pub topic: String,
    /// First offset handled in the batch (row or dead-lettered).
    pub first_offset: i64,
    pub partition: i32,
    /// The incarnation of the topic its records were read from.
    pub stream: StreamId,
    pub rows: EncodedRows,
    /// [`content_token`] of the rows left after judging; `None` before, or without rows.
    pub token: Option<String>,
    /// The rows were judged (`dedup`): what is left is to be inserted as is, also on retries.
    pub judged: bool,
    /// Offset to commit once the rows are stored (last handled offset + 1).
    pub next_offset: i64,
    /// False for a batch of an incarnation the partition has left: its rows are stored, its
    /// offset is not committed (it would name a position in the new incarnation).
    pub commit: bool,
    pub reason: SealReason,
    /// Inserted and acknowledged; only the commit is left (a failed commit is retried).
    pub inserted: bool,
}

#[derive(Debug)]
struct Open {
    rows: EncodedRows,
    stream: StreamId,
    /// The `flows` partition (UTC day) of its rows.
    day: Option<i64>,
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
            stream: [0; 16],
            day: None,
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

    /// The partition's open batch (created empty; the key is copied only then).
    fn open_mut(&mut self, key: &PartitionKey) -> &mut Open {
        if !self.open.contains_key(key) {
            let age = self.limits.max_age();
            self.open.insert(key.clone(), Open::new(age));
        }
        self.open.get_mut(key).expect("inserted above")
    }

    /// Whether the partition has nothing open (the next record starts a batch).
    pub fn starts_batch(&self, topic: &str, partition: i32) -> bool {
        self.open
            .get(&(topic.to_owned(), partition))
            .is_none_or(Open::is_empty)
    }

    /// Seals the open batch of partition `key` first if it holds rows of another incarnation
    /// or (with `day`) of another day.
    fn seal_at_boundary(&mut self, key: &PartitionKey, stream: StreamId, day: Option<i64>) {
        let open = self.open_mut(key);
        let other_day = day.is_some() && open.day.is_some() && open.day != day;
        if !open.is_empty() && (open.stream != stream || other_day) {
            self.seal(key, SealReason::Boundary);
        }
        let open = self.open_mut(key);
        open.stream = stream;
        if day.is_some() {
            open.day = day;
        }
    }

    /// Adds a row read at `offset` of incarnation `stream`, with identity `origin`, already
    /// encoded (RowBinary); seals the batch if that made it ready.
    pub fn push(
        &mut self,
        key: &PartitionKey,
        stream: StreamId,
        offset: i64,
        origin: OriginKey,
        row: &[u8],
        now: Instant,
    ) {
        self.seal_at_boundary(key, stream, day_of(row));
        let open = self.open_mut(key);
        open.rows.push(offset, origin, row);
        if open.first_offset < 0 {
            open.first_offset = offset;
        }
        open.last_offset = open.last_offset.max(offset);
        open.started.get_or_insert(now);
        self.seal_if_ready(key, now);
    }

    /// Records an offset of incarnation `stream` handled without a row (dead-lettered); seals
    /// if that made it ready.
    pub fn skip(&mut self, key: &PartitionKey, stream: StreamId, offset: i64, now: Instant) {
        self.seal_at_boundary(key, stream, None);
        let open = self.open_mut(key);
        if open.first_offset < 0 {
            open.first_offset = offset;
        }
        open.last_offset = open.last_offset.max(offset);
        open.started.get_or_insert(now);
        self.seal_if_ready(key, now);
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

    fn seal_if_ready(&mut self, key: &PartitionKey, now: Instant) {
        let reason = self.open.get(key).and_then(|o| self.ready(o, now));
        if let Some(reason) = reason {
            self.seal(key, reason);
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
        self.sealed.push_back(Sealed {
            topic: key.0.clone(),
            first_offset: done.first_offset,
            partition: key.1,
            stream: done.stream,
            rows: done.rows,
            token: None,
            judged: false,
            next_offset: done.last_offset + 1,
            commit: true,
            reason,
            inserted: false,
        });
    }

    /// The partition's topic incarnation ended: seals its open batch, and none of its batches
    /// will commit its offset (the rows are still stored).
    pub fn end_incarnation(&mut self, key: &PartitionKey) {
        self.seal(key, SealReason::Boundary);
        for s in &mut self.sealed {
            if s.topic == key.0 && s.partition == key.1 {
                s.commit = false;
            }
        }
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

    /// The index of the first sealed batch, in sealing order, whose (topic, partition) `pick`
    /// accepts.
    pub fn first_sealed(&self, pick: impl Fn((&str, i32)) -> bool) -> Option<usize> {
        self.sealed
            .iter()
            .position(|s| pick((s.topic.as_str(), s.partition)))
    }

    /// The sealed batch at `index` (sealing order).
    pub fn sealed_mut(&mut self, index: usize) -> Option<&mut Sealed> {
        self.sealed.get_mut(index)
    }

    /// Takes the sealed batch at `index` out of the queue.
    pub fn take_sealed(&mut self, index: usize) -> Option<Sealed> {
        self.sealed.remove(index)
    }

    pub fn pop_front(&mut self) -> Option<Sealed> {
        self.sealed.pop_front()
    }

    /// Puts a batch taken by [`Batches::pop_front`] back in front (its INSERT failed).
    pub fn push_front(&mut self, batch: Sealed) {
        self.sealed.push_front(batch);
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
    use crate::row::{sample_flow, sample_flow_at, FlowRow, SAMPLE_BASE_NS};

    const S: StreamId = [5; 16];

    fn key(partition: i32) -> PartitionKey {
        ("t".to_owned(), partition)
    }

    fn row(i: u32) -> Vec<u8> {
        let mut out = Vec::new();
        FlowRow::try_from(sample_flow(i))
            .unwrap()
            .write_row_binary(&mut out);
        out
    }

    fn origin(o: i64) -> OriginKey {
        ([9; 16], 0, o)
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
    fn sealed_by_rows_per_partition() {
        let t0 = Instant::now();
        let mut b = Batches::new(limits(2, 1 << 30, 60_000));
        assert!(b.is_empty() && b.deadline().is_none());
        b.push(&key(0), S, 10, origin(10), &row(1), t0);
        b.push(&key(1), S, 5, origin(5), &row(3), t0);
        assert_eq!(b.sealed_len(), 0);
        b.skip(&key(0), S, 11, t0);
        b.push(&key(0), S, 12, origin(12), &row(2), t0);
        assert_eq!(b.sealed_len(), 1);
        let s = b.pop_front().unwrap();
        assert_eq!((s.partition, s.rows.len(), s.next_offset), (0, 2, 13));
        assert_eq!(
            (s.first_offset, s.stream, s.commit, s.judged),
            (10, S, true, false)
        );
        assert_eq!(s.token, None, "set when judged");
        assert_eq!(s.reason, SealReason::Rows);
        assert!(!b.is_empty());
        assert!(b.starts_batch("t", 0) && !b.starts_batch("t", 1));
    }

    #[test]
    fn sealed_by_bytes() {
        let t0 = Instant::now();
        let one = row(1).len();
        let mut b = Batches::new(limits(1000, one * 2 + 1, 60_000));
        b.push(&key(0), S, 0, origin(0), &row(1), t0);
        b.push(&key(0), S, 1, origin(1), &row(1), t0);
        assert_eq!(b.sealed_len(), 0);
        b.push(&key(0), S, 2, origin(2), &row(1), t0);
        assert_eq!(b.pop_front().unwrap().reason, SealReason::Bytes);
    }

    /// A batch never spans two days of time_flow_end (two parts of `flows`) nor two
    /// incarnations.
    #[test]
    fn sealed_at_day_and_incarnation_boundaries() {
        let t0 = Instant::now();
        let mut b = Batches::new(limits(1000, 1 << 30, 60_000));
        // sample_flow_at(i, base) ends 1 s after base: base at 23:59:58.5 and 23:59:59.5 end
        // on two days.
        let midnight = (SAMPLE_BASE_NS / DAY_NS + 1) * DAY_NS;
        let at = |base: i64| {
            let mut out = Vec::new();
            FlowRow::try_from(sample_flow_at(0, base))
                .unwrap()
                .write_row_binary(&mut out);
            out
        };
        b.push(&key(0), S, 0, origin(0), &at(midnight - 1_500_000_000), t0);
        b.push(&key(0), S, 1, origin(1), &at(midnight - 1_400_000_000), t0);
        assert_eq!(b.sealed_len(), 0);
        b.push(&key(0), S, 2, origin(2), &at(midnight - 500_000_000), t0);
        let s = b.pop_front().unwrap();
        assert_eq!(
            (s.reason, s.rows.len(), s.next_offset),
            (SealReason::Boundary, 2, 2)
        );
        // Another incarnation: sealed before its first record.
        b.skip(&key(0), [6; 16], 0, t0);
        let s = b.pop_front().unwrap();
        assert_eq!((s.stream, s.rows.len(), s.first_offset), (S, 1, 2));
        b.seal_all();
        assert_eq!(b.pop_front().unwrap().stream, [6; 16]);
    }

    #[test]
    fn an_ended_incarnation_commits_nothing() {
        let t0 = Instant::now();
        let mut b = Batches::new(limits(1, 1 << 30, 60_000));
        b.push(&key(0), S, 0, origin(0), &row(1), t0);
        b.push(&key(0), S, 1, origin(1), &row(1), t0);
        b.skip(&key(0), S, 2, t0);
        b.push(&key(1), S, 0, origin(0), &row(1), t0);
        b.end_incarnation(&("t".into(), 0));
        let commits: Vec<(i32, bool)> = std::iter::from_fn(|| b.pop_front())
            .map(|s| (s.partition, s.commit))
            .collect();
        assert_eq!(commits, [(0, false), (0, false), (1, true), (0, false)]);
    }

    #[test]
    fn age_limit_adapts_to_trickles() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batches::new(limits(1000, 1 << 30, 100));
        b.skip(&key(2), S, 41, t0);
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
            b.push(&key(2), S, 50, origin(50), &row(1), t);
            assert_eq!(b.deadline(), Some(t + ms(want)));
            t += ms(want);
            b.seal_expired(t);
            assert_eq!(b.pop_front().unwrap().reason, SealReason::Age);
        }
    }

    #[test]
    fn judged_rows_are_kept_in_order() {
        let mut r = EncodedRows::default();
        for (o, i) in [(5, 1), (6, 22), (9, 333), (10, 4)] {
            r.push(o, origin(o * 10), &row(i));
        }
        let (second, fourth) = (row(22), row(4));
        let mut seen = Vec::new();
        assert_eq!(r.retain(|_, _| true), 0);
        assert_eq!(
            r.retain(|o, origin| {
                seen.push((o, origin.2));
                o == 6 || o == 10
            }),
            2
        );
        assert_eq!(seen, [(5, 50), (6, 60), (9, 90), (10, 100)]);
        assert_eq!(
            (r.len(), r.first_offset(), r.last_offset()),
            (2, Some(6), Some(10))
        );
        assert_eq!(r.data, [second, fourth].concat());
        assert_eq!(r.retain(|_, _| false), 2);
        assert!(r.is_empty() && r.data.is_empty());
    }

    #[test]
    fn tokens_follow_the_content() {
        let a = content_token(&row(1));
        assert_eq!(a.len(), 32);
        assert_eq!(a, content_token(&row(1)));
        assert_ne!(a, content_token(&row(2)));
        let mut other_stream = FlowRow::try_from(sample_flow(1)).unwrap();
        other_stream.kafka_stream = [1; 16];
        let mut bytes = Vec::new();
        other_stream.write_row_binary(&mut bytes);
        assert_ne!(a, content_token(&bytes));
    }

    #[test]
    fn revoked_partitions_are_dropped() {
        let t0 = Instant::now();
        let mut b = Batches::new(limits(2, 1 << 30, 100));
        b.push(&key(0), S, 1, origin(1), &row(1), t0);
        b.push(&key(0), S, 2, origin(2), &row(3), t0);
        b.push(&key(1), S, 1, origin(1), &row(2), t0);
        b.push(&key(0), S, 3, origin(3), &row(4), t0);
        assert_eq!(b.rows_held(), 4);
        assert_eq!(b.drop_partitions(&[("t".into(), 0)]), 3);
        assert_eq!(b.rows_held(), 1);
        assert_eq!(b.sealed_len(), 0);
        b.seal_all();
        assert_eq!(b.pop_front().unwrap().partition, 1);
        assert!(b.is_empty());
    }
}
