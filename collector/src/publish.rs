//! Publishing to Kafka: flow records (Avro single-object, idempotent lz4 producer, delivery
//! accounted per batch) and interface records on the compacted topic (key `host/ifindex`,
//! tombstone when an interface disappears).

use std::time::Duration;

use flowlens_schemas::{encode, Interface, RawFlow};
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

pub struct Publisher {
    producer: FutureProducer,
    flows_topic: String,
    interfaces_topic: String,
}

/// Outcome of publishing one drain's records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: u64,
    pub failed: u64,
}

impl Publisher {
    pub fn new(producer: FutureProducer, flows_topic: &str, interfaces_topic: &str) -> Self {
        Self {
            producer,
            flows_topic: flows_topic.into(),
            interfaces_topic: interfaces_topic.into(),
        }
    }

    /// Encodes and sends every flow, then waits until the broker acknowledged (or refused) each.
    pub async fn publish_flows(&self, flows: &[RawFlow]) -> anyhow::Result<Delivery> {
        let mut pending = Vec::with_capacity(flows.len());
        let mut buf = Vec::with_capacity(256);
        for flow in flows {
            buf.clear();
            encode(flow, &mut buf)?;
            pending.push(self.enqueue(&self.flows_topic, None, Some(&buf)).await?);
        }
        let mut outcome = Delivery::default();
        for result in join_all(pending).await {
            match result {
                Ok(Ok(_)) => outcome.delivered += 1,
                Ok(Err((e, _))) => {
                    outcome.failed += 1;
                    tracing::error!(topic = %self.flows_topic, error = %e, "flow record not delivered");
                }
                Err(_) => outcome.failed += 1,
            }
        }
        metrics::counter!("flowlens_collector_records_produced_total").increment(outcome.delivered);
        metrics::counter!("flowlens_collector_delivery_errors_total").increment(outcome.failed);
        Ok(outcome)
    }

    /// Publishes (and waits for) an interface record.
    pub async fn publish_interface(&self, iface: &Interface) -> anyhow::Result<()> {
        let key = format!("{}/{}", iface.host, iface.ifindex);
        let mut buf = Vec::with_capacity(256);
        encode(iface, &mut buf)?;
        let fut = self
            .enqueue(&self.interfaces_topic, Some(&key), Some(&buf))
            .await?;
        fut.await?.map_err(|(e, _)| {
            anyhow::anyhow!("interface record {key} to {}: {e}", self.interfaces_topic)
        })?;
        Ok(())
    }

    /// Publishes a tombstone for an interface that disappeared.
    pub async fn remove_interface(&self, host: &str, ifindex: u32) -> anyhow::Result<()> {
        let key = format!("{host}/{ifindex}");
        let fut = self
            .enqueue(&self.interfaces_topic, Some(&key), None)
            .await?;
        fut.await?
            .map_err(|(e, _)| anyhow::anyhow!("tombstone {key}: {e}"))?;
        Ok(())
    }

    /// Waits until everything queued has been delivered (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer.flush(timeout)?;
        Ok(())
    }

    /// Queues one message, waiting for room when librdkafka's queue is full.
    async fn enqueue(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Option<&[u8]>,
    ) -> anyhow::Result<DeliveryFuture> {
        loop {
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = payload {
                record = record.payload(p);
            }
            match self.producer.send_result(record) {
                Ok(fut) => return Ok(fut),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    metrics::counter!("flowlens_collector_queue_full_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(anyhow::anyhow!("producing to {topic}: {e}")),
            }
        }
    }
}
