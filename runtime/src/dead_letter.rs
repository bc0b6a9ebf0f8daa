//! Dead-letter publishing: a record a stage cannot process is copied, untouched, to the dead-letter
//! topic with headers saying why and where it came from, so it is never lost and never blocks a
//! partition.

use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Header names set on every dead-lettered record.
pub const HEADER_REASON: &str = "flowlens.reason";
pub const HEADER_STAGE: &str = "flowlens.stage";
pub const HEADER_SOURCE: &str = "flowlens.source";

/// Sends undecodable or rejected records to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    stage: &'static str,
}

impl DeadLetter {
    pub fn new(producer: FutureProducer, topic: impl Into<String>, stage: &'static str) -> Self {
        Self {
            producer,
            topic: topic.into(),
            stage,
        }
    }

    /// Copies `message` to the dead-letter topic with `reason`; resolves when the broker has it.
    pub async fn send<M: Message>(&self, message: &M, reason: &str) -> anyhow::Result<()> {
        let source = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        metrics::counter!("flowlens_dead_letter_records_total", "stage" => self.stage).increment(1);
        tracing::warn!(stage = self.stage, %source, %reason, "record sent to dead-letter topic");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: HEADER_STAGE,
                value: Some(self.stage),
            })
            .insert(Header {
                key: HEADER_SOURCE,
                value: Some(source.as_str()),
            });
        let payload = message.payload().unwrap_or_default();
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic {}: {e}", self.topic))?;
        Ok(())
    }
}
