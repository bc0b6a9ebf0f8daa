//! Which records are already stored: the two rules the sink drops a record by, per enriched
//! partition, and which incarnation of the enriched topic a partition is in (pure: the
//! ClickHouse queries and the Kafka probe are in `recovery.rs`; the argument is in
//! ARCHITECTURE.md, Delivery).
//!
//! * **Own replay**: a record of the partition's current incarnation at an offset at or below
//!   `m`, the highest offset stored from that incarnation when the partition was assigned
//!   (rows reached ClickHouse but their offsets were not committed).
//! * **Upstream replay**: a record whose origin offset is at or below `hwm[origin stream, origin
//!   partition]`, the highest origin offset stored (or kept since the assignment) from that
//!   origin sub-stream in this partition (the enricher produced it again, or a collector
//!   republished it).

use std::collections::HashMap;

use flowlens_runtime::incarnation::{successor, StreamId};

use crate::decode::OriginKey;

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    New,
    OwnReplay,
    UpstreamReplay,
}

/// What ClickHouse holds of one incarnation of an enriched partition: its highest stored
/// offset and that row's broker timestamp and origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    pub stream: StreamId,
    pub max_offset: i64,
    pub timestamp_ms: i64,
    pub origin: OriginKey,
}

/// What ClickHouse holds of one enriched partition, read once per assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub streams: Vec<StoredStream>,
    /// Highest origin offset stored per (origin stream, origin partition).
    pub hwm: HashMap<(StreamId, i32), i64>,
}

/// The record now in Kafka at a stored stream's highest offset, compared with the stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Same broker timestamp and origin: the same record, the same incarnation.
    Same,
    /// Another record there: a new incarnation under the same id.
    Differs,
    /// The log no longer reaches that offset.
    Gone,
}

/// Where an incarnation check led: the stream id to store rows under, `m` for it, and the ids
/// found to name a new life on the way (each a warning and a count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub stream: StreamId,
    pub stored_through: i64,
    pub changes: Vec<(StreamId, Check)>,
}

/// Longest successor chain walked (each step is a new incarnation under one id).
const MAX_CHAIN: usize = 64;

/// The current incarnation of a partition whose records name `base` (its topic id, or the id
/// from its earliest record): `base` if nothing is stored under it or its highest stored record
/// is still in the log (`check`); otherwise the next id of the chain `successor(base)`, ...
/// checked the same way. Deterministic: every restart walks to the same id.
pub fn resolve(
    base: StreamId,
    stored: &Stored,
    mut check: impl FnMut(&StoredStream) -> Check,
) -> Resolved {
    let mut stream = base;
    let mut changes = Vec::new();
    for _ in 0..MAX_CHAIN {
        let Some(s) = stored.streams.iter().find(|s| s.stream == stream) else {
            return Resolved {
                stream,
                stored_through: -1,
                changes,
            };
        };
        match check(s) {
            Check::Same => {
                return Resolved {
                    stream,
                    stored_through: s.max_offset,
                    changes,
                }
            }
            other => {
                changes.push((stream, other));
                stream = successor(&stream);
            }
        }
    }
    Resolved {
        stream,
        stored_through: -1,
        changes,
    }
}

/// The deduplication state of one enriched partition while it is assigned.
#[derive(Debug, Clone, Default)]
pub struct PartitionDedup {
    /// Per incarnation the rows are stored under: `m` (-1: nothing stored before).
    stored_through: HashMap<StreamId, i64>,
    hwm: HashMap<(StreamId, i32), i64>,
    /// Each base id already resolved in this assignment, and what it resolved to.
    resolved: HashMap<StreamId, StreamId>,
    /// What ClickHouse held at the assignment.
    pub stored: Stored,
}

impl PartitionDedup {
    pub fn new(stored: Stored) -> Self {
        Self {
            hwm: stored.hwm.clone(),
            stored,
            ..Default::default()
        }
    }

    /// The stream rows named `base` are stored under, if already resolved.
    pub fn resolved(&self, base: &StreamId) -> Option<StreamId> {
        self.resolved.get(base).copied()
    }

    /// Records a resolution (see [`resolve`]).
    pub fn set_resolved(&mut self, base: StreamId, r: &Resolved) {
        self.resolved.insert(base, r.stream);
        self.resolved.insert(r.stream, r.stream);
        self.stored_through.insert(r.stream, r.stored_through);
    }

    /// Judges a record of incarnation `stream` at `offset` with identity `origin`, in the
    /// partition's order; a `New` record raises its sub-stream's high-water mark.
    pub fn judge(&mut self, stream: StreamId, offset: i64, origin: OriginKey) -> Verdict {
        if offset <= self.stored_through.get(&stream).copied().unwrap_or(-1) {
            return Verdict::OwnReplay;
        }
        let hwm = self.hwm.entry((origin.0, origin.1)).or_insert(i64::MIN);
        if origin.2 <= *hwm {
            return Verdict::UpstreamReplay;
        }
        *hwm = origin.2;
        Verdict::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: StreamId = [1; 16];
    const T2: StreamId = [2; 16];
    const RAW: StreamId = [9; 16];

    fn stored(streams: &[(StreamId, i64)], hwm: &[((StreamId, i32), i64)]) -> Stored {
        Stored {
            streams: streams
                .iter()
                .map(|&(stream, m)| StoredStream {
                    stream,
                    max_offset: m,
                    timestamp_ms: 1_000 + m,
                    origin: (RAW, 0, m),
                })
                .collect(),
            hwm: hwm.iter().copied().collect(),
        }
    }

    fn ready(s: Stored, base: StreamId, check: Check) -> PartitionDedup {
        let r = resolve(base, &s, |_| check);
        let mut d = PartitionDedup::new(s);
        d.set_resolved(base, &r);
        d
    }

    /// The sink's own replay: rows at or below `m` of the current incarnation.
    #[test]
    fn own_replay_is_dropped_up_to_m() {
        let mut d = ready(stored(&[(T1, 41)], &[((RAW, 0), 41)]), T1, Check::Same);
        assert_eq!(d.judge(T1, 40, (RAW, 0, 40)), Verdict::OwnReplay);
        assert_eq!(d.judge(T1, 41, (RAW, 0, 41)), Verdict::OwnReplay);
        assert_eq!(d.judge(T1, 42, (RAW, 0, 42)), Verdict::New);
        assert_eq!(d.judge(T1, 43, (RAW, 0, 43)), Verdict::New);
    }

    /// The enricher killed after producing 10..=14 without committing: it produces 10.. again
    /// under new enriched offsets, which are dropped up to the highest origin seen.
    #[test]
    fn upstream_replay_is_dropped_by_origin() {
        let mut d = ready(Stored::default(), T1, Check::Same);
        for (offset, origin) in (0..5).zip(10..15) {
            assert_eq!(d.judge(T1, offset, (RAW, 3, origin)), Verdict::New);
        }
        for (offset, origin) in (5..8).zip(10..13) {
            assert_eq!(
                d.judge(T1, offset, (RAW, 3, origin)),
                Verdict::UpstreamReplay
            );
        }
        // Another raw partition, another raw incarnation: their own marks.
        assert_eq!(d.judge(T1, 8, (RAW, 4, 10)), Verdict::New);
        assert_eq!(d.judge(T1, 9, ([8; 16], 3, 10)), Verdict::New);
        for (offset, origin) in (10..15).zip(13..18) {
            let want = if origin <= 14 {
                Verdict::UpstreamReplay
            } else {
                Verdict::New
            };
            assert_eq!(d.judge(T1, offset, (RAW, 3, origin)), want);
        }
    }

    /// The mark survives a restart through ClickHouse: rows stored before the assignment count.
    #[test]
    fn stored_marks_count_after_a_restart() {
        let mut d = ready(stored(&[(T1, 7)], &[((RAW, 3), 120)]), T1, Check::Same);
        assert_eq!(d.judge(T1, 8, (RAW, 3, 119)), Verdict::UpstreamReplay);
        assert_eq!(d.judge(T1, 9, (RAW, 3, 121)), Verdict::New);
    }

    /// Two producer sessions interleaved in one partition (a rebalance with records of the old
    /// owner still in flight), each emitting the same sub-stream in order without gaps: every
    /// origin offset is kept exactly once, whatever the interleaving. The new session starts at
    /// the committed position c, which was committed only once the old session's records below
    /// c were acknowledged, i.e. written to the partition before the new session began.
    #[test]
    fn interleaved_sessions_keep_each_record_once() {
        // Session A emits 100..=150, session B resumes at c = 120 and emits 120..=200.
        let a: Vec<i64> = (100..=150).collect();
        let b: Vec<i64> = (120..=200).collect();
        for pattern in 0..6u64 {
            let mut d = ready(Stored::default(), T1, Check::Same);
            let (mut i, mut j, mut offset, mut kept) = (0, 0, 0, Vec::new());
            while a[i] < b[0] {
                assert_eq!(d.judge(T1, offset, (RAW, 0, a[i])), Verdict::New);
                kept.push(a[i]);
                (i, offset) = (i + 1, offset + 1);
            }
            let mut x = pattern.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while i < a.len() || j < b.len() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let take_a = j == b.len() || (i < a.len() && x % 3 != 0);
                let origin = if take_a { a[i] } else { b[j] };
                if take_a {
                    i += 1;
                } else {
                    j += 1;
                }
                if d.judge(T1, offset, (RAW, 0, origin)) == Verdict::New {
                    kept.push(origin);
                }
                offset += 1;
            }
            assert_eq!(kept, (100..=200).collect::<Vec<_>>(), "pattern {pattern}");
        }
    }

    /// A new incarnation of the enriched topic under the same id (the record at `m` is not the
    /// stored one): nothing is skipped by offset, rows go to the successor id; a restart walks
    /// the same chain and finds the successor's rows in the log.
    #[test]
    fn new_incarnation_under_the_same_id() {
        let s = stored(&[(T1, 500)], &[((RAW, 0), 500)]);
        let r = resolve(T1, &s, |_| Check::Differs);
        assert_eq!(r.stream, successor(&T1));
        assert_eq!(r.stored_through, -1);
        assert_eq!(r.changes, vec![(T1, Check::Differs)]);
        let mut d = PartitionDedup::new(s.clone());
        d.set_resolved(T1, &r);
        assert_eq!(d.resolved(&T1), Some(successor(&T1)));
        // New offsets start at 0 and are kept (their origins are new too).
        assert_eq!(d.judge(r.stream, 0, (r.stream, 0, 0)), Verdict::New);
        // Later: rows stored under the successor, whose highest record is still in the log.
        let mut later = s;
        later.streams.push(StoredStream {
            stream: successor(&T1),
            max_offset: 9,
            timestamp_ms: 77,
            origin: (successor(&T1), 0, 9),
        });
        let r = resolve(T1, &later, |st| {
            if st.stream == T1 {
                Check::Gone
            } else {
                Check::Same
            }
        });
        assert_eq!((r.stream, r.stored_through), (successor(&T1), 9));
        // A re-created topic (new id): nothing stored under it.
        let r = resolve(T2, &later, |_| unreachable!("nothing to check"));
        assert_eq!((r.stream, r.stored_through, r.changes.len()), (T2, -1, 0));
    }

    /// Revocation discards the state: a new assignment starts from what ClickHouse holds.
    #[test]
    fn revocation_forgets_what_was_kept_since_the_assignment() {
        let s = stored(&[(T1, 3)], &[((RAW, 0), 3)]);
        let mut d = ready(s.clone(), T1, Check::Same);
        assert_eq!(d.judge(T1, 4, (RAW, 0, 4)), Verdict::New);
        // Revoked before the insert: row 4 never reached ClickHouse. The next owner's state is
        // rebuilt from ClickHouse, which keeps record 4.
        let mut again = ready(s, T1, Check::Same);
        assert_eq!(again.judge(T1, 4, (RAW, 0, 4)), Verdict::New);
    }
}
