//! The enricher's input partitions: which incarnation of the raw topic each one reads (named at
//! its first record, watched by topic id), a position committed under another incarnation or a
//! new incarnation sending it back to its beginning, and revoked partitions forgotten.

use flowlens_runtime::incarnation;
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use rdkafka::Offset;

use super::{Input, Pipeline, PROBE_TIMEOUT};

impl Pipeline {
    /// Forgets the partitions revoked since the last call (their in-flight acknowledgements
    /// belong to an older epoch from now on).
    pub(super) fn apply_revocations(&mut self) {
        let revoked = std::mem::take(&mut *self.consumer.context().revoked.lock().unwrap());
        for p in revoked {
            self.inputs.remove(&p);
            self.tracker.forget(p);
        }
    }

    /// The input partition's incarnation for a record just consumed, naming it first if this is
    /// the partition's first record since its assignment; `None`: the record belongs to no
    /// incarnation we may enrich now (the partition was sent back to its beginning).
    pub(super) fn admit(&mut self, partition: i32, offset: i64) -> Option<Input> {
        if let Some(input) = self.inputs.get(&partition).copied() {
            if self.tracker.highest(partition).is_some_and(|h| offset <= h) {
                self.new_incarnation(&[partition], "offsets went backwards without a rebalance");
                return None;
            }
            return Some(input);
        }
        let input = self.name_incarnation(partition)?;
        // A position committed under another incarnation says nothing about this one.
        let committed_under = tokio::task::block_in_place(|| {
            incarnation::committed_under(&*self.consumer, &self.input, partition, PROBE_TIMEOUT)
        });
        if committed_under.is_some_and(|s| s != input.stream) {
            metrics::counter!("flowlens_enricher_incarnation_changes_total").increment(1);
            tracing::warn!(topic = %self.input, partition, offset,
                committed_under = %incarnation::hex(&committed_under.unwrap_or_default()),
                stream = %incarnation::hex(&input.stream),
                "committed position belongs to another incarnation of the topic: reading the partition from its beginning");
            self.seek_to_beginning(partition);
            return None;
        }
        Some(input)
    }

    /// Names the incarnation of `partition` now (topic id, or its earliest record) with a new
    /// epoch; `None` (logged) if the broker cannot tell.
    pub(super) fn name_incarnation(&mut self, partition: i32) -> Option<Input> {
        let named = tokio::task::block_in_place(|| self.probe.name(&self.input, partition));
        let (stream, from_topic_id) = match named {
            Ok(Some(named)) => named,
            Ok(None) | Err(_) => {
                tracing::warn!(topic = %self.input, partition, error = ?named.err(),
                    "cannot name the partition's incarnation yet; reading it again");
                self.seek_to_beginning(partition);
                return None;
            }
        };
        self.next_epoch += 1;
        let input = Input {
            stream,
            from_topic_id,
            epoch: self.next_epoch,
        };
        tracing::info!(topic = %self.input, partition, stream = %incarnation::hex(&stream),
            from_topic_id, "input partition's incarnation");
        self.inputs.insert(partition, input);
        Some(input)
    }

    /// Every [`super::WATCH_INTERVAL`]: a topic id other than the one a partition was named by means
    /// the topic was re-created (or the cluster replaced) under us. The enriched topic's
    /// partition count is read again too (records without a key are routed by it).
    pub(super) fn watch_topic_id(&mut self) {
        let partitions = tokio::task::block_in_place(|| {
            self.producer
                .client()
                .fetch_metadata(Some(&self.output), PROBE_TIMEOUT)
                .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        });
        if let Ok(n) = partitions {
            if n > 0 && n as i32 != self.output_partitions {
                tracing::warn!(topic = %self.output, was = self.output_partitions, now = n,
                    "the enriched topic's partition count changed");
                self.output_partitions = n as i32;
            }
        }
        if !self.inputs.values().any(|i| i.from_topic_id) {
            return;
        }
        let id = match tokio::task::block_in_place(|| self.probe.topic_id(&self.input)) {
            Ok(Some(id)) => id,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(topic = %self.input, error = %e, "topic id not read");
                return;
            }
        };
        let stale: Vec<i32> = self
            .inputs
            .iter()
            .filter(|(_, i)| i.from_topic_id && i.stream != id)
            .map(|(p, _)| *p)
            .collect();
        if !stale.is_empty() {
            self.new_incarnation(&stale, "the topic id changed");
        }
    }

    /// A new incarnation of the input topic for `partitions`: read each from its beginning
    /// under its new stream id; records of the old one still in flight keep their origin but no
    /// longer move the position.
    pub(super) fn new_incarnation(&mut self, partitions: &[i32], reason: &str) {
        for &partition in partitions {
            metrics::counter!("flowlens_enricher_incarnation_changes_total").increment(1);
            tracing::warn!(topic = %self.input, partition, reason,
                "new incarnation of the input topic: reading the partition from its beginning");
            self.inputs.remove(&partition);
            self.tracker.forget(partition);
            self.name_incarnation(partition);
            self.seek_to_beginning(partition);
        }
    }

    pub(super) fn seek_to_beginning(&mut self, partition: i32) {
        self.tracker.forget(partition);
        if let Err(e) = self
            .consumer
            .seek(&self.input, partition, Offset::Beginning, PROBE_TIMEOUT)
        {
            tracing::warn!(topic = %self.input, partition, error = %e, "seek failed");
        }
    }
}
