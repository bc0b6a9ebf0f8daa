//! Kafka client settings shared by the stages: broker list, topic names, producer and consumer
//! configurations tuned for flowlens, and topic creation at start.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::ConfigError;

/// `[kafka]` section: where the brokers are and librdkafka pass-through properties.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    pub client_id: String,
    /// Extra librdkafka properties (e.g. `"security.protocol" = "SASL_SSL"`), applied last.
    pub properties: BTreeMap<String, String>,
    /// Create missing topics at start (needs the admin API).
    pub create_topics: bool,
    /// Partitions of topics created at start.
    pub partitions: i32,
    pub replication_factor: i32,
    pub topics: TopicsConfig,
}

/// Topic names: one place so every stage agrees.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub raw_flows: String,
    pub interfaces: String,
    pub enriched_flows: String,
    /// Dead-letter topic for records a stage could not process (the reason is in a header).
    pub dead_letter: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            raw_flows: "flowlens.flows.raw".into(),
            interfaces: "flowlens.interfaces".into(),
            enriched_flows: "flowlens.flows.enriched".into(),
            dead_letter: "flowlens.deadletter".into(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            client_id: "flowlens".into(),
            properties: BTreeMap::new(),
            create_topics: true,
            partitions: 4,
            replication_factor: 1,
            topics: TopicsConfig::default(),
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return Err(ConfigError::invalid(
                format!("{section}.brokers"),
                "needs at least one host:port",
            ));
        }
        for b in &self.brokers {
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(ConfigError::invalid(
                    format!("{section}.brokers"),
                    format!("`{b}` is not host:port"),
                ));
            }
        }
        if self.partitions < 1 {
            return Err(ConfigError::invalid(
                format!("{section}.partitions"),
                "must be at least 1",
            ));
        }
        for (key, name) in [
            ("raw_flows", &self.topics.raw_flows),
            ("interfaces", &self.topics.interfaces),
            ("enriched_flows", &self.topics.enriched_flows),
            ("dead_letter", &self.topics.dead_letter),
        ] {
            if name.is_empty() || name.len() > 249 || !name.chars().all(valid_topic_char) {
                return Err(ConfigError::invalid(
                    format!("{section}.topics.{key}"),
                    format!("`{name}` is not a valid topic name"),
                ));
            }
        }
        Ok(())
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id);
        c
    }

    fn with_overrides(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Idempotent, compressed, batching producer: no duplicates or reordering on retries.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", "120000");
        self.with_overrides(c)
    }

    /// Group consumer whose offsets are stored by the application only after the record's effect
    /// is durable (`enable.auto.offset.store=false`), then committed by librdkafka.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000");
        self.with_overrides(c)
    }

    /// A consumer without a group, for reading a whole (compacted) topic from the start.
    pub fn reader_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", format!("{}-reader", self.client_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        self.with_overrides(c)
    }

    /// Creates the given topics if they do not exist. `compacted` topics keep the last value per key.
    pub async fn ensure_topics(&self, topics: &[(&str, bool)]) -> anyhow::Result<()> {
        if !self.create_topics {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.with_overrides(self.base()).create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, compacted)| {
                let t = NewTopic::new(
                    name,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
                );
                if *compacted {
                    t.set("cleanup.policy", "compact")
                } else {
                    t
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic = %name, "topic exists")
                }
                Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
            }
        }
        Ok(())
    }
}

fn valid_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_broker_and_topic_are_named() {
        let mut k = KafkaConfig {
            brokers: vec!["localhost".into()],
            ..Default::default()
        };
        let e = k.validate("kafka").unwrap_err().to_string();
        assert!(
            e.contains("kafka.brokers") && e.contains("localhost"),
            "{e}"
        );
        k.brokers = vec!["127.0.0.1:9092".into()];
        k.topics.enriched_flows = "bad topic".into();
        let e = k.validate("kafka").unwrap_err().to_string();
        assert!(e.contains("kafka.topics.enriched_flows"), "{e}");
    }

    #[test]
    fn properties_override_defaults() {
        let mut k = KafkaConfig::default();
        k.properties
            .insert("compression.type".into(), "zstd".into());
        assert_eq!(k.producer_config().get("compression.type"), Some("zstd"));
        assert_eq!(k.producer_config().get("enable.idempotence"), Some("true"));
        assert_eq!(
            k.consumer_config("g").get("enable.auto.offset.store"),
            Some("false")
        );
    }
}
