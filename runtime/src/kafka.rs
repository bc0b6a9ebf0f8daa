//! Kafka client settings shared by the stages: broker list, security (TLS, SASL), topic names,
//! producer and consumer configurations tuned for flowlens, and topic creation at start.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::config::{check_file, read_secret_file, Secret};
use crate::ConfigError;

/// Most records a stage's loop takes from its consumer in one pass: after the record it waited
/// for, those librdkafka has already fetched (`recv().now_or_never()`), so a busy stage pays
/// one wakeup and one timer per pass rather than per record.
pub const CONSUME_BATCH: usize = 256;

/// `[kafka]` section: where the brokers are, how to authenticate, librdkafka pass-through
/// properties.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    pub client_id: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's `security.protocol`).
    pub security_protocol: String,
    /// PEM file of the CA(s) that signed the brokers' certificates; empty: the system's.
    pub tls_ca_file: String,
    /// Client certificate (PEM) for brokers that require one, with `tls_key_file`.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// Never logged; best set through the environment or `sasl_password_file`.
    pub sasl_password: Secret,
    /// File holding the SASL password (trailing newlines ignored), instead of `sasl_password`.
    pub sasl_password_file: String,
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
            security_protocol: "plaintext".into(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            sasl_password_file: String::new(),
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
        self.validate_security(section)?;
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

    fn validate_security(&self, section: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{section}.{k}");
        let protocol = self.security_protocol.to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                return Err(ConfigError::invalid(
                    key("security_protocol"),
                    format!("`{other}` is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
                ))
            }
        };
        for (k, path) in [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if !path.is_empty() && !tls {
                return Err(ConfigError::invalid(
                    key(k),
                    format!("is set but security_protocol `{protocol}` does not use TLS"),
                ));
            }
            check_file(&key(k), path)?;
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(ConfigError::invalid(
                key("tls_key_file"),
                "a client certificate needs both tls_cert_file and tls_key_file",
            ));
        }
        if !matches!(
            self.sasl_mechanism.as_str(),
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512"
        ) {
            return Err(ConfigError::invalid(
                key("sasl_mechanism"),
                format!(
                    "`{}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (GSSAPI and \
                     OAUTHBEARER are not built in)",
                    self.sasl_mechanism
                ),
            ));
        }
        if !self.sasl_password.is_empty() && !self.sasl_password_file.is_empty() {
            return Err(ConfigError::invalid(
                key("sasl_password_file"),
                "set either sasl_password or sasl_password_file, not both",
            ));
        }
        let credentials = !self.sasl_username.is_empty()
            || !self.sasl_password.is_empty()
            || !self.sasl_password_file.is_empty();
        if sasl && self.sasl_username.is_empty() {
            return Err(ConfigError::invalid(
                key("sasl_username"),
                format!("security_protocol `{protocol}` needs a user name"),
            ));
        }
        if sasl && self.sasl_password.is_empty() && self.sasl_password_file.is_empty() {
            return Err(ConfigError::invalid(
                key("sasl_password"),
                format!("security_protocol `{protocol}` needs sasl_password or sasl_password_file"),
            ));
        }
        if credentials && !sasl {
            return Err(ConfigError::invalid(
                key("sasl_username"),
                format!(
                    "SASL credentials are set but security_protocol `{protocol}` does not use SASL"
                ),
            ));
        }
        Ok(())
    }

    /// Reads `sasl_password_file` (after validation).
    pub fn resolve(&mut self, section: &str) -> Result<(), ConfigError> {
        if !self.sasl_password_file.is_empty() {
            self.sasl_password = read_secret_file(
                &format!("{section}.sasl_password_file"),
                &self.sasl_password_file,
            )?;
        }
        Ok(())
    }

    /// Brokers, client id and security: what every client of every stage starts from.
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id)
            .set(
                "security.protocol",
                self.security_protocol.to_ascii_lowercase(),
            );
        for (property, path) in [
            ("ssl.ca.location", &self.tls_ca_file),
            ("ssl.certificate.location", &self.tls_cert_file),
            ("ssl.key.location", &self.tls_key_file),
        ] {
            if !path.is_empty() {
                c.set(property, path);
            }
        }
        if self
            .security_protocol
            .to_ascii_lowercase()
            .starts_with("sasl")
        {
            c.set("sasl.mechanisms", &self.sasl_mechanism)
                .set("sasl.username", &self.sasl_username)
                .set("sasl.password", self.sasl_password.expose());
        }
        c
    }

    /// A client of this configuration with no role of its own (metadata, probes).
    pub fn client_config(&self) -> ClientConfig {
        self.with_overrides(self.base())
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
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
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
    fn security_settings_are_checked_and_passed_on() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca_path = ca.path().to_str().unwrap().to_string();
        let k = KafkaConfig {
            security_protocol: "SASL_SSL".into(),
            tls_ca_file: ca_path.clone(),
            sasl_username: "flowlens".into(),
            sasl_password: Secret::new("pw"),
            ..Default::default()
        };
        k.validate("kafka").unwrap();
        let c = k.producer_config();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("ssl.ca.location"), Some(ca_path.as_str()));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("pw"));
        assert!(!format!("{k:?}").contains("\"pw\""));

        let named = |k: &KafkaConfig| k.validate("kafka").unwrap_err().to_string();
        let mut bad = k.clone();
        bad.security_protocol = "tls".into();
        assert!(named(&bad).contains("kafka.security_protocol"));
        let mut bad = k.clone();
        bad.sasl_mechanism = "GSSAPI".into();
        assert!(named(&bad).contains("kafka.sasl_mechanism"));
        let mut bad = k.clone();
        bad.sasl_username.clear();
        assert!(named(&bad).contains("kafka.sasl_username"));
        let mut bad = k.clone();
        bad.tls_ca_file = "/nonexistent/ca.pem".into();
        assert!(named(&bad).contains("kafka.tls_ca_file"));
        let mut bad = k.clone();
        bad.tls_cert_file = ca_path.clone();
        assert!(named(&bad).contains("kafka.tls_key_file"));
        let mut bad = k.clone();
        bad.security_protocol = "sasl_plaintext".into();
        assert!(named(&bad).contains("kafka.tls_ca_file"));
        let mut bad = KafkaConfig {
            sasl_username: "x".into(),
            ..Default::default()
        };
        assert!(named(&bad).contains("kafka.sasl_username"));
        bad.sasl_username.clear();
        bad.validate("kafka").unwrap();
        assert_eq!(bad.producer_config().get("sasl.username"), None);
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
