//! Whether the brokers can be reached with the configured security. A first check at start
//! turns the failures retrying cannot fix (TLS verification, SASL authentication) into an error
//! naming the CA file or the user; then a probe every few seconds keeps the readiness condition
//! `kafka` (see [`crate::health`]).

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::kafka::KafkaConfig;
use crate::{health, Shutdown};

/// The readiness condition kept by [`watch`].
pub const CONDITION: &str = "kafka";
/// Time between two probes.
const INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one metadata answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Collects the errors librdkafka reports for the probe's client between two checks.
#[derive(Default)]
struct ProbeContext {
    errors: Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka probe client error");
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 64 {
            errors.push((error.rdkafka_error_code(), reason.to_owned()));
        }
    }
}

/// Whether librdkafka's error means the brokers refused us (not that they are away).
fn rejected(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)
    )
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    /// The probe produces nothing.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Why a probe failed.
#[derive(Debug)]
pub enum Failure {
    /// TLS verification or authentication: wrong CA, certificate or credentials.
    Rejected(String),
    /// Brokers down or unreachable: may come back.
    Unreachable(String),
}

/// A client of its own asking the brokers for metadata.
pub struct Probe {
    producer: BaseProducer<ProbeContext>,
    brokers: String,
    ca: String,
    user: String,
}

impl Probe {
    pub fn new(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let config: ClientConfig = kafka.client_config();
        let get = |k: &str| config.get(k).unwrap_or_default().to_owned();
        let ca = match config.get("ssl.ca.location") {
            Some(ca) => format!("CA file `{ca}`"),
            None => "the system's CA certificates".to_owned(),
        };
        let user = format!(
            "`{}` ({})",
            get("sasl.username"),
            config.get("sasl.mechanisms").unwrap_or("no mechanism")
        );
        let producer = config
            .create_with_context(ProbeContext::default())
            .map_err(|e| anyhow::anyhow!("Kafka client for {}: {e}", get("bootstrap.servers")))?;
        Ok(Self {
            producer,
            brokers: get("bootstrap.servers"),
            ca,
            user,
        })
    }

    /// One metadata round trip (blocking, at most [`TIMEOUT`] plus a moment).
    pub fn check(&self) -> Result<(), Failure> {
        let result = self.producer.client().fetch_metadata(None, TIMEOUT);
        // Error events reach the application queue a moment later: serve them into the context.
        self.producer.poll(if result.is_ok() {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        });
        let errors = std::mem::take(
            &mut *self
                .producer
                .context()
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let error = match result {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // The refusal if there was one (later "all brokers down" events follow from it).
        let cause = errors
            .iter()
            .find(|(code, _)| rejected(*code))
            .or(errors.last())
            .cloned();
        let brokers = &self.brokers;
        Err(match cause {
            Some((Some(RDKafkaErrorCode::SSL), reason)) => Failure::Rejected(format!(
                "Kafka at {brokers}: TLS with {} failed: {reason}",
                self.ca
            )),
            Some((Some(RDKafkaErrorCode::Authentication), reason)) => Failure::Rejected(format!(
                "Kafka at {brokers}: SASL authentication as {} failed: {reason}",
                self.user
            )),
            Some((_, reason)) => Failure::Unreachable(format!("Kafka at {brokers}: {reason}")),
            None => Failure::Unreachable(format!("Kafka at {brokers}: {error}")),
        })
    }
}

/// Checks the brokers once: an error if they reject the TLS handshake or the credentials; if
/// they are merely unreachable the condition `kafka` says so and the stage goes on. Then
/// probes every [`INTERVAL`] until `shutdown`.
pub async fn watch(kafka: &KafkaConfig, shutdown: &Shutdown) -> anyhow::Result<()> {
    let probe = std::sync::Arc::new(Probe::new(kafka)?);
    let condition = health::condition(CONDITION);
    let check = |probe: std::sync::Arc<Probe>| async move {
        tokio::task::spawn_blocking(move || probe.check())
            .await
            .unwrap_or_else(|e| Err(Failure::Unreachable(format!("Kafka probe: {e}"))))
    };
    match check(probe.clone()).await {
        Ok(()) => condition.set_ok(),
        Err(Failure::Rejected(why)) => {
            condition.set_failing(why.clone());
            anyhow::bail!(why);
        }
        Err(Failure::Unreachable(why)) => condition.set_failing(why),
    }
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
            match check(probe.clone()).await {
                Ok(()) => condition.set_ok(),
                Err(Failure::Rejected(why) | Failure::Unreachable(why)) => {
                    condition.set_failing(why)
                }
            }
        }
    });
    Ok(())
}
