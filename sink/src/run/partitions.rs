//! The sink's input partitions: which incarnation of the input topic each one reads (named at
//! its first record, watched by topic id), a new incarnation sending it back to its beginning,
//! and revoked partitions forgotten.

use std::collections::HashSet;
use std::time::Duration;

use flowlens_runtime::incarnation::{self, StreamId};
use rdkafka::consumer::Consumer;
use rdkafka::Offset;

use super::{Input, Sink, PROBE_TIMEOUT};
use crate::batch::PartitionKey;

impl Sink {
    /// The stream id a record just read from `key` at `offset` is stored under, naming the
    /// partition's incarnation first if this is its first record since its assignment; `None`:
    /// the record is not to be stored now (the partition was sent back to be read again).
    pub(super) async fn admit(&mut self, key: &PartitionKey, offset: i64) -> Option<StreamId> {
        if let Some(input) = self.inputs.get_mut(key) {
            if offset <= input.last_offset {
                self.new_incarnation(key, "offsets went backwards without a rebalance");
                return None;
            }
            input.last_offset = offset;
            return Some(input.stream);
        }
        let (topic, partition) = (key.0.as_str(), key.1);
        let named = tokio::task::block_in_place(|| self.probe.name(topic, partition));
        let (base, from_topic_id) = match named {
            Ok(Some(named)) => named,
            other => {
                tracing::warn!(topic, partition, offset, error = ?other.err(),
                    "cannot name the partition's incarnation yet; reading it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.seek(key, Offset::Offset(offset));
                return None;
            }
        };
        let committed_under = if self.restarted.remove(key) {
            None
        } else {
            tokio::task::block_in_place(|| {
                incarnation::committed_under(&*self.consumer, topic, partition, PROBE_TIMEOUT)
            })
        };
        tracing::info!(topic, partition, offset, stream = %incarnation::hex(&base), from_topic_id,
            committed_under = ?committed_under.map(|c| incarnation::hex(&c)),
            "input partition's incarnation");
        self.inputs.insert(
            key.clone(),
            Input {
                base,
                stream: base,
                from_topic_id,
                committed_under,
                first_offset: offset,
                last_offset: offset,
            },
        );
        Some(base)
    }

    /// Every [`super::WATCH_INTERVAL`]: a topic id other than the one a partition was named by means
    /// the topic was re-created (or the cluster replaced) under us.
    pub(super) fn watch_topic_ids(&mut self) {
        let topics: HashSet<String> = self
            .inputs
            .iter()
            .filter(|(_, i)| i.from_topic_id)
            .map(|(k, _)| k.0.clone())
            .collect();
        for topic in topics {
            let id = match tokio::task::block_in_place(|| self.probe.topic_id(&topic)) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(topic, error = %e, "topic id not read");
                    continue;
                }
            };
            let stale: Vec<PartitionKey> = self
                .inputs
                .iter()
                .filter(|(k, i)| k.0 == topic && i.from_topic_id && i.base != id)
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                self.new_incarnation(&key, "the topic id changed");
            }
        }
    }

    /// A new incarnation of the input topic under partition `key`: what was read of the old one
    /// is stored but never committed, and the partition is read from its beginning.
    pub(super) fn new_incarnation(&mut self, key: &PartitionKey, reason: &str) {
        metrics::counter!("flowlens_sink_incarnation_changes_total").increment(1);
        tracing::warn!(topic = %key.0, partition = key.1, reason,
            "new incarnation of the input topic: reading the partition from its beginning; rows read before are stored, not committed");
        self.batches.end_incarnation(key);
        for flight in self.in_flight.iter_mut().filter(|f| f.is_of(key)) {
            flight.batch.commit = false;
        }
        self.inputs.remove(key);
        self.restarted.insert(key.clone());
        self.seek(key, Offset::Beginning);
    }

    pub(super) fn seek(&self, key: &PartitionKey, offset: Offset) {
        if let Err(e) = self.consumer.seek(&key.0, key.1, offset, PROBE_TIMEOUT) {
            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "seek failed");
        }
    }

    pub(super) fn apply_revocations(&mut self) -> bool {
        let revoked = std::mem::take(&mut *self.consumer.context().revoked.lock().unwrap());
        if revoked.is_empty() {
            return false;
        }
        for k in &revoked {
            for flight in self.in_flight.iter_mut().filter(|f| f.is_of(k)) {
                flight.revoked = true;
            }
            self.dedup.remove(k);
            self.inputs.remove(k);
            self.restarted.remove(k);
        }
        let dropped = self.batches.drop_partitions(&revoked);
        if dropped > 0 {
            metrics::counter!("flowlens_sink_rows_dropped_on_revoke_total")
                .increment(dropped as u64);
            tracing::info!(
                rows = dropped,
                "dropped uncommitted rows of revoked partitions"
            );
        }
        true
    }
}
