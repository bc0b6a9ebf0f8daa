//! Dead-letter publishing: a record a stage cannot process is copied to the dead-letter topic
//! with headers saying why and where it came from, so that it never blocks a partition.
//!
//! * A record too big for the producer's `message.max.bytes` (or refused as too large by the
//!   broker) is copied as a bounded prefix, `flowlens.truncated: true`, its original size in a
//!   header; a size the broker refused lowers the bound for later copies.
//! * A topic that is really unavailable (missing with auto-creation off, no permission, the
//!   broker refusing it) is handled by the `[dead_letter]` policy: `stop` (default) retries with
//!   capped backoff and returns only once the record is in the topic — the caller commits
//!   nothing past it meanwhile, so nothing is lost — or `skip` counts the record as lost and
//!   returns. Either way a log line, `flowlens_dead_letter_unavailable_total` and the readiness
//!   condition `dead_letter` (false until a copy is delivered again) say so.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::config::check_range;
use crate::health::{self, Condition};
use crate::{ConfigError, Shutdown};

/// Header names set on every dead-lettered record.
pub const HEADER_REASON: &str = "flowlens.reason";
pub const HEADER_STAGE: &str = "flowlens.stage";
/// `topic/partition/offset` of the original record.
pub const HEADER_SOURCE: &str = "flowlens.source";
/// Size of the original value in bytes (decimal text).
pub const HEADER_ORIGINAL_SIZE: &str = "flowlens.original_size";
/// Size of the original key in bytes, when it had one.
pub const HEADER_ORIGINAL_KEY_SIZE: &str = "flowlens.original_key_size";
/// `true` when the copy holds only a prefix of the value (or of the key), else `false`.
pub const HEADER_TRUNCATED: &str = "flowlens.truncated";

/// What a stage does with a record it cannot write to the dead-letter topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenUnavailable {
    /// Retry until the copy is delivered; nothing past the record is committed meanwhile.
    #[default]
    Stop,
    /// Count the record as lost and go on.
    Skip,
}

/// `[dead_letter]` section, shared by the enricher and the sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    pub when_unavailable: WhenUnavailable,
    /// Longest wait between two attempts while the topic is unavailable (`stop`), ms; waits
    /// start at 100 ms and double.
    pub retry_max_ms: u64,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            when_unavailable: WhenUnavailable::Stop,
            retry_max_ms: 30_000,
        }
    }
}

impl DeadLetterConfig {
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        check_range(
            &format!("{section}.retry_max_ms"),
            self.retry_max_ms,
            100,
            600_000,
        )
    }
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room left under the limit for what the size of key, value and headers does not count:
/// record batch and record framing, header and length varints (~100 bytes), with margin.
const FRAMING: usize = 1024;
/// First wait before retrying an unavailable topic.
const RETRY_INITIAL: Duration = Duration::from_millis(100);

/// Sends undecodable or rejected records to the dead-letter topic (see the module docs).
/// Cheap to clone; the producer is created with the first record.
#[derive(Clone)]
pub struct DeadLetter {
    inner: Arc<Inner>,
}

struct Inner {
    producer_config: ClientConfig,
    producer: OnceLock<FutureProducer>,
    topic: String,
    stage: &'static str,
    config: DeadLetterConfig,
    shutdown: Shutdown,
    /// Largest copy (key + value + headers + framing) to send: the producer's
    /// `message.max.bytes`, lowered when the broker refuses a size.
    limit: AtomicUsize,
    ready: Condition,
}

/// How a record was settled by [`DeadLetter::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The copy is in the dead-letter topic (maybe truncated).
    Delivered { truncated: bool },
    /// The topic was unavailable and the policy is `skip`: the record is lost (counted).
    Skipped,
}

/// Why one attempt failed.
enum Failure {
    TooLarge(KafkaError),
    Unavailable(KafkaError),
}

impl DeadLetter {
    /// A publisher to `topic` for `stage`, through a producer made from `producer_config` when
    /// the first record comes; registers the readiness condition `dead_letter` (met).
    pub fn new(
        producer_config: ClientConfig,
        topic: impl Into<String>,
        stage: &'static str,
        config: &DeadLetterConfig,
        shutdown: Shutdown,
    ) -> Self {
        let limit = producer_config
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        let ready = health::condition("dead_letter");
        ready.set_ok();
        Self {
            inner: Arc::new(Inner {
                producer_config,
                producer: OnceLock::new(),
                topic: topic.into(),
                stage,
                config: config.clone(),
                shutdown,
                limit: AtomicUsize::new(limit),
                ready,
            }),
        }
    }

    /// The largest copy sent now (bytes, framing included).
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    fn producer(&self) -> anyhow::Result<&FutureProducer> {
        if let Some(p) = self.inner.producer.get() {
            return Ok(p);
        }
        let created: FutureProducer = self
            .inner
            .producer_config
            .create()
            .context("creating the dead-letter producer")?;
        Ok(self.inner.producer.get_or_init(|| created))
    }

    /// Copies `message` to the dead-letter topic with `reason`. Returns once the broker has the
    /// copy, or once the record was skipped by the `skip` policy; an error only when the copy
    /// was not delivered and must not be committed past (shutdown while retrying under `stop`,
    /// no producer).
    pub async fn send<M: Message>(&self, message: &M, reason: &str) -> anyhow::Result<Sent> {
        let me = &*self.inner;
        let source = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let (key, value) = (message.key(), message.payload().unwrap_or_default());
        tracing::warn!(stage = me.stage, %source, %reason, size = value.len(), "record goes to the dead-letter topic");
        let producer = self.producer()?;
        let mut backoff = RETRY_INITIAL;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let limit = self.limit();
            let attempt_result = tokio::select! {
                _ = me.shutdown.cancelled() => None,
                r = self.attempt(producer, key, value, &source, reason, limit) => Some(r),
            };
            let Some(result) = attempt_result else {
                anyhow::bail!(
                    "dead-letter copy of {source} not delivered: stopping while it was being sent"
                );
            };
            let error = match result {
                Ok(truncated) => {
                    metrics::counter!("flowlens_dead_letter_records_total", "stage" => me.stage)
                        .increment(1);
                    if truncated {
                        metrics::counter!("flowlens_dead_letter_truncated_total", "stage" => me.stage)
                            .increment(1);
                    }
                    me.ready.set_ok();
                    return Ok(Sent::Delivered { truncated });
                }
                Err(Failure::TooLarge(e)) => {
                    let lower = limit / 2;
                    if lower > FRAMING {
                        me.limit.fetch_min(lower, Ordering::Relaxed);
                        tracing::warn!(stage = me.stage, %source, limit, lower, error = %e,
                            "dead-letter copy refused as too large; sending a shorter prefix");
                        continue;
                    }
                    // Refused however small: not a matter of size.
                    e
                }
                Err(Failure::Unavailable(e)) => e,
            };
            metrics::counter!("flowlens_dead_letter_unavailable_total", "stage" => me.stage)
                .increment(1);
            me.ready.set_failing(format!(
                "dead-letter topic {} unavailable: {error}",
                me.topic
            ));
            match me.config.when_unavailable {
                WhenUnavailable::Skip => {
                    metrics::counter!("flowlens_dead_letter_skipped_total", "stage" => me.stage)
                        .increment(1);
                    tracing::error!(stage = me.stage, topic = %me.topic, %source, %reason, error = %error,
                        "dead-letter topic unavailable; record skipped and lost (dead_letter.when_unavailable = skip)");
                    return Ok(Sent::Skipped);
                }
                WhenUnavailable::Stop => {
                    tracing::error!(stage = me.stage, topic = %me.topic, %source, attempt,
                        retry_in_ms = backoff.as_millis() as u64, error = %error,
                        "dead-letter topic unavailable; not committing past this record, retrying (dead_letter.when_unavailable = stop)");
                    tokio::select! {
                        _ = me.shutdown.cancelled() => anyhow::bail!(
                            "dead-letter topic {} unavailable ({error}): {source} not delivered, not committed",
                            me.topic
                        ),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(me.config.retry_max_ms));
                    // librdkafka remembers a missing topic until its next periodic metadata
                    // refresh (minutes): ask now, so a topic created meanwhile is used at once.
                    let (producer, topic) = (producer.clone(), me.topic.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        producer
                            .client()
                            .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    })
                    .await;
                }
            }
        }
    }

    /// One copy of at most `limit` bytes; `Ok(truncated)` once delivered.
    async fn attempt(
        &self,
        producer: &FutureProducer,
        key: Option<&[u8]>,
        value: &[u8],
        source: &str,
        reason: &str,
        limit: usize,
    ) -> Result<bool, Failure> {
        let me = &*self.inner;
        let original_size = value.len().to_string();
        let key_size = key.map(|k| k.len().to_string());
        let truncated_header = |truncated: bool| {
            let mut h = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_REASON,
                    value: Some(reason),
                })
                .insert(Header {
                    key: HEADER_STAGE,
                    value: Some(me.stage),
                })
                .insert(Header {
                    key: HEADER_SOURCE,
                    value: Some(source),
                })
                .insert(Header {
                    key: HEADER_ORIGINAL_SIZE,
                    value: Some(original_size.as_str()),
                });
            if let Some(size) = &key_size {
                h = h.insert(Header {
                    key: HEADER_ORIGINAL_KEY_SIZE,
                    value: Some(size.as_str()),
                });
            }
            h.insert(Header {
                key: HEADER_TRUNCATED,
                value: Some(if truncated { "true" } else { "false" }),
            })
        };
        let headers_size = [
            (HEADER_REASON, reason.len()),
            (HEADER_STAGE, me.stage.len()),
            (HEADER_SOURCE, source.len()),
            (HEADER_ORIGINAL_SIZE, original_size.len()),
            (
                HEADER_ORIGINAL_KEY_SIZE,
                key_size.as_ref().map_or(0, String::len),
            ),
            (HEADER_TRUNCATED, "false".len()),
        ]
        .iter()
        .map(|(k, v)| k.len() + v)
        .sum::<usize>();
        let budget = limit.saturating_sub(FRAMING + headers_size);
        let key_len = key.map_or(0, <[u8]>::len);
        let (key_keep, value_keep) = fit(key_len, value.len(), budget);
        let truncated = key_keep < key_len || value_keep < value.len();
        if truncated {
            tracing::warn!(stage = me.stage, %source, original_size = value.len(), kept = value_keep,
                key_size = key_len, key_kept = key_keep, limit,
                "record too large to dead-letter whole; sending a truncated copy");
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&me.topic)
            .payload(&value[..value_keep])
            .headers(truncated_header(truncated));
        if let Some(key) = key {
            record = record.key(&key[..key_keep]);
        }
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => Ok(truncated),
            Err((e, _)) if too_large(&e) => Err(Failure::TooLarge(e)),
            Err((e, _)) => Err(Failure::Unavailable(e)),
        }
    }
}

fn too_large(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// How many bytes of a `key`-byte key and a `value`-byte value to keep within `budget`: both
/// whole if they fit; else the key whole as long as it takes at most half (the value gets the
/// rest), else each at least half of the budget, or all the other one leaves.
fn fit(key: usize, value: usize, budget: usize) -> (usize, usize) {
    if key.saturating_add(value) <= budget {
        return (key, value);
    }
    let key_keep = key.min(budget - value.min(budget / 2));
    (key_keep, value.min(budget - key_keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_fit_the_budget_and_keep_what_they_can() {
        assert_eq!(fit(10, 100, 1000), (10, 100));
        assert_eq!(fit(0, 1_000_000, 998_000), (0, 998_000));
        assert_eq!(fit(10, 2_000_000, 1_000_000), (10, 999_990));
        assert_eq!(fit(2_000_000, 10, 1_000_000), (999_990, 10));
        assert_eq!(fit(2_000_000, 2_000_000, 1_000_000), (500_000, 500_000));
        assert_eq!(fit(300, 2_000_000, 400), (200, 200));
        assert_eq!(fit(5, 5, 0), (0, 0));
        for (k, v, b) in [(7, 9, 10), (1 << 40, 3, 1 << 20), (3, usize::MAX, 99)] {
            let (kk, vk) = fit(k, v, b);
            assert!(kk <= k && vk <= v && kk + vk <= b, "{k} {v} {b}");
        }
    }

    #[test]
    fn the_limit_comes_from_message_max_bytes() {
        let mut c = ClientConfig::new();
        let d = DeadLetter::new(c.clone(), "t", "test", &Default::default(), Shutdown::new());
        assert_eq!(d.limit(), DEFAULT_MESSAGE_MAX_BYTES);
        c.set("message.max.bytes", "5000000");
        let d = DeadLetter::new(c, "t", "test", &Default::default(), Shutdown::new());
        assert_eq!(d.limit(), 5_000_000);
    }

    #[test]
    fn retry_bound_is_named() {
        let c = DeadLetterConfig {
            retry_max_ms: 5,
            ..Default::default()
        };
        let e = c.validate("dead_letter").unwrap_err().to_string();
        assert!(e.contains("dead_letter.retry_max_ms"), "{e}");
    }
}
