//! Consumer lag of a stage's consumer group, per partition of its input topic, read from the
//! brokers every [`INTERVAL`] by a client of its own (never the stage's consumer, so the hot
//! path neither waits for it nor shares its queue) and exported as the gauge
//! `flowlens_consumer_lag_records{stage, group, topic, partition}`.
//!
//! The lag of a partition is `high watermark − committed offset of the group`: the records
//! the group would read again if every member restarted now, i.e. records not yet durably
//! handled (the enricher commits after the broker acknowledged what it produced, the sink
//! after ClickHouse acknowledged the insert). It is what `kafka-consumer-groups.sh --describe`
//! and KEDA's Kafka scaler call lag. Where the group has no usable position, the stage reads
//! from the low watermark (`auto.offset.reset = earliest`), so the lag is `high − low`: no
//! committed offset yet, a committed offset below the low watermark (records removed by
//! retention), or above the high watermark (a position of an earlier incarnation of the topic,
//! which the stages read again from its beginning).
//!
//! Every member of the group reports every partition of the topic (the values are the group's,
//! not the member's): aggregate with `max by (group, topic, partition)` before summing. A read
//! that fails (broker unreachable) leaves the gauges at their last values and counts
//! `flowlens_consumer_lag_read_errors_total{stage}`.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::kafka::KafkaConfig;
use crate::Shutdown;

/// Time between two reads of the watermarks and the committed offsets.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one answer of the brokers.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The lag of one partition from its watermarks and the group's committed offset (see the
/// module doc for the cases without a usable position).
pub fn partition_lag(low: i64, high: i64, committed: Option<i64>) -> i64 {
    let position = match committed {
        Some(c) if (low..=high).contains(&c) => c,
        _ => low,
    };
    (high - position).max(0)
}

/// Client errors (broker down, ...) are the readiness probe's to report: debug here.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "consumer lag client error");
    }
}

impl ConsumerContext for Quiet {}

/// Reads the lag of `group` on `topic` and exports it, every [`INTERVAL`] until `shutdown`.
/// The client joins no group and commits nothing: it only asks for the group's offsets.
pub fn watch(
    kafka: &KafkaConfig,
    stage: &'static str,
    group: &str,
    topic: &str,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let mut config = kafka.reader_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let client: BaseConsumer<Quiet> = config
        .create_with_context(Quiet)
        .map_err(|e| anyhow::anyhow!("creating the consumer lag client of group {group}: {e}"))?;
    let reader = std::sync::Arc::new(Reader {
        client,
        stage,
        group: group.to_owned(),
        topic: topic.to_owned(),
    });
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let r = reader.clone();
            match tokio::task::spawn_blocking(move || r.read()).await {
                Ok(Ok(())) => failing = false,
                Ok(Err(e)) => {
                    metrics::counter!("flowlens_consumer_lag_read_errors_total", "stage" => stage)
                        .increment(1);
                    if !failing {
                        tracing::warn!(group = %reader.group, topic = %reader.topic, error = %e,
                            "consumer lag not read; the gauges keep their last values");
                    }
                    failing = true;
                }
                Err(e) => tracing::error!(error = %e, "consumer lag read panicked"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        }
    });
    Ok(())
}

struct Reader {
    client: BaseConsumer<Quiet>,
    stage: &'static str,
    group: String,
    topic: String,
}

impl Reader {
    /// One read of every partition's watermarks and the group's committed offsets (blocking);
    /// the gauges are set only when all of it was read.
    fn read(&self) -> anyhow::Result<()> {
        // Serve the client's queued events (errors, to `Quiet`): it is assigned nothing, so no
        // message comes this way.
        for _ in 0..1000 {
            if self.client.poll(Duration::ZERO).is_none() {
                break;
            }
        }
        let topic = &self.topic;
        let metadata = self
            .client
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| anyhow::anyhow!("metadata of topic {topic}: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            // Not created yet: nothing to report.
            return Ok(());
        }
        let mut wanted = TopicPartitionList::new();
        for &p in &partitions {
            wanted.add_partition(topic, p);
        }
        let committed = self
            .client
            .committed_offsets(wanted, TIMEOUT)
            .map_err(|e| {
                anyhow::anyhow!("committed offsets of group {} on {topic}: {e}", self.group)
            })?;
        let mut lags = Vec::with_capacity(partitions.len());
        for &p in &partitions {
            let (low, high) = self
                .client
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|e| anyhow::anyhow!("watermarks of {topic}/{p}: {e}"))?;
            let position = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            lags.push((p, partition_lag(low, high, position)));
        }
        for (p, lag) in lags {
            metrics::gauge!("flowlens_consumer_lag_records",
                "stage" => self.stage, "group" => self.group.clone(),
                "topic" => topic.clone(), "partition" => p.to_string())
            .set(lag as f64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::partition_lag;

    #[test]
    fn lag_counts_from_the_position_the_group_would_read_from() {
        assert_eq!(partition_lag(0, 10, Some(4)), 6);
        assert_eq!(partition_lag(0, 10, Some(10)), 0);
        assert_eq!(
            partition_lag(0, 10, None),
            10,
            "nothing committed: from the start"
        );
        assert_eq!(partition_lag(5, 10, Some(2)), 5, "removed by retention");
        assert_eq!(
            partition_lag(0, 3, Some(8)),
            3,
            "an earlier incarnation's position"
        );
        assert_eq!(partition_lag(7, 7, None), 0);
    }
}
